"""Reading and changing the metadata behind the /v1/images, /v1/stats and admin endpoints:
plain functions over an engine, so the service stays a thin layer and tests need no server.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Integer,
    Select,
    and_,
    case,
    cast,
    delete,
    exists,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from imageiq import errors, tombstones
from imageiq.db.schema import AuditEntry, Image, Label, Model, Prediction, utcnow
from imageiq.rollout import agreement_by_version

if TYPE_CHECKING:
    from imageiq.cache import PredictionCache
    from imageiq.storage import ObjectStore


CONFIDENCE_BINS = 10  # the stats' histogram of top-1 confidence: equal-width bins over [0, 1]
# An attribute filter's head: any printable text but quotes and backslashes (a JSON path
# on SQLite quotes it), up to 64 characters like the heads labels take.
ATTRIBUTE_HEAD = re.compile(r'[^"\\\x00-\x1f\x7f]{1,64}')


@dataclass(frozen=True)
class ImageFilter:
    label: str | None = None  # a given (ground-truth) label ...
    label_source: str | None = None  # ... given by this source (user, admin, model)
    # (head, value): the image's effective value of an attribute head (see _with_attribute)
    attribute: tuple[str, str] | None = None
    predicted_label: str | None = None  # top-1 of some prediction ...
    min_confidence: float | None = None  # ... with a score in this range ...
    max_confidence: float | None = None
    model_name: str | None = None  # ... by this model (and version)
    model_version: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


def insert_ignore(into: Engine | Connection, table: Any, rows: list[dict[str, Any]]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING: a repeated write (a retry, a replay) is a no-op.
    On an engine, in a transaction of its own; on a connection, in the caller's."""
    if not rows:
        return
    dialect = postgresql if into.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table).on_conflict_do_nothing()
    if isinstance(into, Connection):
        into.execute(statement, rows)
        return
    with into.begin() as connection:
        connection.execute(statement, rows)


