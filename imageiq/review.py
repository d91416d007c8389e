"""The active-learning review queue behind ``GET /v1/review``: the stored images that most
need a human label, best candidates first. Plain functions over an engine, like
:mod:`imageiq.catalog`.

An image is in the queue while it is stored, has a prediction by the model name asked
for, and no human (``user`` or ``admin``) has given it a class label; a ``model``-source
label (pseudo-labelling) is not a human answer, and neither is attribute-only feedback,
which leaves the class open. Each image is ranked on one prediction, its *primary*: the
latest by the champion (the version marked ``active`` in the models table), or, where the
champion never classified the image (or no version is marked active), its latest by the
model name. The strategies:

- ``least_confident``: the primary's top-1 score, lowest first;
- ``margin``: top-1 minus top-2 score, smallest first. A prediction stored with one
  label only (``top_k=1``) has a runner-up of at most ``min(top-1, 1 - top-1)`` (softmax
  scores sum to 1), so it is ranked on the smallest margin it can have;
- ``disagreement``: images whose primary and latest prediction by another version (a
  challenger) name different top-1 labels, ranked on the lower of the two scores.

Pages are keyset pages over ``(value, image id)``: the cursor is the last item's position,
so labelling images (which leaves the queue) never shifts the items still to come, as an
offset would. An image whose primary changes meanwhile (a newer prediction) moves to its
new place.

Cost: the whole queue is ranked for every page (a sort on a computed value has no index),
with one probe of ``ix_predictions_image_sha256`` per unlabelled stored image (two for
disagreement): never a scan of the predictions of images that were not stored, which are
most of them. The exact total rides on the same pass (a window count). Measured on
PostgreSQL 15 on 2 slow cores: 17,500 queued of 20,000 stored images, 1.2 M predictions,
0.35 s a page (0.45 s for disagreement), the same as with 0.26 M predictions; so about
20 µs per queued image, whatever the predictions table holds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    and_,
    case,
    exists,
    func,
    null,
    or_,
    select,
    true,
)
from sqlalchemy.orm import Session

from imageiq import errors
from imageiq.db.schema import Image, Label, Model, Prediction

Strategy = Literal["least_confident", "margin", "disagreement"]
HUMAN_SOURCES = ("user", "admin")
MAX_CURSOR_CHARS = 512
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


InvalidCursor = errors.InvalidCursor


@dataclass(frozen=True)
class ReviewQuery:
    model_name: str
    strategy: Strategy = "least_confident"
    predicted_label: str | None = None  # the primary prediction's top-1
    created_after: datetime | None = None  # stored at or after


@dataclass(frozen=True)
class ReviewPage:
    items: list[dict[str, Any]]
    total: int  # exact: every image in the queue, this page's and the others
    champion: str | None  # the version marked active, if any
    next_cursor: str | None  # None on the last page


def review_queue(
    engine: Engine, query: ReviewQuery, *, limit: int, cursor: str | None = None
) -> ReviewPage:
    """One page of the queue, from ``cursor`` (a :attr:`ReviewPage.next_cursor`) on."""
    after = decode_cursor(cursor, query) if cursor else None
    with Session(engine) as session:
        champion = champion_version(session, query.model_name)
        lateral = engine.dialect.name == "postgresql"
        ranked = _ranked(query, champion, lateral=lateral).subquery("ranked")
        # The total rides on every row (the whole queue is ranked for the page anyway), so
        # the queue is evaluated once, not once more for a count.
        counted = select(ranked, func.count().over().label("total")).subquery("counted")
        page = select(counted).order_by(counted.c.value, counted.c.image).limit(limit + 1)
        if after is not None:
            value, image = after
            page = page.where(
                or_(
                    counted.c.value > value,
                    and_(counted.c.value == value, counted.c.image > image),
                )
            )
        rows = session.execute(page).mappings().all()
        total = (
            rows[0]["total"]
            if rows
            else session.scalar(select(func.count()).select_from(ranked)) or 0
        )
        ids = [r[key] for r in rows[:limit] for key in ("primary_id", "challenger_id") if r[key]]
        predictions = {
            p.id: p for p in session.scalars(select(Prediction).where(Prediction.id.in_(ids)))
        }
    # An image forgotten between the two reads has lost its predictions: left out.
    kept = [
        r
        for r in rows[:limit]
        if r["primary_id"] in predictions
        and (r["challenger_id"] is None or r["challenger_id"] in predictions)
    ]
    items = [
        {
            "id": r["image"],
            "created_at": r["created_at"],
            "value": r["value"],
            "prediction": _prediction_out(predictions[r["primary_id"]]),
            "challenger": (
                _prediction_out(predictions[r["challenger_id"]]) if r["challenger_id"] else None
            ),
        }
        for r in kept
    ]
    last = rows[limit - 1] if len(rows) > limit else None
    next_cursor = encode_cursor(query, last["value"], last["image"]) if last else None
    return ReviewPage(items=items, total=total, champion=champion, next_cursor=next_cursor)


def champion_version(session: Session, model_name: str) -> str | None:
    """The version of ``model_name`` marked active (the latest marked, should two be)."""
    return session.scalar(
        select(Model.version)
        .where(Model.name == model_name, Model.status == "active")
        .order_by(Model.updated_at.desc(), Model.id.desc())
        .limit(1)
    )


def encode_cursor(query: ReviewQuery, value: float, image: str) -> str:
    """The position after ``(value, image)`` in ``query``'s queue, as opaque text."""
    body = json.dumps({"q": _fingerprint(query), "v": value, "i": image}, separators=(",", ":"))
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, query: ReviewQuery) -> tuple[float, str]:
    """``(value, image id)`` of a cursor :func:`encode_cursor` made for this very query,
    or :class:`InvalidCursor`."""
    if len(cursor) > MAX_CURSOR_CHARS:
        raise InvalidCursor("cursor is not one this queue handed out (too long).")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        body = json.loads(raw, parse_constant=_no_constant)
        value, image, fingerprint = body["v"], body["i"], body["q"]
    except (binascii.Error, ValueError, TypeError, KeyError) as e:
        raise InvalidCursor(
            "cursor is not one this queue handed out; pass a page's next_cursor as it is, "
            "or none to start again."
        ) from e
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not isinstance(image, str)
        or not _SHA256.match(image)
    ):
        raise InvalidCursor("cursor is not one this queue handed out (bad position).")
    if fingerprint != _fingerprint(query):
        raise InvalidCursor(
            "cursor belongs to another query: keep the strategy, model, label and "
            "created_after of the page that gave it, or start again without a cursor."
        )
    return float(value), image


