"""Retention: forget stored images and predictions older than a cut-off (``imageiq purge``).

Objects go first, then their rows, so a purge interrupted half-way leaves no row pointing at
a missing object; the cache entries of purged images are dropped too. Labels go with their
images; the audit log is kept (it records the purge itself).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.orm import Session

from imageiq import errors
from imageiq.cache import PredictionCache
from imageiq.catalog import audit
from imageiq.db.schema import Image, Label, Prediction
from imageiq.storage import ObjectStore

_AGE = re.compile(r"^(\d{1,6})([dhw])$")
_UNITS = {"h": "hours", "d": "days", "w": "weeks"}
_LONGEST = timedelta(days=36525)


def parse_age(text: str) -> timedelta:
    """``90d``, ``12h``, ``2w``."""
    match = _AGE.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise errors.ConfigurationError(
            f"Invalid age {text!r}. Write a number and a unit: h (hours), d (days), w (weeks)."
        )
    age = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    if age > _LONGEST:
        raise errors.ConfigurationError(f"Invalid age {text!r}: at most 100 years.")
    return age


@dataclass
class PurgeReport:
    cutoff: datetime
    applied: bool
    images: int = 0
    predictions: int = 0
    labels: int = 0
    objects_deleted: int = 0
    cache_entries: int = 0
    failures: list[str] = field(default_factory=list)


def purge(
    engine: Engine,
    store: ObjectStore,
    cache: PredictionCache | None,
    *,
    older_than: timedelta,
    apply: bool,
    actor: str | None = None,
    batch: int = 500,
) -> PurgeReport:
    cutoff = datetime.now(timezone.utc) - older_than
    report = PurgeReport(cutoff=cutoff, applied=apply)
    with Session(engine) as session:
        old_images = select(Image.sha256).where(Image.created_at < cutoff)
        report.images = session.scalar(select(func.count()).select_from(old_images.subquery())) or 0
        report.labels = (
            session.scalar(select(func.count()).where(Label.image_sha256.in_(old_images))) or 0
        )
        report.predictions = (
            session.scalar(select(func.count()).where(Prediction.created_at < cutoff)) or 0
        )
    if not apply:
        return report
    while True:
        with Session(engine) as session:
            rows = session.execute(
                select(Image.sha256, Image.storage_key)
                .where(Image.created_at < cutoff)
                .limit(batch)
            ).all()
        if not rows:
            break
        done = []
        for sha256, _key in rows:
            try:
                store.delete(store.key_for(sha256))  # this store's key, whatever the row says
                if cache is not None:
                    report.cache_entries += cache.forget(sha256)
            except errors.ImageIQError as e:
                report.failures.append(f"{sha256}: {e.message}")
                continue
            done.append(sha256)
        if not done:
            break
        with Session(engine) as session, session.begin():
            session.execute(delete(Image).where(Image.sha256.in_(done)))
        report.objects_deleted += len(done)
        if len(done) < len(rows):
            break
    with Session(engine) as session, session.begin():
        session.execute(delete(Prediction).where(Prediction.created_at < cutoff))
    audit(
        engine,
        actor=actor,
        action="purge",
        target=None,
        detail={
            "cutoff": cutoff.isoformat(),
            "images": report.objects_deleted,
            "predictions": report.predictions,
            "failures": len(report.failures),
        },
    )
    return report