def list_images(
    engine: Engine, where: ImageFilter, *, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    """Stored images matching ``where``, newest first, each with its latest prediction and
    latest label; and how many match in all."""
    query = _filtered(where)
    with Session(engine) as session:
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        images: list[Image] = list(
            session.scalars(
                query.order_by(Image.created_at.desc(), Image.sha256).limit(limit).offset(offset)
            )
        )
        shas = [i.sha256 for i in images]
        predictions = _latest(session, Prediction, shas)
        labels = _latest(session, Label, shas)
    return [_image_out(i, predictions.get(i.sha256), labels.get(i.sha256)) for i in images], total


def get_image(engine: Engine, sha256: str) -> dict[str, Any]:
    with Session(engine) as session:
        image = session.get(Image, sha256)
        if image is None:
            raise errors.ImageNotFound(f"No stored image {sha256}.")
        predictions = session.scalars(
            select(Prediction)
            .where(Prediction.image_sha256 == sha256)
            .order_by(Prediction.created_at.desc())
            .limit(20)
        ).all()
        labels = session.scalars(
            select(Label)
            .where(Label.image_sha256 == sha256)
            .order_by(Label.created_at.desc(), Label.id.desc())
        ).all()
        out = _image_out(
            image, predictions[0] if predictions else None, labels[0] if labels else None
        )
        out["predictions"] = [_prediction_out(p) for p in predictions]
        out["labels"] = [_label_out(label) for label in labels]
        return out


def add_label(
    engine: Engine,
    sha256: str,
    *,
    label: str | None,
    attributes: dict[str, str],
    source: str,
    created_by: str | None,
    request_id: str | None = None,
    client_request_id: str | None = None,
) -> dict[str, Any]:
    """A label for a stored image. One given with the admin scope (``source`` admin or
    model) is an admin action: its ``label.add`` audit entry commits with it."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        if session.get(Image, sha256) is None:
            raise errors.ImageNotFound(
                f"No stored image {sha256}: labels are kept for stored images "
                "(classify with store=true first)."
            )
        row = Label(
            image_sha256=sha256,
            label=label,
            attributes=attributes,
            source=source,
            created_by=created_by,
            request_id=request_id,
            client_request_id=client_request_id,
        )
        session.add(row)
        try:
            session.flush()
        except IntegrityError as e:  # the image was deleted meanwhile
            raise errors.ImageNotFound(f"No stored image {sha256}.") from e
        session.refresh(row)
        if source != "user":
            session.add(
                AuditEntry(
                    actor=created_by,
                    action="label.add",
                    target=sha256,
                    detail={
                        "label_id": row.id,
                        "label": label,
                        "attributes": attributes,
                        "source": source,
                    },
                    request_id=request_id,
                    client_request_id=client_request_id,
                )
            )
    return _label_out(row)


def forget_image(
    engine: Engine,
    sha256: str,
    *,
    store: ObjectStore,
    cache: PredictionCache,
    actor: str | None = None,
    request_id: str | None = None,
    client_request_id: str | None = None,
) -> dict[str, int]:
    """The right to be forgotten, on every replica. The cached predictions go first (no
    row or object depends on them, and the audit entry counts them); then, in one
    transaction, the tombstone that stops every replica from writing the image back, every
    row and the audit entry; then the object, behind the tombstone
    (:func:`imageiq.tombstones.delete_object`), so no row ever names a missing object. A
    failure propagates (the database's or the store's); a retry finishes the job, and
    :func:`imageiq.tombstones.sweep` finishes an object delete that failed after the
    commit. Returns what went: ``object``, ``cache_entries``, ``labels``,
    ``predictions``, ``images``; all zero when nothing of the image was known (the
    tombstone is written even then: another replica may still hold records of it)."""
    existed = store.exists(store.key_for(sha256))
    cached = cache.forget(sha256)
    counts = delete_image_rows(
        engine,
        sha256,
        removed={"object": int(existed), "cache_entries": cached},
        actor=actor,
        request_id=request_id,
        client_request_id=client_request_id,
    )
    tombstones.delete_object(engine, store, sha256)
    return counts


def delete_image_rows(
    engine: Engine,
    sha256: str,
    *,
    removed: Mapping[str, int] | None = None,
    actor: str | None = None,
    request_id: str | None = None,
    client_request_id: str | None = None,
    at: datetime | None = None,
) -> dict[str, int]:
    """The image's tombstone (forgotten ``at``, by default now), every row of it (its own,
    its labels, its predictions) and the ``image.delete`` audit entry, in one transaction:
    no deletion without its entry, no entry for a deletion that did not happen, and no
    replica writes the rows back after it (:mod:`imageiq.tombstones`). ``removed`` counts
    what went before the rows (cache entries, the object about to go) for the entry; when
    nothing at all went, no entry is written. Returns ``removed`` with the rows' counts."""
    with Session(engine) as session, session.begin():
        tombstones.bury(
            session.connection(),
            sha256,
            at=at or utcnow(),
            deleted_by=actor,
            request_id=request_id,
        )
        counts = dict(removed or {})
        counts.update(
            (name, int(getattr(session.execute(statement), "rowcount", 0)))
            for name, statement in (
                ("labels", delete(Label).where(Label.image_sha256 == sha256)),
                ("predictions", delete(Prediction).where(Prediction.image_sha256 == sha256)),
                ("images", delete(Image).where(Image.sha256 == sha256)),
            )
        )
        if any(counts.values()):
            session.add(
                AuditEntry(
                    actor=actor,
                    action="image.delete",
                    target=sha256,
                    detail=counts,
                    request_id=request_id,
                    client_request_id=client_request_id,
                )
            )
    return counts


def find_image(engine: Engine, sha256: str) -> Image | None:
    with Session(engine, expire_on_commit=False) as session:
        return session.get(Image, sha256)


