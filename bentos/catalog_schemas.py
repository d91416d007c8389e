"""Bodies of the stored-image, feedback, stats and admin endpoints."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bentos.schemas import ModelRefOut, ScoredLabelOut
from imageiq import errors

SHA256 = r"^[0-9a-f]{64}$"
# A label: any printable text (species names have apostrophes, dots, symbols) up to 255
# characters, without control characters or surrounding spaces.
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
SURROGATE = re.compile(r"[\ud800-\udfff]")  # not text: no database can store it
# The times a query takes: an ISO 8601 calendar date, or a date and time (to the minute or
# finer, an optional zone: Z or +hh:mm). Nothing shorter: "2024" is a valid ISO 8601 year,
# but as a bound it is ambiguous (the start of 2024, or its end?), and a bare number was
# once silently read as Unix seconds. Week and ordinal dates and the basic format
# (20240310) are refused too: one spelling, the one everybody writes.
MOMENT = re.compile(
    r"^\d{4}-\d{2}-\d{2}"
    r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|z|[+-]\d{2}:\d{2})?)?$"
)
MOMENT_EXAMPLES = ["2024-03-10", "2024-03-10T12:00:00Z", "2024-03-10T14:00:00+02:00"]


def parse_moment(field: str, text: str | None) -> datetime | None:
    """A query's time, in UTC (a date is its midnight; no zone means UTC), or a 422
    ``invalid_parameter`` naming the field and the accepted forms."""
    if text is None:
        return None
    expected = "an ISO 8601 date (2024-03-10) or date and time (2024-03-10T12:00:00Z)"
    if not MOMENT.fullmatch(text):
        raise errors.InvalidParameter(
            f"{field} must be {expected}; got {text[:40]!r}.", details={"field": field}
        )
    try:
        moment = datetime.fromisoformat(text.upper().replace(" ", "T"))
        return (
            moment.astimezone(timezone.utc)
            if moment.tzinfo
            else moment.replace(tzinfo=timezone.utc)
        )
    except (OverflowError, ValueError) as e:  # 2024-02-30, 25:00, year 1 in UTC-01:00
        raise errors.InvalidParameter(
            f"{field} is not a real date and time: {text[:40]!r}.", details={"field": field}
        ) from e


def _check_text(value: str, what: str, limit: int) -> str:
    bad = CONTROL.search(value) or SURROGATE.search(value)
    if not value or value != value.strip() or len(value) > limit or bad:
        raise ValueError(
            f"{what} must be 1 to {limit} printable characters without surrounding spaces"
        )
    return value


class LabelIn(BaseModel):
    """Feedback for a stored image: its true label and/or attribute values."""

    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(None, description="The true class.", examples=["charmander"])
    attributes: dict[str, str] = Field(
        default_factory=dict,
        description="True values of attribute heads.",
        examples=[{"shiny": "yes"}],
        max_length=32,
    )
    source: Literal["user", "admin", "model"] = Field(
        "user", description="Who says so; admin and model need the admin scope."
    )
    new_label: bool = Field(
        False,
        description="Accept a label no served model knows (a new class for the next training).",
    )

    @field_validator("label")
    @classmethod
    def _label(cls, value: str | None) -> str | None:
        return None if value is None else _check_text(value, "label", 255)

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, value: dict[str, str]) -> dict[str, str]:
        for head, answer in value.items():
            _check_text(head, "an attribute name", 64)
            _check_text(answer, "an attribute value", 64)
        return value


class LabelOut(BaseModel):
    id: int
    image: str = Field(description="The image id (its sha256).")
    label: str | None
    attributes: dict[str, str]
    source: str
    created_by: str | None
    created_at: datetime


class StoredPredictionOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: ModelRefOut
    label: str
    score: float
    predictions: list[ScoredLabelOut]
    attributes: dict[str, ScoredLabelOut]
    cached: bool
    created_at: datetime


class StoredLabelOut(BaseModel):
    id: int
    label: str | None
    attributes: dict[str, str]
    source: str
    created_by: str | None
    created_at: datetime


class StoredImageOut(BaseModel):
    id: str = Field(description="The image's sha256: the same bytes are the same image.")
    content_type: str
    bytes: int
    width: int
    height: int
    uploaded_by: str | None = Field(description="Id of the API key that stored it.")
    created_at: datetime
    prediction: StoredPredictionOut | None = Field(description="The latest prediction.")
    label: StoredLabelOut | None = Field(None, description="The latest label given.")


class ImageDetailOut(StoredImageOut):
    predictions: list[StoredPredictionOut] = Field(description="The latest 20, newest first.")
    labels: list[StoredLabelOut] = Field(description="Every label given, newest first.")


class ImagePage(BaseModel):
    items: list[StoredImageOut]
    total: int = Field(description="Images matching the filters.")
    limit: int
    offset: int
    next_offset: int | None = Field(description="Offset of the next page; null on the last.")


class DeletedOut(BaseModel):
    id: str
    deleted: dict[str, int] = Field(
        description="What was removed: object, images, labels, predictions, cache_entries."
    )


class ModelFeedbackOut(BaseModel):
    labelled: int = Field(
        description="Its predictions (cache hits aside) whose image a person (user or "
        "admin) labelled afterwards."
    )
    agreed: int = Field(description="Of those, how many had the label as top-1.")
    agreement: float | None = Field(description="agreed / labelled; null when none.")


class FeedbackStatsOut(BaseModel):
    per_model: dict[str, ModelFeedbackOut] = Field(
        description="Per name:version, as in predictions.per_model (the latest such label "
        "of the image decides, as for a canary's agreement)."
    )


class StatsOut(BaseModel):
    images: dict[str, int]
    predictions: dict[str, Any] = Field(
        description="total, cached, cache_hit_ratio, per_label, per_model, per_day, "
        "confidence_histogram (10 equal-width bins of the top-1 score: lower, upper, count)."
    )
    labels: dict[str, Any] = Field(description="total, per_label, per_source.")
    feedback: FeedbackStatsOut
    since: datetime | None = None
    until: datetime | None = None


class ActivateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(
        pattern=r"^[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?$",
        description="A registered version of the model.",
        examples=["r3vqbbdbrgsuasc6"],
    )


class ActivateOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: ModelRefOut
    previous: str | None = Field(description="The version that was active before.")
    serving: list[str] = Field(description="Every model tag served now.")
