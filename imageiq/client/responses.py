"""Typed answers of the API. Every model keeps fields it does not know (``extra="allow"``,
readable in ``model_extra``), so a server that adds a field never breaks an older client;
fields the server may leave out default to None."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Answer(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class ScoredLabel(Answer):
    label: str
    score: float


class ModelRef(Answer):
    name: str
    version: str

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version}"


class ImageInfo(Answer):
    sha256: str
    width: int
    height: int
    format: str
    bytes: int
    id: str | None = None
    stored: bool | None = None


class Timing(Answer):
    decode: float | None = None
    preprocess: float | None = None
    queue: float | None = None
    inference: float | None = None
    total: float | None = None


class Classification(Answer):
    """``POST /v1/classify``: the best labels first."""

    model: ModelRef
    predictions: list[ScoredLabel]
    attributes: dict[str, ScoredLabel] = Field(default_factory=dict)
    image: ImageInfo
    batch_size: int | None = None
    cached: bool = False
    timing_ms: Timing | None = None

    @property
    def top(self) -> ScoredLabel | None:
        return self.predictions[0] if self.predictions else None


class ItemError(Answer):
    """Why one image of a batch failed. ``status`` is what ``/v1/classify`` would have
    answered; None for a failure on this side (a file that could not be read)."""

    status: int | None = None
    code: str
    message: str


class BatchItem(Answer):
    """One image of :meth:`Client.classify_batch`, at ``index`` of the input: either the
    prediction fields or ``error``."""

    index: int
    filename: str | None = None
    model: ModelRef | None = None
    predictions: list[ScoredLabel] | None = None
    attributes: dict[str, ScoredLabel] | None = None
    image: ImageInfo | None = None
    batch_size: int | None = None
    cached: bool | None = None
    timing_ms: Timing | None = None
    error: ItemError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def top(self) -> ScoredLabel | None:
        return self.predictions[0] if self.predictions else None


class BatchResult(Answer):
    """Every image's result in input order, however many requests it took."""

    results: list[BatchItem]
    succeeded: int
    failed: int
    requests: int = Field(0, description="How many batch requests were sent.")


class Categories(Answer):
    model: ModelRef
    labels: list[str]
    attributes: dict[str, list[str]] = Field(default_factory=dict)


class ServedModel(Answer):
    name: str
    version: str
    requested: str | None = None
    active: bool = False
    state: str | None = None
    error: str | None = None
    architecture: str | None = None
    labels_count: int | None = None
    attributes: dict[str, list[str]] = Field(default_factory=dict)
    input_size: int | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    created_at: datetime | None = None
    batching: dict[str, int] = Field(default_factory=dict)


class Models(Answer):
    active: str | None = None
    ready: bool = False
    models: list[ServedModel]
    unavailable: dict[str, str] = Field(default_factory=dict)
    last_reload: dict[str, Any] | None = None
    dependencies: dict[str, Any] = Field(default_factory=dict)


class KeyInfo(Answer):
    id: str
    name: str | None = None
    prefix: str | None = None


class Whoami(Answer):
    auth_enabled: bool
    key: KeyInfo | None = None
    scopes: list[str]


class Label(Answer):
    """Feedback as stored: ``POST /v1/images/{id}/labels``."""

    id: int
    image: str | None = None
    label: str | None = None
    attributes: dict[str, str] = Field(default_factory=dict)
    source: str
    created_by: str | None = None
    created_at: datetime


class StoredPrediction(Answer):
    model: ModelRef
    label: str
    score: float
    predictions: list[ScoredLabel] = Field(default_factory=list)
    attributes: dict[str, ScoredLabel] = Field(default_factory=dict)
    cached: bool = False
    created_at: datetime


class StoredImage(Answer):
    id: str
    content_type: str
    bytes: int
    width: int
    height: int
    uploaded_by: str | None = None
    created_at: datetime
    prediction: StoredPrediction | None = None
    label: Label | None = None


class ImageDetail(StoredImage):
    predictions: list[StoredPrediction] = Field(default_factory=list)
    labels: list[Label] = Field(default_factory=list)


class ImagePage(Answer):
    items: list[StoredImage]
    total: int
    limit: int
    offset: int
    next_offset: int | None = None


class Deleted(Answer):
    id: str
    deleted: dict[str, int]


class Job(Answer):
    id: str
    state: str = Field(description="queued, running, succeeded, failed or cancelled.")
    model: str
    top_k: int | None = None
    min_confidence: float | None = None
    source: dict[str, Any] = Field(default_factory=dict)
    total: int = 0
    done: int = 0
    failed: int = 0
    pending: int = 0
    images_per_second: float | None = None
    eta_seconds: float | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    callback_url: str | None = None
    results: dict[str, str] = Field(default_factory=dict)
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("succeeded", "failed", "cancelled")


class JobCreated(Answer):
    job: Job
    webhook_secret: str | None = None


class JobResultLine(Answer):
    """One image of a job's results (JSON Lines), in submission order."""

    position: int
    ref: str | None = None
    state: str
    sha256: str | None = None
    label: str | None = None
    score: float | None = None
    predictions: list[ScoredLabel] | None = None
    attributes: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