def stats(
    engine: Engine, *, since: datetime | None = None, until: datetime | None = None
) -> dict[str, Any]:
    """Counts per predicted label, per model version and per day; labels per label and
    source; stored images; the share of predictions served from the cache; a histogram of
    top-1 confidence; and per model version, how often its top-1 agreed with the label a
    person (user or admin) gave the image afterwards (the canary's figure,
    :func:`imageiq.rollout.agreement_by_version`; cache hits left out). Every figure
    counts what was made in the window (``since``, ``until``)."""

    def window(column: Any) -> list[Any]:
        return [c for c in (since and column >= since, until and column < until) if c is not None]

    day = func.date(Prediction.created_at)
    if engine.dialect.name == "postgresql":
        day = func.date(func.timezone("UTC", Prediction.created_at))
    p_where = and_(True, *window(Prediction.created_at))
    l_where = and_(True, *window(Label.created_at))
    with Session(engine) as session:
        total, cached = session.execute(
            select(func.count(), func.count().filter(Prediction.cached)).where(p_where)
        ).one()

        def grouped(column: Any, where: Any, table: Any) -> dict[str, int]:
            rows = session.execute(
                select(column, func.count()).select_from(table).where(where).group_by(column)
            )
            return {str(k): int(n) for k, n in sorted(rows, key=lambda r: (-r[1], str(r[0])))}

        model = Prediction.model_name + ":" + Prediction.model_version
        per_model = grouped(model, p_where, Prediction)
        agreement = agreement_by_version(session, p_where, Prediction.cached.is_(False))
        out = {
            "images": {
                "stored": session.scalar(
                    select(func.count())
                    .select_from(Image)
                    .where(and_(True, *window(Image.created_at)))
                )
                or 0
            },
            "predictions": {
                "total": total,
                "cached": cached,
                "cache_hit_ratio": round(cached / total, 4) if total else None,
                "per_label": grouped(Prediction.label, p_where, Prediction),
                "per_model": per_model,
                "per_day": dict(sorted(grouped(day, p_where, Prediction).items())),
                "confidence_histogram": _confidence_histogram(session, p_where),
            },
            "labels": {
                "total": session.scalar(select(func.count()).select_from(Label).where(l_where))
                or 0,
                "per_label": grouped(Label.label, l_where, Label),
                "per_source": grouped(Label.source, l_where, Label),
            },
            "feedback": {  # agreement's versions are among per_model's
                "per_model": {tag: _feedback(*agreement.get(tag, (0, 0))) for tag in per_model}
            },
        }
    return out


def record_models(engine: Engine, served: list[tuple[str, str, dict[str, Any]]]) -> None:
    """Make sure every served model version has a row (new ones are ``staged``)."""
    rows = [{"name": n, "version": v, "metrics": m, "status": "staged"} for n, v, m in served]
    insert_ignore(engine, Model, rows)


def activate_model(
    engine: Engine,
    *,
    name: str,
    version: str,
    metrics: dict[str, Any],
    actor: str | None,
    request_id: str | None,
    previous: str | None,
    client_request_id: str | None = None,
) -> None:
    """Mark ``name:version`` active, retire the one it replaces (``previous``, a tag, and
    any other marked active) and audit it."""
    record_models(engine, [(name, version, metrics)])
    replaced = previous.split(":", 1)[1] if previous and ":" in previous else None
    with Session(engine) as session, session.begin():
        for row in session.scalars(select(Model).where(Model.name == name)):
            if row.version == version:
                row.status = "active"
            elif row.status == "active" or row.version == replaced:
                row.status = "retired"
        session.add(
            AuditEntry(
                actor=actor,
                action="model.activate",
                target=f"{name}:{version}",
                detail={"previous": previous},
                request_id=request_id,
                client_request_id=client_request_id,
            )
        )


def audit(
    engine: Engine,
    *,
    actor: str | None,
    action: str,
    target: str | None,
    detail: dict[str, Any],
    request_id: str | None = None,
    client_request_id: str | None = None,
) -> None:
    with Session(engine) as session, session.begin():
        session.add(
            AuditEntry(
                actor=actor,
                action=action,
                target=target,
                detail=detail,
                request_id=request_id,
                client_request_id=client_request_id,
            )
        )


# --- helpers ----------------------------------------------------------------------------------
def _filtered(where: ImageFilter) -> Select[Any]:
    query = select(Image)
    if where.created_after is not None:
        query = query.where(Image.created_at >= where.created_after)
    if where.created_before is not None:
        query = query.where(Image.created_at < where.created_before)
    given = [Label.image_sha256 == Image.sha256]  # a label and source: of one label row
    if where.label is not None:
        given.append(Label.label == where.label)
    if where.label_source is not None:
        given.append(Label.source == where.label_source)
    if len(given) > 1:
        query = query.where(exists().where(*given))
    if where.attribute is not None:
        query = query.where(Image.sha256.in_(_with_attribute(*where.attribute)))
    conditions: list[ColumnElement[bool]] = []
    if where.predicted_label is not None:
        conditions.append(Prediction.label == where.predicted_label)
    if where.min_confidence is not None:
        conditions.append(Prediction.score >= where.min_confidence)
    if where.max_confidence is not None:
        conditions.append(Prediction.score <= where.max_confidence)
    if where.model_name is not None:
        conditions.append(Prediction.model_name == where.model_name)
    if where.model_version is not None:
        conditions.append(Prediction.model_version == where.model_version)
    if conditions:
        query = query.where(exists().where(Prediction.image_sha256 == Image.sha256, *conditions))
    return query


