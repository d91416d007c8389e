"""``GET /v1/review``: the active-learning queue (:mod:`imageiq.review`), the stored images
that most need a label, best candidates first. It needs the ``label`` scope, as the
feedback that empties it does (``POST /v1/images/{id}/labels``): whoever labels reads it.

Included by :mod:`bentos.catalog`'s router, so the service mounts it with the catalog.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from bentos.auth import require
from bentos.catalog_schemas import CONTROL, MOMENT, MOMENT_EXAMPLES, SURROGATE, parse_moment
from bentos.dbcall import db_call
from bentos.openapi import ADMITTED, error_responses
from bentos.schemas import ModelRefOut, ScoredLabelOut
from bentos.state import state
from imageiq import errors, review
from imageiq.keys import Principal
from imageiq.settings import TAG_PART

router = APIRouter(responses=error_responses(*ADMITTED))
_VALUE = {
    "least_confident": "the top-1 score",
    "margin": "top-1 minus top-2 score",
    "disagreement": "the lower of the two top-1 scores",
}


class RankedPredictionOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: ModelRefOut
    label: str = Field(description="Its top-1 label.")
    score: float = Field(description="Its top-1 score.")
    predictions: list[ScoredLabelOut] = Field(description="Its top-k, best first, as stored.")
    created_at: datetime


class ReviewItemOut(BaseModel):
    id: str = Field(description="The image id (its sha256), for POST /v1/images/{id}/labels.")
    created_at: datetime = Field(description="When the image was stored.")
    value: float = Field(
        description="What the queue is ordered on, lowest first: "
        + "; ".join(f"{k}: {v}" for k, v in _VALUE.items())
        + "."
    )
    prediction: RankedPredictionOut = Field(
        description="The prediction it is ranked on: the champion's latest of the image, or "
        "the latest by the model where the champion has none."
    )
    challenger: RankedPredictionOut | None = Field(
        None, description="disagreement: the latest prediction by another version."
    )


class ReviewPageOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    strategy: review.Strategy
    model: str = Field(description="The model name the queue ranks on.")
    champion: str | None = Field(description="Its version marked active; null when none is.")
    items: list[ReviewItemOut]
    total: int = Field(description="Images in the queue (exact), on every page.")
    limit: int
    next_cursor: str | None = Field(description="The cursor of the next page; null on the last.")


@router.get(
    "/review",
    response_model=ReviewPageOut,
    responses=error_responses(400, 403, 422, s400="A cursor this query did not give."),
    summary="The review queue: stored images that most need a label",
)
async def review_queue(
    request: Request,
    principal: Principal = Depends(require("label")),
    strategy: review.Strategy = Query(
        "least_confident",
        description="least_confident (lowest top-1 score), margin (smallest top-1 minus "
        "top-2), disagreement (champion and challenger versions name different labels).",
    ),
    model: str | None = Query(
        None, pattern=rf"^{TAG_PART}$", description="A model name (default: the active one)."
    ),
    label: str | None = Query(None, max_length=255, description="Top-1 predicted label."),
    created_after: str | None = Query(
        None,
        max_length=40,
        pattern=MOMENT.pattern,
        description="Stored at or after this time. ISO 8601: a date (2024-03-10) or a date "
        "and time; no zone means UTC.",
        examples=MOMENT_EXAMPLES,
    ),
    limit: int = Query(20, ge=1, le=100),
    cursor: str | None = Query(
        None, description="A page's next_cursor, for the page after it (same query)."
    ),
) -> ReviewPageOut:
    """Stored images with a prediction by the model and no class label from a person
    (user or admin; a model-source label does not count), the most useful to label first.
    Labelling one through POST /v1/images/{id}/labels takes it out. Pages are keyset
    pages: images labelled meanwhile never shift the ones still to come."""
    if label is not None and (CONTROL.search(label) or SURROGATE.search(label)):
        raise errors.InvalidParameter(
            "label must not contain control characters.", details={"field": "label"}
        )
    served = state(request)
    active = served.pool.active
    name = model or (active.model.name if active is not None else served.settings.model_name)
    query = review.ReviewQuery(
        model_name=name,
        strategy=strategy,
        predicted_label=label,
        created_after=parse_moment("created_after", created_after),
    )
    page = await db_call(served.backends, review.review_queue, query, limit=limit, cursor=cursor)
    return ReviewPageOut.model_validate(
        {
            "strategy": strategy,
            "model": name,
            "champion": page.champion,
            "items": page.items,
            "total": page.total,
            "limit": limit,
            "next_cursor": page.next_cursor,
        }
    )
