"""Request and response bodies of the public API, with the examples the OpenAPI page shows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from imageiq.classify import MAX_TOP_K
from imageiq.settings import MODEL_TAG

_VERSION = "r3vqbbdbrgsuasc6"
# A real 8x8 PNG, base64: the example request bodies are ones the service answers with 200.
EXAMPLE_PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFUlEQVR42mM8ISfHgA0w"
    "MeAAg1MCANDKARQfGKMRAAAAAElFTkSuQmCC"
)


# --- requests -------------------------------------------------------------------------------
class ClassifyParams(BaseModel):
    """Options of /v1/classify and /v1/classify/batch: form fields or JSON keys, or the
    query string (where a field or key of the same name wins)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    top_k: int = Field(5, ge=1, le=MAX_TOP_K, description="How many labels to return at most.")
    min_confidence: float = Field(
        0.0, ge=0.0, le=1.0, description="Leave out labels scored below this."
    )
    model: str | None = Field(
        None,
        pattern=MODEL_TAG,
        description="A served model: name, name:version or name:latest (default: the active one).",
        examples=["imageiq-classifier"],
    )
    store: bool = Field(
        False,
        description="Keep the image (object store and metadata database): it gets an id "
        "for feedback (POST /v1/images/{id}/labels) and shows in GET /v1/images.",
    )


class ClassifyJSON(ClassifyParams):
    """/v1/classify as JSON."""

    image_b64: str = Field(
        description="The image file, base64 (standard or URL-safe; a data: URL is accepted).",
        examples=[EXAMPLE_PNG_B64],
    )


class BatchJSON(ClassifyParams):
    """/v1/classify/batch as JSON."""

    images_b64: list[str] = Field(
        min_length=1,
        description="The image files, base64, in order (at most IMAGEIQ_MAX_BATCH_IMAGES).",
        examples=[[EXAMPLE_PNG_B64, EXAMPLE_PNG_B64]],
    )


# --- responses ------------------------------------------------------------------------------
class ScoredLabelOut(BaseModel):
    label: str = Field(description="Class label.", examples=["7"])
    score: float = Field(ge=0.0, le=1.0, description="Softmax probability.", examples=[0.98])


class ModelRefOut(BaseModel):
    name: str = Field(examples=["imageiq-classifier"])
    version: str = Field(examples=[_VERSION])


class ImageOut(BaseModel):
    sha256: str = Field(description="Of the uploaded bytes.")
    width: int = Field(description="Pixels, as displayed (after EXIF orientation).")
    height: int
    format: str = Field(description="As decoded: JPEG, PNG, WEBP, GIF, BMP, TIFF.")
    bytes: int
    id: str | None = Field(
        None, description="When stored: the image's id (its sha256) for /v1/images/{id}."
    )
    stored: bool | None = Field(
        None,
        description="When store was asked: true once it is in the store and database, false "
        "while it waits for one of them to come back (it will be stored; nothing is lost).",
    )


class TimingOut(BaseModel):
    decode: float = Field(description="Decoding the image, ms.")
    preprocess: float = Field(description="Colour, resize and crop, ms.")
    queue: float = Field(description="Waiting in the model's batching queue, ms.")
    inference: float = Field(description="The forward pass of the batch this image was in, ms.")
    total: float = Field(description="From the request's arrival to the response, ms.")


class PredictionOut(BaseModel):
    predictions: list[ScoredLabelOut] = Field(
        description="Best first: top_k labels, without those under min_confidence."
    )
    attributes: dict[str, ScoredLabelOut] = Field(
        description="One entry per extra head of the model: its best value and score."
    )
    image: ImageOut
    batch_size: int = Field(
        description="Images in the inference batch this one ran in (0 when served from cache)."
    )
    cached: bool = Field(
        False, description="Served from the prediction cache (same image, model, top_k)."
    )
    timing_ms: TimingOut