def _with_attribute(head: str, value: str) -> Select[Any]:
    """Images whose effective value of attribute ``head`` is ``value``, by training's rule
    (training/db_source.py) applied to that head alone: of the label rows that give the
    head a value, an admin's beats a user's, which beats a model's; within one source the
    latest wins."""
    if not ATTRIBUTE_HEAD.fullmatch(head):
        raise errors.InvalidParameter(
            f"Not an attribute name: {head[:64]!r}.", details={"field": "attribute"}
        )
    given = Label.attributes[head].as_string()
    precedence = case({"admin": 0, "user": 1}, value=Label.source, else_=2)
    rank = func.row_number().over(
        partition_by=Label.image_sha256,
        order_by=(precedence, Label.created_at.desc(), Label.id.desc()),
    )
    rows = (
        select(Label.image_sha256, given.label("value"), rank.label("rank"))
        .where(given.is_not(None), given != "")
        .subquery()
    )
    return select(rows.c.image_sha256).where(rows.c.rank == 1, rows.c.value == value)


def _feedback(labelled: int, agreed: int) -> dict[str, Any]:
    return {
        "labelled": labelled,
        "agreed": agreed,
        "agreement": round(agreed / labelled, 4) if labelled else None,
    }


def _confidence_histogram(session: Session, where: Any) -> list[dict[str, Any]]:
    """Predictions per top-1 score bin: CONFIDENCE_BINS equal-width bins over [0, 1] (the
    last one closed), counted in the database: ``width_bucket`` on PostgreSQL, an integer
    cast (truncation) on SQLite."""
    score = Prediction.score
    if session.get_bind().dialect.name == "postgresql":
        bucket: Any = func.width_bucket(score, 0.0, 1.0, CONFIDENCE_BINS) - 1
    else:
        bucket = cast(score * CONFIDENCE_BINS, Integer)
    clamped = case((score >= 1.0, CONFIDENCE_BINS - 1), (score <= 0.0, 0), else_=bucket).label(
        "bin"
    )
    bins = select(clamped).where(where).subquery()
    rows = session.execute(select(bins.c.bin, func.count()).group_by(bins.c.bin))
    counts = {int(b): int(n) for b, n in rows}
    return [
        {
            "lower": round(i / CONFIDENCE_BINS, 4),
            "upper": round((i + 1) / CONFIDENCE_BINS, 4),
            "count": int(counts.get(i, 0)),
        }
        for i in range(CONFIDENCE_BINS)
    ]


def _latest(session: Session, table: Any, shas: list[str]) -> dict[str, Any]:
    if not shas:
        return {}
    # Labels made in the same instant: the later row is the latest.
    order = [table.created_at.desc(), *([table.id.desc()] if table is Label else [])]
    rank = func.row_number().over(partition_by=table.image_sha256, order_by=order).label("rank")
    inner = select(table, rank).where(table.image_sha256.in_(shas)).subquery()
    rows = session.execute(select(table).from_statement(select(inner).where(inner.c.rank == 1)))
    return {row.image_sha256: row for (row,) in rows}


def _image_out(image: Image, prediction: Prediction | None, label: Label | None) -> dict[str, Any]:
    return {
        "id": image.sha256,
        "content_type": image.content_type,
        "bytes": image.bytes,
        "width": image.width,
        "height": image.height,
        "uploaded_by": image.uploaded_by,
        "created_at": image.created_at,
        "prediction": _prediction_out(prediction) if prediction is not None else None,
        "label": _label_out(label) if label is not None else None,
    }


def _prediction_out(p: Prediction) -> dict[str, Any]:
    return {
        "model": {"name": p.model_name, "version": p.model_version},
        "label": p.label,
        "score": p.score,
        "predictions": p.top_k,
        "attributes": p.attributes,
        "cached": p.cached,
        "created_at": p.created_at,
    }


def _label_out(label: Label) -> dict[str, Any]:
    return {
        "id": label.id,
        "label": label.label,
        "attributes": label.attributes,
        "source": label.source,
        "created_by": label.created_by,
        "created_at": label.created_at,
    }
