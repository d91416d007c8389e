"""The Open Inference Protocol (v2) over REST, mounted at ``/v2`` beside ``/v1``.

KServe's and Triton's clients (``kserve.InferenceRESTClient``, ``tritonclient.http``) work
against it unchanged. The tensors are :mod:`imageiq.tensors`'; the inference is the same
core call as ``/v1/classify/batch`` (:class:`imageiq.classify.Classification`: cache,
decode, batching queue, records, metrics), behind the same guard and gate (one
:class:`bentos.http.Door` for both mounts: keys, rate limits per image, body caps,
deadlines). Errors are the protocol's ``{"error": "<message>"}``, with ``code`` and
``request_id`` beside it and the same status codes as ``/v1``.

- ``GET /v2``: server metadata; ``GET /v2/health/live`` and ``/v2/health/ready`` (no key)
- ``GET /v2/models/{name}[/versions/{version}]``: model metadata; ``.../ready``
- ``POST /v2/models/{name}[/versions/{version}]/infer``
"""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

import imageiq
from bentos import core_call
from bentos.auth import charge, require
from bentos.http import Door, RequestGuard, install_error_handlers
from bentos.openapi import ADMITTED, BODY, error_responses, inline_schema
from bentos.state import ServiceState, state
from bentos.v2_schemas import (
    InferResponse,
    Live,
    ModelMetadata,
    ModelReady,
    Ready,
    ServerMetadata,
    V2Error,
)
from imageiq import errors, tensors
from imageiq.classify import Classified, count_rejected
from imageiq.keys import Principal
from imageiq.pool import ServedModel
from imageiq.settings import Settings

ENDPOINT = "/v2/infer"  # the core's metrics label for images that came this way
HEADER_LENGTH = "Inference-Header-Content-Length"
# Request bodies up to this size are parsed on the event loop; larger ones in a thread.
_INLINE_BYTES = 256 * 1024

