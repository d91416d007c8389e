"""ImageIQ's BentoML service: a thin HTTP layer over :mod:`imageiq.inference`.

Request path: ``POST /v1/classify`` (FastAPI, mounted in the service) reads and checks the
upload, decodes and preprocesses it in a worker thread into a uint8 tensor, and sends that
tensor to ``/internal/infer``, a ``batchable=True`` BentoML API. BentoML's adaptive-batching
dispatcher merges concurrent requests into one batch, which runs on the model's dedicated
thread; the probabilities come back and are shaped into the response.

Run: ``bentoml serve bentos.service:ImageClassifier`` (``make serve`` does it for you).
"""

from __future__ import annotations

import logging
import time
from http import HTTPStatus

import anyio
import bentoml
import httpx
import torch
from bentoml.exceptions import BentoMLException
from fastapi import FastAPI, File, Form, Request, UploadFile
from starlette.types import ASGIApp

import imageiq
from bentos.http import INNER_APP_KEY, InnerAppHandle, RequestGuard, install_error_handlers
from bentos.schemas import (
    ClassifyResponse,
    EncodedTensor,
    ErrorResponse,
    InferResult,
    ModelRefOut,
    ScoredLabelOut,
)
from imageiq import errors
from imageiq.images import decode_image
from imageiq.inference import Prediction
from imageiq.metrics import metrics
from imageiq.registry import get_model
from imageiq.runner import ModelRunner
from imageiq.settings import Settings

log = logging.getLogger("imageiq.service")
# BentoML configures its own loggers only; let ImageIQ's INFO records (model ready, ...) through.
logging.getLogger("imageiq").setLevel(logging.INFO)

SETTINGS = Settings()
# Room for the multipart envelope and the form fields around the image.
_MAX_BODY = SETTINGS.max_image_bytes + 64 * 1024
_ERRORS = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in [
        (400, "Malformed request or empty image."),
        (413, "Image over the byte or pixel limit."),
        (415, "Not multipart/form-data, or not an image in a supported format."),
        (422, "Missing `image`, invalid parameter, or corrupt image data."),
        (503, "Model not ready yet, or the server is overloaded (see Retry-After)."),
    ]
}

api = FastAPI(
    title="ImageIQ",
    version=imageiq.__version__,
    description='Image classification. Errors: `{"error": {code, message, request_id}}`.',
)
api.add_middleware(
    RequestGuard,
    max_body_bytes=_MAX_BODY,
    max_in_flight=SETTINGS.max_in_flight,
    timeout_s=SETTINGS.request_timeout_s,
)

# Resolve the served model now ("latest" -> a concrete version): a store without it stops
# start-up here, with a message that says how to get one.
SERVED = get_model(SETTINGS.model_tag)


