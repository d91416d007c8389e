"""ImageIQ's BentoML service: a thin HTTP layer over :mod:`imageiq`'s pure core.

Request path: an endpoint of the FastAPI app mounted at ``/v1`` reads the request
(:mod:`bentos.inputs`), picks the served model (:class:`imageiq.pool.ModelPool`), decodes and
preprocesses each image in a worker thread into a uint8 tensor, and awaits that model's
adaptive-batching queue (:class:`imageiq.batching.Batcher`, BentoML's dispatcher), which
runs merged batches on the one inference thread. The probabilities come back and are shaped
into the response.

Run: ``bentoml serve bentos.service:ImageClassifier`` (``make serve`` does it for you).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import anyio
import bentoml
import torch
from fastapi import FastAPI, Query, Request

import imageiq
from bentos.http import EnvelopeOutsideApi, RequestGuard, install_error_handlers, note
from bentos.inputs import Limits, Upload, read_batch, read_classify
from bentos.schemas import (
    BatchItemOut,
    BatchJSON,
    BatchResponse,
    CategoriesResponse,
    ClassifyJSON,
    ClassifyParams,
    ClassifyResponse,
    ErrorResponse,
    ImageOut,
    ItemError,
    ModelOut,
    ModelRefOut,
    ModelsResponse,
    PredictionOut,
    ScoredLabelOut,
    TimingOut,
)
from imageiq import errors
from imageiq.images import DecodedImage
from imageiq.logs import configure_logging
from imageiq.metrics import metrics
from imageiq.pool import ConfigWatcher, ModelPool, ServedModel
from imageiq.registry import get_model
from imageiq.runner import InferenceThread
from imageiq.settings import MODEL_TAG, Settings

log = logging.getLogger("imageiq.service")

SETTINGS = Settings()
configure_logging(SETTINGS.log_format)
LIMITS = Limits(
    max_image_bytes=SETTINGS.max_image_bytes,
    max_images=SETTINGS.max_batch_images,
    default_top_k=SETTINGS.default_top_k,
)
_ENVELOPE = 64 * 1024  # multipart boundaries, form fields, JSON keys


def _body_limit(path: str) -> int:
    if path.endswith("/classify/batch"):
        return SETTINGS.max_batch_request_bytes
    if path.endswith("/classify"):  # base64 in JSON is 4/3 of the file
        return SETTINGS.max_image_bytes * 4 // 3 + _ENVELOPE
    return _ENVELOPE


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "Malformed request (bad multipart or JSON) or empty image.",
        404: "The model asked for is not served.",
        413: "Image over the byte or pixel limit, or too many images.",
        415: "Not multipart/form-data or JSON, or not an image in a supported format.",
        422: "Missing image, invalid parameter or base64, or corrupt image data.",
        503: "Model not ready yet, or the server is overloaded (see Retry-After).",
    }
    return {s: {"model": ErrorResponse, "description": described[s]} for s in statuses}


def _request_body(json_model: type[ClassifyJSON | BatchJSON], file_field: str) -> dict[str, Any]:
    """OpenAPI request body: the endpoints read multipart or JSON themselves."""
    options = ClassifyParams.model_json_schema()["properties"]
    files = (
        {"type": "array", "items": {"type": "string", "format": "binary"}}
        if file_field == "images"
        else {"type": "string", "format": "binary"}
    )
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {file_field: files, **options},
                        "required": [file_field],
                    }
                },
                "application/json": {"schema": json_model.model_json_schema()},
            },
        }
    }


api = FastAPI(
    title="ImageIQ",
    version=imageiq.__version__,
    description=(
        "Image classification. Send images as multipart/form-data files or base64 in JSON. "
        'Every error is `{"error": {code, message, request_id}}` with a stable `code`.'
    ),
)
api.add_middleware(
    RequestGuard,
    max_body_bytes=_body_limit,
    max_in_flight=SETTINGS.max_in_flight,
    timeout_s=SETTINGS.request_timeout_s,
)


def _declared_models() -> list[bentoml.models.BentoModel]:
    """The configured models, so ``bentoml build`` packages them with the bento. One that
    is not in the store is left out here; the service reports it at start-up instead."""
    declared = []
    for tag in SETTINGS.models:
        try:
            declared.append(bentoml.models.BentoModel(get_model(tag).tag))
        except errors.ImageIQError as e:
            log.error("model %s is not in the model store: %s", tag, e.message)
    return declared


@dataclass
class _Outcome:
    prediction: PredictionOut | None = None
    error: errors.ImageIQError | None = None


@bentoml.service(
    name="imageiq",
    workers=1,
    # BentoML's own deadline sits behind RequestGuard's, which answers in the error envelope.
    traffic={"timeout": SETTINGS.request_timeout_s + 10},
)
@bentoml.asgi_app(api, path="/v1")
class ImageClassifier:
    """Classifies images with the registered ImageIQ models named in the settings."""

    def __init__(self) -> None:
        self.settings = SETTINGS
        metrics()  # register every metric now, before worker threads race to
        self.thread = InferenceThread(threads=SETTINGS.torch_threads or SETTINGS.cpu_count)
        # The models load and warm up in the background; /readyz tells when.
        self.pool = ModelPool(SETTINGS, thread=self.thread)
        self._decode_slots = anyio.CapacityLimiter(
            SETTINGS.decode_concurrency or SETTINGS.cpu_count
        )
        self._watcher = ConfigWatcher(self.pool, load=Settings)
        self._tasks: set[asyncio.Task[None]] = set()
        log.info("serving %s (loading in the background)", list(SETTINGS.models))

    @bentoml.on_startup
    async def start_watching(self) -> None:
        task = asyncio.get_running_loop().create_task(self._watcher.run())
        self._tasks.add(task)

    def __is_ready__(self) -> bool:
        for served in self.pool.models.values():
            metrics().model_ready.labels(served.model.name, served.model.version).set(
                1 if served.runner.ready else 0
            )
        return self.pool.ready

    def __is_alive__(self) -> bool:
        # A model that fails to load fails readiness, with its error in /v1/models and the
        # log; restarting the process would not fix it, so liveness stays true.
        return True

    @bentoml.on_shutdown
    async def shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        for served in self.pool.models.values():
            served.batcher.close()
        self.thread.close()

    # --- endpoints ------------------------------------------------------------------------
    @api.post(
        "/classify",
        response_model=ClassifyResponse,
        responses=_errors(400, 404, 413, 415, 422, 503),
        summary="Classify one image",
        openapi_extra=_request_body(ClassifyJSON, "image"),
    )
    async def classify(self, request: Request) -> ClassifyResponse:
        """Top-k labels with softmax scores (best first), the model's attributes, facts
        about the image and where the time went. Multipart field ``image``, or JSON
        ``image_b64``; options ``top_k``, ``min_confidence``, ``model``."""
        started = time.perf_counter()
        try:
            params, upload = await read_classify(request, LIMITS)
        except errors.ImageIQError as e:
            self._count_rejected("/v1/classify", e)
            raise
        served = self.pool.resolve(params.model)
        note(request.scope, model=served.tag)
        with served.use():
            outcome = await self._classify_one(served, upload, params, started, request)
        if outcome.error is not None:
            raise outcome.error
        assert outcome.prediction is not None
        return ClassifyResponse(model=_ref(served), **outcome.prediction.model_dump())

    @api.post(
        "/classify/batch",
        response_model=BatchResponse,
        response_model_exclude_none=True,
        responses=_errors(400, 404, 413, 415, 422, 503),
        summary="Classify several images in one request",
        openapi_extra=_request_body(BatchJSON, "images"),
    )
    async def classify_batch(self, request: Request) -> BatchResponse:
        """One result per image, in order. A bad image gets an ``error`` in its result
        (with the status and code /v1/classify would answer) and does not fail the others.
        Repeated multipart fields ``images``, or JSON ``images_b64``."""
        started = time.perf_counter()
        params, uploads = await read_batch(request, LIMITS)
        served = self.pool.resolve(params.model)
        note(request.scope, model=served.tag, images=len(uploads))
        outcomes: list[_Outcome] = [_Outcome() for _ in uploads]

        async def run(i: int) -> None:
            outcomes[i] = await self._classify_one(served, uploads[i], params, started, request)

        with served.use():
            async with anyio.create_task_group() as group:
                for i in range(len(uploads)):
                    group.start_soon(run, i)
        results = []
        for i, (upload, outcome) in enumerate(zip(uploads, outcomes, strict=True)):
            if outcome.error is not None:
                e = outcome.error
                error = ItemError(status=e.status, code=e.code, message=e.message)
                results.append(BatchItemOut(index=i, filename=upload.filename, error=error))
            else:
                assert outcome.prediction is not None
                results.append(
                    BatchItemOut(
                        index=i, filename=upload.filename, **outcome.prediction.model_dump()
                    )
                )
        failed = sum(1 for r in results if r.error is not None)
        return BatchResponse(
            model=_ref(served), results=results, succeeded=len(results) - failed, failed=failed
        )

    @api.get(
        "/categories",
        response_model=CategoriesResponse,
        responses=_errors(404, 503),
        summary="Labels and attribute heads of a model",
    )
    async def categories(
        self,
        request: Request,
        model: str | None = Query(
            None, pattern=MODEL_TAG, description="A served model (default: the active one)."
        ),
    ) -> CategoriesResponse:
        """Every label the model predicts, in output order, and its attribute heads."""
        served = self.pool.resolve(model)
        note(request.scope, model=served.tag)
        card = served.model.card
        return CategoriesResponse(model=_ref(served), labels=card.labels, attributes=card.heads)

    @api.get("/models", response_model=ModelsResponse, summary="The served models")
    async def list_models(self) -> ModelsResponse:
        """Every served model version: architecture, labels, training metrics, whether it is
        the active one, and its load state (loading, ready, failed)."""
        pool = self.pool
        models = []
        for served in pool.models.values():
            card = served.model.card
            models.append(
                ModelOut(
                    name=served.model.name,
                    version=served.model.version,
                    requested=served.requested,
                    active=served is pool.active,
                    state=served.state,
                    error=served.runner.error,
                    architecture=card.architecture,
                    labels_count=len(card.labels),
                    attributes=card.heads,
                    input_size=card.preprocessing.crop_size,
                    metrics=card.metrics,
                    created_at=card.created_at,
                    batching={
                        "max_batch_size": served.batcher.max_batch_size,
                        "max_latency_ms": pool.settings.max_latency_ms,
                    },
                )
            )
        return ModelsResponse(
            active=pool.active.tag if pool.active else None,
            ready=pool.ready,
            models=models,
            unavailable=pool.errors,
            last_reload=pool.last_reload,
        )

    # --- the work ---------------------------------------------------------------------------
    async def _classify_one(
        self,
        served: ServedModel,
        upload: Upload,
        params: ClassifyParams,
        started: float,
        request: Request,
    ) -> _Outcome:
        """One image through decode, preprocess, the batch queue and postprocess. Errors
        about the image come back in the outcome; anything else raises."""
        endpoint = request.url.path
        if upload.error is not None:
            self._count_rejected(endpoint, upload.error)
            return _Outcome(error=upload.error)
        try:
            decoded, tensor, decode_s, preprocess_s = await anyio.to_thread.run_sync(
                self._prepare, served, upload.data, limiter=self._decode_slots
            )
        except errors.ImageIQError as e:
            if e.status >= 500:
                raise
            self._count_rejected(endpoint, e)
            return _Outcome(error=e)
        m = metrics()
        labels = (served.model.name, served.model.version)
        m.decode_seconds.labels(endpoint).observe(decode_s)
        m.preprocess_seconds.labels(*labels).observe(preprocess_s)
        queued = time.perf_counter()
        try:
            out = await served.batcher(tensor)
        except errors.Overloaded as e:
            return _Outcome(error=e)
        done = time.perf_counter()
        batches = request.scope.setdefault("imageiq.batch_sizes", [])
        batches.append(out.batch_size)
        note(request.scope, batch_sizes=batches)
        classifier = served.runner.classifier
        prediction = classifier.postprocess(out.probabilities, top_k=params.top_k)[0]
        m.confidence.labels(*labels).observe(prediction.labels[0].score)
        shaped = PredictionOut(
            predictions=[
                ScoredLabelOut(label=s.label, score=s.score)
                for s in prediction.labels
                if s.score >= params.min_confidence
            ],
            attributes={
                head: ScoredLabelOut(label=s.label, score=s.score)
                for head, s in prediction.attributes.items()
            },
            image=ImageOut(
                sha256=hashlib.sha256(upload.data).hexdigest(),
                width=decoded.width,
                height=decoded.height,
                format=decoded.format,
                bytes=len(upload.data),
            ),
            batch_size=out.batch_size,
            timing_ms=TimingOut(
                decode=_ms(decode_s),
                preprocess=_ms(preprocess_s),
                queue=_ms(max(0.0, done - queued - out.inference_s)),
                inference=_ms(out.inference_s),
                total=0.0,
            ),
        )
        m.postprocess_seconds.labels(*labels).observe(time.perf_counter() - done)
        shaped.timing_ms.total = _ms(time.perf_counter() - started)
        return _Outcome(prediction=shaped)

    def _prepare(
        self, served: ServedModel, data: bytes
    ) -> tuple[DecodedImage, torch.Tensor, float, float]:
        classifier = served.runner.classifier
        started = time.perf_counter()
        decoded = classifier.decode(
            data, max_pixels=self.settings.max_image_pixels, draft=self.settings.jpeg_draft
        )
        done = time.perf_counter()
        tensor = classifier.prepare(decoded.image)
        return decoded, tensor, done - started, time.perf_counter() - done

    @staticmethod
    def _count_rejected(endpoint: str, error: errors.ImageIQError) -> None:
        if error.status < 500:
            metrics().images_rejected.labels(endpoint, error.code).inc()


def _ref(served: ServedModel) -> ModelRefOut:
    return ModelRefOut(name=served.model.name, version=served.model.version)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


# bentoml.service turns the class into a Service (mypy still sees the class).
ImageClassifier.models.extend(_declared_models())  # type: ignore[attr-defined]
ImageClassifier.add_asgi_middleware(EnvelopeOutsideApi)  # type: ignore[attr-defined]
install_error_handlers(api)  # after the class views, so its catch-all route comes last