router = APIRouter(responses=error_responses(*ADMITTED, model=V2Error))
_MODEL_ERRORS = error_responses(403, 404, model=V2Error)
_INFER_ERRORS = error_responses(*BODY, 403, 404, 413, 415, model=V2Error)
# The body is read by hand (JSON, or JSON then binary tensors): declared here.
_INFER_BODY: dict[str, Any] = {
    "parameters": [
        {
            "name": HEADER_LENGTH,
            "in": "header",
            "required": False,
            "description": "The binary extension: the size of the JSON at the body's start.",
            "schema": {"type": "integer", "minimum": 1},
        }
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": inline_schema(tensors.InferRequest)},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}
_INFER_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {
        "model": InferResponse,
        "description": "The outputs; with binary outputs, JSON then their bytes "
        f"(octet-stream, {HEADER_LENGTH} says where the JSON ends).",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    **_INFER_ERRORS,
}


def build_v2(settings: Settings, door: Door) -> FastAPI:
    app = FastAPI(
        title="ImageIQ: Open Inference Protocol (v2)",
        version=imageiq.__version__,
        description="KServe's and Triton's v2 REST protocol over the ImageIQ models.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs_enabled else None,
    )
    app.add_middleware(RequestGuard, settings=settings, door=door, form="v2")
    app.include_router(router)
    install_error_handlers(app, form="v2")
    return app


@router.get("/", summary="Server metadata", response_model=ServerMetadata)
async def server_metadata() -> dict[str, object]:
    return {
        "name": "imageiq",
        "version": imageiq.__version__,
        "extensions": list(tensors.EXTENSIONS),
    }


@router.get("/health/live", summary="Server live", response_model=Live)
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get(
    "/health/ready",
    summary="Server ready",
    response_model=Ready,
    responses={503: {"model": Ready | V2Error, "description": "Not ready (or overloaded)."}},
)
async def ready(request: Request) -> JSONResponse:
    """200 once every served model is loaded and warm; 503 before (as KServe answers)."""
    pool = state(request).pool
    return JSONResponse({"ready": pool.ready}, status_code=200 if pool.ready else 503)


@router.get(
    "/models/{name}",
    summary="Model metadata",
    response_model=ModelMetadata,
    responses=_MODEL_ERRORS,
)
async def model_metadata(
    request: Request, name: str, _: Principal = Depends(require("classify"))
) -> dict[str, object]:
    return _metadata(state(request), name, None)


@router.get(
    "/models/{name}/versions/{version}",
    summary="Model metadata (a version)",
    response_model=ModelMetadata,
    responses=_MODEL_ERRORS,
)
async def version_metadata(
    request: Request, name: str, version: str, _: Principal = Depends(require("classify"))
) -> dict[str, object]:
    return _metadata(state(request), name, version)


@router.get(
    "/models/{name}/ready",
    summary="Model ready",
    response_model=ModelReady,
    responses=_MODEL_ERRORS,
)
async def model_ready(
    request: Request, name: str, _: Principal = Depends(require("classify"))
) -> dict[str, object]:
    """200 when the model is served and ready, 503 while it loads, 404 if not served."""
    _resolve(state(request), name, None)
    return {"name": name, "ready": True}


@router.get(
    "/models/{name}/versions/{version}/ready",
    summary="Model ready (a version)",
    response_model=ModelReady,
    responses=_MODEL_ERRORS,
)
async def version_ready(
    request: Request, name: str, version: str, _: Principal = Depends(require("classify"))
) -> dict[str, object]:
    _resolve(state(request), name, version)
    return {"name": name, "ready": True}


@router.post(
    "/models/{name}/infer",
    summary="Inference",
    response_model=None,
    responses=_INFER_ANSWER,
    openapi_extra=_INFER_BODY,
)
async def infer(
    request: Request, name: str, principal: Principal = Depends(require("classify"))
) -> Response:
    return await _infer(request, name, None, principal)


@router.post(
    "/models/{name}/versions/{version}/infer",
    summary="Inference (a version)",
    response_model=None,
    responses=_INFER_ANSWER,
    openapi_extra=_INFER_BODY,
)
async def infer_version(
    request: Request,
    name: str,
    version: str,
    principal: Principal = Depends(require("classify")),
) -> Response:
    return await _infer(request, name, version, principal)


def _resolve(s: ServiceState, name: str, version: str | None) -> ServedModel:
    """The served model: by name (the active version, or a canary's share of the
    requests, as ``/v1``'s ``model=name``), or that exact version."""
    return s.pool.resolve(f"{name}:{version}" if version is not None else name)


def _metadata(s: ServiceState, name: str, version: str | None) -> dict[str, object]:
    served = _resolve(s, name, version)
    versions = [m.model.version for m in s.pool.models.values() if m.model.name == name]
    return tensors.model_metadata(
        served.runner.io, name=name, versions=[version] if version else versions
    )


async def _infer(
    request: Request, name: str, version: str | None, principal: Principal
) -> Response:
    started = time.perf_counter()
    s = state(request)
    served = _resolve(s, name, version)
    body = await request.body()
    header_length = request.headers.get(HEADER_LENGTH)
    io = served.runner.io

    def read() -> tuple[tensors.InferRequest, list[bytes | tensors.Pixels]]:
        parsed, binary = tensors.parse_request(
            body, header_length, max_values=tensors.max_json_values(io, s.limits.max_images)
        )
        images = tensors.read_images(
            parsed,
            binary,
            io,
            max_images=s.limits.max_images,
            max_image_bytes=s.limits.max_image_bytes,
        )
        return parsed, images

    try:
        parsed, images = (
            read() if len(body) <= _INLINE_BYTES else await anyio.to_thread.run_sync(read)
        )
    except errors.ImageIQError as e:
        count_rejected(ENDPOINT, e)
        raise
    # Rate limits charge per image, as the batch endpoint: the request paid for one.
    await charge(request, principal, cost=len(images) - 1, paid=1)
    results = await core_call.classify(
        request.scope,
        s,
        served,
        images,
        top_k=s.limits.default_top_k,
        full=True,
        principal=principal,
        endpoint=ENDPOINT,
        started=started,
    )
    classified: list[Classified] = []
    for i, result in enumerate(results):
        if result.error is not None:  # the protocol answers a batch whole, or not at all
            failed = result.error
            raise type(failed)(
                f"Image {i} of the request: {failed.message}",
                details={**failed.details, "index": i},
                retry_after=failed.retry_after,
            )
        assert result.classified is not None
        classified.append(result.classified)
    answer, binary = tensors.build_response(
        parsed, classified, io, model_name=served.model.name, model_version=served.model.version
    )
    if not binary:
        return JSONResponse(answer)
    head = json.dumps(answer, separators=(",", ":")).encode()
    return Response(
        head + binary,
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(head))},
    )