# --- the query --------------------------------------------------------------------------------
def _ranked(query: ReviewQuery, champion: str | None, *, lateral: bool) -> Select[Any]:
    """Every image in the queue: ``image``, ``created_at``, ``primary_id``,
    ``challenger_id`` (disagreement only) and the ranking ``value``."""
    labelled = exists().where(
        Label.image_sha256 == Image.sha256,
        Label.source.in_(HUMAN_SOURCES),
        Label.label.is_not(None),
    )
    where: list[ColumnElement[bool]] = [~labelled]
    if query.created_after is not None:
        where.append(Image.created_at >= query.created_after)
    p, p_on = _latest(query.model_name, "p", lateral=lateral, prefer=champion)
    if query.predicted_label is not None:
        where.append(p.c.label == query.predicted_label)
    columns: list[Any] = [
        Image.sha256.label("image"),
        Image.created_at,
        p.c.id.label("primary_id"),
    ]
    if query.strategy != "disagreement":
        value = p.c.score if query.strategy == "least_confident" else _margin(p)
        columns += [null().label("challenger_id"), value.label("value")]
        return select(*columns).select_from(Image).join(p, p_on).where(*where)
    q, q_on = _latest(query.model_name, "q", lateral=lateral, other_than=p.c.model_version)
    lower = case((p.c.score <= q.c.score, p.c.score), else_=q.c.score)
    columns += [q.c.id.label("challenger_id"), lower.label("value")]
    return (
        select(*columns)
        .select_from(Image)
        .join(p, p_on)
        .join(q, q_on)
        .where(*where, q.c.label != p.c.label)
    )


def _latest(
    model_name: str,
    name: str,
    *,
    lateral: bool,
    prefer: str | None = None,
    other_than: ColumnElement[str] | None = None,
) -> tuple[Any, ColumnElement[bool]]:
    """The image's latest prediction by ``model_name`` (by version ``prefer`` if it has
    one; by a version other than ``other_than``), as a FROM item called ``name`` and its
    join condition. On PostgreSQL a LATERAL subquery: one index probe per image. (Joined
    on the id a correlated subquery finds, as on SQLite, the planner hashed the whole
    predictions table and ran the subquery twice per image: 0.7 to 2 s where this takes
    0.35 s, and growing with the table.) SQLite has no LATERAL: the predictions
    table joined on the id a correlated subquery finds (SQLite joins by nested loops, so
    that is the same probe)."""
    table = Prediction.__table__
    inner = table.alias(f"{name}_latest")
    conditions = [inner.c.image_sha256 == Image.sha256, inner.c.model_name == model_name]
    if other_than is not None:
        conditions.append(inner.c.model_version != other_than)
    order: list[Any] = [inner.c.created_at.desc(), inner.c.id.desc()]
    if prefer is not None:
        order.insert(0, case((inner.c.model_version == prefer, 0), else_=1))
    needed = (inner.c.id, inner.c.model_version, inner.c.label, inner.c.score, inner.c.top_k)
    latest = select(*needed).where(*conditions).order_by(*order).limit(1)
    if lateral:
        return latest.lateral(name), true()
    row = table.alias(name)
    return row, row.c.id == latest.with_only_columns(inner.c.id).scalar_subquery()


def _margin(p: Any) -> Any:
    """Top-1 minus top-2 score; with no runner-up stored, its largest possible score."""
    runner_up = p.c.top_k[(1, "score")].as_float()
    bound = case((p.c.score < 0.5, p.c.score), else_=1.0 - p.c.score)
    return p.c.score - func.coalesce(runner_up, bound)


def _fingerprint(query: ReviewQuery) -> str:
    """What a cursor must agree on with the request it is sent with."""
    after = query.created_after.isoformat() if query.created_after else None
    parts = [query.strategy, query.model_name, query.predicted_label, after]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a position")


def _prediction_out(p: Prediction) -> dict[str, Any]:
    return {
        "model": {"name": p.model_name, "version": p.model_version},
        "label": p.label,
        "score": p.score,
        "predictions": p.top_k,
        "created_at": p.created_at,
    }