@bentoml.service(
    name="imageiq",
    workers=1,
    # BentoML's own deadline sits behind RequestGuard's, which answers in the error envelope.
    traffic={"timeout": SETTINGS.request_timeout_s + 10},
)
@bentoml.asgi_app(api, path="/v1")
class ImageClassifier:
    """Classifies images with a registered ImageIQ model."""

    # Declared so `bentoml build` packages the served model with the bento.
    model_ref = bentoml.models.BentoModel(SERVED.tag)

    def __init__(self) -> None:
        self.settings = SETTINGS
        self.model_name, self.model_version = SERVED.name, SERVED.version
        metrics()  # register every metric now, before worker threads race to
        # The weights load and warm up in the background; /readyz tells when.
        self.runner = ModelRunner(
            tag=SERVED.tag,
            device=SETTINGS.device,
            threads=SETTINGS.torch_threads or SETTINGS.cpu_count,
            warmup_batch_size=SETTINGS.warmup_batch_size,
        )
        self._decode_slots = anyio.CapacityLimiter(
            SETTINGS.decode_concurrency or SETTINGS.cpu_count
        )
        self._labels = (self.model_name, self.model_version)
        self._batch_client: httpx.AsyncClient | None = None
        log.info("serving %s (loading in the background)", SERVED.tag)

    def __is_ready__(self) -> bool:
        ready = self.runner.ready
        metrics().model_ready.labels(*self._labels).set(1 if ready else 0)
        return ready

    def __is_alive__(self) -> bool:
        return self.runner.state != "failed"

    @bentoml.on_shutdown
    async def shutdown(self) -> None:
        if self._batch_client is not None:
            await self._batch_client.aclose()
        self.runner.close()

    @bentoml.api(
        route="/internal/infer",
        batchable=True,
        max_batch_size=SETTINGS.max_batch_size,
        max_latency_ms=SETTINGS.max_latency_ms,
    )
    async def infer(self, tensors: list[EncodedTensor]) -> list[InferResult]:
        """Batched inference on preprocessed uint8 tensors (the queue behind /v1/classify).

        Each item is the model's input shape, uint8 CHW, base64. A malformed item gets an
        ``error`` result; the others in the same batch are unaffected.
        """
        if not self.runner.ready:
            raise BentoMLException("model is not ready", error_code=HTTPStatus.SERVICE_UNAVAILABLE)
        expected = self.runner.classifier.input_shape
        results: list[InferResult] = [InferResult() for _ in tensors]
        rows: list[int] = []
        batch: list[torch.Tensor] = []
        for i, item in enumerate(tensors):
            try:
                batch.append(item.to_tensor(expected))
                rows.append(i)
            except ValueError as e:
                results[i] = InferResult(error=str(e))
        if batch:
            started = time.perf_counter()
            probs = await self.runner.predict_proba(torch.stack(batch))
            m = metrics()
            m.inference_seconds.labels(*self._labels).observe(time.perf_counter() - started)
            m.batch_size.labels(*self._labels).observe(len(batch))
            for row, i in enumerate(rows):
                results[i] = InferResult(
                    probabilities={head: p[row].tolist() for head, p in probs.items()}
                )
        return results

    @api.post(
        "/classify",
        response_model=ClassifyResponse,
        responses=_ERRORS,  # type: ignore[arg-type]
        summary="Classify one image",
    )
    async def classify(
        self,
        request: Request,
        image: UploadFile = File(
            description="The image: JPEG, PNG, WebP, GIF (first frame), BMP or TIFF."
        ),
        top_k: int = Form(
            SETTINGS.default_top_k, ge=1, le=100, description="How many labels to return."
        ),
    ) -> ClassifyResponse:
        """Top-k labels with softmax scores, best first, from the served model."""
        if not self.runner.ready:
            raise errors.ModelNotReady(
                f"Model {self.model_name}:{self.model_version} is {self.runner.state}"
                + (f" ({self.runner.error})" if self.runner.error else "")
                + "."
            )
        data = await _read_upload(image, self.settings.max_image_bytes)
        tensor = await anyio.to_thread.run_sync(self._prepare, data, limiter=self._decode_slots)
        result = await self._infer_one(request.scope[INNER_APP_KEY], tensor)
        started = time.perf_counter()
        probs = {head: torch.tensor([p]) for head, p in (result.probabilities or {}).items()}
        prediction = self.runner.classifier.postprocess(probs, top_k=top_k)[0]
        response = self._response(prediction)
        metrics().postprocess_seconds.labels(*self._labels).observe(time.perf_counter() - started)
        return response

    def _prepare(self, data: bytes) -> torch.Tensor:
        started = time.perf_counter()
        image = decode_image(data, max_pixels=self.settings.max_image_pixels)
        decoded = time.perf_counter()
        tensor = self.runner.classifier.prepare(image)
        m = metrics()
        m.decode_seconds.labels("/v1/classify").observe(decoded - started)
        m.preprocess_seconds.labels(*self._labels).observe(time.perf_counter() - decoded)
        return tensor

    async def _infer_one(self, app: ASGIApp, tensor: torch.Tensor) -> InferResult:
        """Queue one tensor on the batchable endpoint, in-process, and wait for its result."""
        if self._batch_client is None:  # no await before the assignment: one client only
            # No timeout here: httpx's ASGI transport has none; RequestGuard's deadline rules.
            self._batch_client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://imageiq.internal"
            )
        body = {"tensors": [EncodedTensor.from_tensor(tensor).model_dump()]}
        resp = await self._batch_client.post("/internal/infer", json=body)
        if resp.status_code == HTTPStatus.SERVICE_UNAVAILABLE:
            if not self.runner.ready:
                raise errors.ModelNotReady(f"Model {SERVED.tag} is {self.runner.state}.")
            raise errors.Overloaded("The server is overloaded; retry shortly.")
        if resp.status_code != HTTPStatus.OK:
            raise RuntimeError(f"batching endpoint answered {resp.status_code}: {resp.text[:200]}")
        result = InferResult.model_validate(resp.json()[0])
        if result.error or result.probabilities is None:
            raise RuntimeError(f"batching endpoint refused our own tensor: {result.error}")
        return result

    def _response(self, prediction: Prediction) -> ClassifyResponse:
        return ClassifyResponse(
            model=ModelRefOut(name=self.model_name, version=self.model_version),
            predictions=[ScoredLabelOut(label=s.label, score=s.score) for s in prediction.labels],
        )


# bentoml.service turns the class into a Service (mypy still sees the class).
ImageClassifier.add_asgi_middleware(InnerAppHandle)  # type: ignore[attr-defined]
install_error_handlers(api)  # after the class views, so its catch-all route comes last


async def _read_upload(upload: UploadFile, limit: int) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise errors.PayloadTooLarge(
            f"The image is larger than {limit} bytes.", details={"max_bytes": limit}
        )
    if not data:
        raise errors.EmptyImage("The uploaded image is empty (0 bytes).")
    return data