_EXAMPLE_PREDICTION: dict[str, Any] = {
    "predictions": [{"label": "7", "score": 0.981}, {"label": "1", "score": 0.011}],
    "attributes": {"shiny": {"label": "no", "score": 0.93}},
    "image": {"sha256": "9f86d08…", "width": 640, "height": 480, "format": "JPEG", "bytes": 48213},
    "batch_size": 4,
    "timing_ms": {"decode": 2.1, "preprocess": 0.8, "queue": 3.0, "inference": 31.5, "total": 38.9},
}


def _example(**fields: Any) -> dict[str, Any]:
    return {**fields, **_EXAMPLE_PREDICTION}


class ClassifyResponse(PredictionOut):
    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {"model": {"name": "imageiq-classifier", "version": _VERSION}} | _EXAMPLE_PREDICTION
            ]
        },
    )

    model: ModelRefOut


class ErrorDetail(BaseModel):
    code: str = Field(
        description="Stable, machine-readable.", examples=["unsupported_image_format"]
    )
    message: str = Field(examples=["The upload is not an image in a supported format."])
    request_id: str = Field(examples=["5f0c6a1e9b7d4c2f8e3a1b0c9d8e7f6a"])
    details: dict[str, Any] | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ItemError(BaseModel):
    status: int = Field(description="The HTTP status this error has on /v1/classify.")
    code: str = Field(examples=["corrupt_image"])
    message: str


class BatchItemOut(BaseModel):
    """One image's result: ``error`` is set instead of the prediction fields when it failed."""

    index: int = Field(description="Position in the request.")
    filename: str | None = None
    predictions: list[ScoredLabelOut] | None = None
    attributes: dict[str, ScoredLabelOut] | None = None
    image: ImageOut | None = None
    batch_size: int | None = None
    cached: bool | None = None
    timing_ms: TimingOut | None = None
    error: ItemError | None = None


class BatchResponse(BaseModel):
    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "model": {"name": "imageiq-classifier", "version": _VERSION},
                    "results": [
                        _example(index=0, filename="a.jpg"),
                        {
                            "index": 1,
                            "filename": "notes.txt",
                            "error": {
                                "status": 415,
                                "code": "unsupported_image_format",
                                "message": "The upload is not an image in a supported format.",
                            },
                        },
                    ],
                    "succeeded": 1,
                    "failed": 1,
                }
            ]
        },
    )

    model: ModelRefOut
    results: list[BatchItemOut] = Field(description="One per image, in request order.")
    succeeded: int
    failed: int


class CategoriesResponse(BaseModel):
    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "model": {"name": "imageiq-classifier", "version": _VERSION},
                    "labels": ["0", "1", "2"],
                    "attributes": {"shiny": ["no", "yes"]},
                }
            ]
        },
    )

    model: ModelRefOut
    labels: list[str] = Field(description="Every class the model predicts, in output order.")
    attributes: dict[str, list[str]] = Field(description="Extra heads and their values.")


class ModelOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    version: str
    requested: str = Field(description="As configured (a 'latest' tag resolves at load).")
    active: bool = Field(description="Requests that name no model get this one.")
    state: str = Field(description="loading, ready or failed.")
    error: str | None = None
    architecture: str
    labels_count: int
    attributes: dict[str, list[str]]
    input_size: int = Field(description="Side of the square input, pixels.")
    metrics: dict[str, float] = Field(description="From training: accuracy and friends.")
    created_at: datetime
    batching: dict[str, int] = Field(description="max_batch_size, max_latency_ms.")


class ModelsResponse(BaseModel):
    active: str | None = Field(description="Tag of the active model.")
    ready: bool = Field(description="Every configured model is loaded and warm.")
    models: list[ModelOut]
    unavailable: dict[str, str] = Field(
        description="Configured tags that could not be resolved, and why."
    )
    last_reload: dict[str, Any] | None = Field(
        None, description="Outcome of the last settings-driven reload."
    )
    dependencies: dict[str, Any] = Field(
        default_factory=dict,
        description="State of the database, Redis and the object store, and how many "
        "prediction records wait to be written.",
    )
