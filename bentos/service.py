"""ImageIQ's BentoML service: a thin HTTP layer over :mod:`imageiq`'s pure core.

Request path: an endpoint of the FastAPI app mounted at ``/v1`` reads the request
(:mod:`bentos.inputs`), picks the served model (:class:`imageiq.pool.ModelPool`), decodes and
preprocesses each image in a worker thread into a uint8 tensor, and awaits that model's
adaptive-batching queue (:class:`imageiq.batching.Batcher`, continuous batching), which
runs merged batches on the one inference thread. The probabilities come back and are shaped
into the response.

Run: ``bentoml serve bentos.service:ImageClassifier`` (``make serve`` does it for you).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import anyio
import bentoml
from fastapi import Depends, FastAPI, Query, Request
from sqlalchemy.exc import SQLAlchemyError

import imageiq
from bentos.auth import require
from bentos.catalog import router as catalog_router
from bentos.classify import Outcome, Pipeline, count_rejected
from bentos.http import EnvelopeOutsideApi, RequestGuard, install_error_handlers, note
from bentos.inputs import Limits, read_batch, read_classify
from bentos.readiness import ReadinessDetail, readiness
from bentos.schemas import (
    BatchItemOut,
    BatchJSON,
    BatchResponse,
    CategoriesResponse,
    ClassifyJSON,
    ClassifyParams,
    ClassifyResponse,
    ErrorResponse,
    ItemError,
    ModelOut,
    ModelRefOut,
    ModelsResponse,
)
from imageiq import catalog, errors
from imageiq.activation import ActivationSync
from imageiq.backends import Backends, open_database
from imageiq.db.engine import check_migrated, is_transient
from imageiq.keys import Principal
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
        401: "Missing, unknown or revoked API key.",
        403: "The API key lacks the scope this endpoint needs.",
        404: "The model asked for is not served.",
        413: "Image over the byte or pixel limit, or too many images.",
        415: "Not multipart/form-data or JSON, or not an image in a supported format.",
        422: "Missing image, invalid parameter or base64, or corrupt image data.",
        429: "The API key's rate limit is exceeded (see Retry-After).",
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
api.include_router(catalog_router)


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


@bentoml.service(
    name="imageiq",
    workers=1,
    # BentoML's own deadline sits behind RequestGuard's, which answers in the error envelope.
    traffic={"timeout": SETTINGS.request_timeout_s + 10},
    # RequestGuard writes one `imageiq.access` record per /v1 request (with the request id,
    # key, model and error code); BentoML's own access line would be a second, poorer one.
    logging={"access": {"enabled": False}},
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
        self._watcher = ConfigWatcher(self.pool, load=Settings)
        self._tasks: set[asyncio.Task[None]] = set()
        try:
            self.backends = Backends.open(SETTINGS)
        except errors.ImageIQError as e:
            log.critical("cannot start: %s", e.message)
            raise SystemExit(f"imageiq cannot start: {e.message}") from e
        self.pipeline = Pipeline(SETTINGS, self.backends)
        self._activations = ActivationSync(
            self.pool, self.backends.engine, database=self.backends.database
        )
        api.state.backends, api.state.pool = self.backends, self.pool
        readiness.bind(self.pool, self.backends, self.__is_ready__)
        if not SETTINGS.auth_enabled:
            for _ in range(3):
                log.warning(
                    "AUTHENTICATION IS OFF (IMAGEIQ_AUTH_ENABLED=false): anyone who can reach "
                    "this port may classify, read, label and delete. For a local demo only."
                )
        log.info("serving %s (loading in the background)", list(SETTINGS.models))

    @bentoml.on_deployment
    def check_database() -> None:
        """Once, in the serving process before any worker starts: an unmigrated or
        unreachable database stops ``bentoml serve`` with the reason, instead of workers
        failing one after the other."""
        engine = open_database(SETTINGS)
        try:
            check_migrated(engine)
        except errors.ImageIQError as e:
            log.critical("cannot start: %s", e.message)
            raise SystemExit(f"imageiq cannot start: {e.message}") from e
        finally:
            engine.dispose()

    @bentoml.on_startup
    async def start_watching(self) -> None:
        self.backends.start()
        loop = asyncio.get_running_loop()
        self._tasks.add(loop.create_task(self._watcher.run()))
        self._tasks.add(loop.create_task(self._activations.run(SETTINGS.reload_interval_s)))
        self._tasks.add(loop.create_task(self._record_models()))

    async def _record_models(self) -> None:
        served = [
            (m.model.name, m.model.version, dict(m.model.card.metrics))
            for m in self.pool.models.values()
        ]
        try:
            await anyio.to_thread.run_sync(catalog.record_models, self.backends.engine, served)
        except SQLAlchemyError as e:
            if not is_transient(e):
                raise
            self.backends.database.failed(e)

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
        # Last: the records of the requests that just finished are flushed (or spooled).
        await anyio.to_thread.run_sync(self.backends.close)

    # --- endpoints ------------------------------------------------------------------------
    @api.post(
        "/classify",
        response_model=ClassifyResponse,
        response_model_exclude_none=True,
        responses=_errors(400, 404, 413, 415, 422, 503),
        summary="Classify one image",
        openapi_extra=_request_body(ClassifyJSON, "image"),
    )
    async def classify(
        self, request: Request, principal: Principal = Depends(require("classify"))
    ) -> ClassifyResponse:
        """Top-k labels with softmax scores (best first), the model's attributes, facts
        about the image and where the time went. Multipart field ``image``, or JSON
        ``image_b64``; options ``top_k``, ``min_confidence``, ``model``."""
        started = time.perf_counter()
        try:
            params, upload = await read_classify(request, LIMITS)
        except errors.ImageIQError as e:
            count_rejected("/v1/classify", e)
            raise
        self.pipeline.check_store(params)
        served = self.pool.resolve(params.model)
        note(request.scope, model=served.tag)
        with served.use():
            outcome = await self.pipeline.classify_one(
                served, upload, params, started, request, principal
            )
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
    async def classify_batch(
        self, request: Request, principal: Principal = Depends(require("classify"))
    ) -> BatchResponse:
        """One result per image, in order. A bad image gets an ``error`` in its result
        (with the status and code /v1/classify would answer) and does not fail the others.
        Repeated multipart fields ``images``, or JSON ``images_b64``."""
        started = time.perf_counter()
        params, uploads = await read_batch(request, LIMITS)
        self.pipeline.check_store(params)
        served = self.pool.resolve(params.model)
        note(request.scope, model=served.tag, images=len(uploads))
        outcomes: list[Outcome] = [Outcome() for _ in uploads]

        async def run(i: int) -> None:
            outcomes[i] = await self.pipeline.classify_one(
                served, uploads[i], params, started, request, principal
            )

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
        principal: Principal = Depends(require("classify")),
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
    async def list_models(
        self, principal: Principal = Depends(require("classify"))
    ) -> ModelsResponse:
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
            dependencies=self.backends.describe(),
        )


def _ref(served: ServedModel) -> ModelRefOut:
    return ModelRefOut(name=served.model.name, version=served.model.version)


# bentoml.service turns the class into a Service (mypy still sees the class).
ImageClassifier.models.extend(_declared_models())  # type: ignore[attr-defined]
ImageClassifier.add_asgi_middleware(EnvelopeOutsideApi)  # type: ignore[attr-defined]
ImageClassifier.add_asgi_middleware(ReadinessDetail)  # type: ignore[attr-defined]
install_error_handlers(api)  # after the class views, so its catch-all route comes last
