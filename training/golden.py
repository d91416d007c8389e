"""Golden sets: labelled stored images an admin pins, with the labels they had then.

``imageiq retrain`` scores the champion and the challenger on the golden set as well as on
the fresh held-out split: the held-out split moves with every new label, the golden set
does not, so a challenger that only looks better on easier new data is caught. Golden images
never train a model (the ``db`` source leaves them out), and forgetting an image removes it
from its sets (a foreign key with ``ON DELETE CASCADE``).
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from imageiq import catalog
from imageiq.backends import open_database
from imageiq.db.engine import check_migrated
from imageiq.db.schema import AuditEntry, GoldenImage
from imageiq.errors import ConfigurationError, DatasetError
from imageiq.settings import Settings
from training.db_source import (
    DbQuery,
    _checked,
    _heads,
    _reader,
    effective_labels,
    read_image_ids,
)
from training.sources import STORE_SCHEME, LabelledData, Sample, dataset_fingerprint


def freeze(
    settings: Settings,
    *,
    name: str,
    per_class: int,
    seed: int,
    ids_file: str | None,
    replace: bool,
    actor: str,
) -> dict[str, int]:
    """Pin images with an effective human label (and that label) as golden set ``name``:
    the ids in ``ids_file``, or up to ``per_class`` of each class, sampled with ``seed``
    among those not pinned yet. Returns the set's images per class afterwards."""
    if not name or len(name) > 64:
        raise ConfigurationError("A golden set's name has 1 to 64 characters.")
    if per_class < 1:
        raise ConfigurationError("--per-class must be at least 1.")
    engine = open_database(settings)
    check_migrated(engine)
    labels = effective_labels(engine, DbQuery(min_per_class=1))
    pinned = set() if replace else set(golden_ids(engine, name))
    if ids_file:
        wanted = read_image_ids(Path(ids_file))
        unlabelled = sorted(wanted - labels.keys())
        if unlabelled:
            raise DatasetError(
                f"{len(unlabelled)} of the images in {ids_file} have no human label "
                f"(e.g. {unlabelled[0]}): label them first, golden images need answers."
            )
        chosen = sorted(wanted - pinned)
    else:
        by_class: dict[str, list[str]] = {}
        for image, found in sorted(labels.items()):
            if image not in pinned:
                by_class.setdefault(found.label, []).append(image)
        rng = random.Random(seed)
        taken = Counter(labels[i].label for i in pinned if i in labels)
        chosen = []
        for label, images in sorted(by_class.items()):
            room = max(0, per_class - taken[label])
            chosen += rng.sample(images, min(room, len(images)))
    rows = [
        {
            "set_name": name,
            "image_sha256": image,
            "label": labels[image].label,
            "attributes": labels[image].attributes,
            "frozen_by": actor,
        }
        for image in chosen
    ]
    with Session(engine) as session, session.begin():
        if replace:
            session.execute(delete(GoldenImage).where(GoldenImage.set_name == name))
        catalog.insert_ignore(session.connection(), GoldenImage, rows)
        session.add(
            AuditEntry(
                actor=actor,
                action="golden.freeze",
                target=name,
                detail={"added": len(rows), "replace": replace},
            )
        )
    return describe(settings, name=name)


def golden_ids(engine: Engine, name: str) -> list[str]:
    with Session(engine) as session:
        return list(
            session.scalars(select(GoldenImage.image_sha256).where(GoldenImage.set_name == name))
        )


def describe(settings: Settings, *, name: str) -> dict[str, int]:
    engine = open_database(settings)
    with Session(engine) as session:
        labels = session.scalars(select(GoldenImage.label).where(GoldenImage.set_name == name))
        return dict(Counter(labels))


def load_golden(settings: Settings, engine: Engine, name: str, *, max_pixels: int) -> LabelledData:
    """The golden set as labelled data, its images read from the object store (one that
    cannot be read is skipped and reported)."""
    with Session(engine) as session:
        rows = session.execute(
            select(GoldenImage.image_sha256, GoldenImage.label, GoldenImage.attributes)
            .where(GoldenImage.set_name == name)
            .order_by(GoldenImage.image_sha256)
        ).all()
    if not rows:
        raise DatasetError(f"No golden set {name!r} (imageiq golden freeze --name {name}).")
    candidates = [
        Sample(f"{STORE_SCHEME}{image}", label, dict(attributes or {}), name=image)
        for image, label, attributes in rows
    ]
    reader = _reader(settings)
    checked = _checked(candidates, reader=reader, max_pixels=max_pixels, progress=None)
    samples = checked.samples
    if not samples:
        raise DatasetError(f"None of golden set {name!r}'s {len(rows)} images can be read.")
    heads = _heads(samples)
    samples = [
        s.__class__(**{**s.__dict__, "attributes": {h: s.attributes.get(h, "") for h in heads}})
        for s in samples
    ]
    return LabelledData(
        f"golden:{name}",
        sorted({s.label for s in samples}),
        heads,
        samples,
        [(s.uri, reason) for s, reason in checked.skipped],
        dataset_fingerprint(samples, with_attributes=bool(heads)),
        reader,
    )
