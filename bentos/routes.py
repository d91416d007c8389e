"""The classification routes of ``/v1``: each maps a request to one call of the core
(:class:`imageiq.classify.Classification`) and its results to a response body.

What the routes share (settings, model pool, backends, core) is :class:`bentos.state.ServiceState`,
built by the service at start-up.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from bentos import core_call
from bentos.answers import batch_item, prediction_fields
from bentos.auth import charge, require
from bentos.http import note
from bentos.inputs import read_batch, read_classify
from bentos.openapi import ADMITTED, BODY, IMAGE_TYPES, error_responses, inline_schema
from bentos.schemas import (
    BatchJSON,
    BatchResponse,
    CategoriesResponse,
    ClassifyJSON,
    ClassifyParams,
    ClassifyResponse,
    ModelOut,
    ModelsResponse,
)
from bentos.state import ServiceState, state
from imageiq import errors
from imageiq.classify import MAX_TOP_K, ImageResult, count_rejected
from imageiq.keys import Principal
from imageiq.pool import ServedModel
from imageiq.settings import MODEL_TAG

router = APIRouter(responses=error_responses(*ADMITTED))


_CLASSIFY_ERRORS = error_responses(
    403,
    404,
    413,
    415,
    503,
    *BODY,
    s400="Malformed multipart or JSON, or an empty image.",
    s404="The model asked for is not served.",
    s413="The body, an image (bytes or pixels) or the number of images is over its limit.",
    s415="Not multipart/form-data or JSON, or not an image in a supported format.",
    s422="Missing image, invalid option (query, field or key) or base64, or corrupt image data.",
    s503="A model not ready yet, the server overloaded or still starting (see Retry-After).",
)


async def query_options(
    top_k: int | None = Query(
        None,
        ge=1,
        le=MAX_TOP_K,
        description="How many labels to return at most (default: the server's, 5).",
    ),
    min_confidence: float | None = Query(
        None, ge=0.0, le=1.0, description="Leave out labels scored below this (default 0)."
    ),
    model: str | None = Query(
        None,
        pattern=MODEL_TAG,
        description="A served model: name, name:version or name:latest (default: the active one).",
    ),
    store: bool | None = Query(None, description="Keep the image (default false)."),
) -> None:
    """The options a classify route takes in the query string, declared and checked here
    (:mod:`bentos.inputs` reads them with the body; a field or key of the same name wins)."""


def _request_body(json_model: type[ClassifyJSON | BatchJSON], file_field: str) -> dict[str, Any]:
    """OpenAPI request body: the endpoints read multipart or JSON themselves."""
    options = ClassifyParams.model_json_schema()["properties"]
    files = (
        {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1}
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
                        "additionalProperties": False,
                    },
                    "encoding": {file_field: {"contentType": ", ".join(IMAGE_TYPES)}},
                },
                "application/json": {"schema": inline_schema(json_model)},
            },
        }
    }


def _model_ref(served: ServedModel) -> dict[str, str]:
    return {"name": served.model.name, "version": served.model.version}


async def _classify(
    request: Request,
    s: ServiceState,
    params: ClassifyParams,
    images: list[bytes],
    *,
    principal: Principal,
    endpoint: str,
    started: float,
) -> tuple[ServedModel, list[ImageResult]]:
    """The one core call of a classify route: the options checked, the model resolved (and
    noted for the access log with the batch sizes its images ran in)."""
    s.core.check(top_k=params.top_k, min_confidence=params.min_confidence, store=params.store)
    served = s.pool.resolve(params.model)
    results = await core_call.classify(
        request.scope,
        s,
        served,
        images,
        top_k=params.top_k,
        min_confidence=params.min_confidence,
        store=params.store,
        principal=principal,
        endpoint=endpoint,
        started=started,
    )
    return served, results


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    response_model_exclude_none=True,
    responses=_CLASSIFY_ERRORS,
    summary="Classify one image",
    openapi_extra=_request_body(ClassifyJSON, "image"),
    dependencies=[Depends(query_options)],
)
async def classify(
    request: Request, principal: Principal = Depends(require("classify"))
) -> ClassifyResponse:
    """Top-k labels with softmax scores (best first), the model's attributes, facts
    about the image and where the time went. Multipart field ``image``, or JSON
    ``image_b64``; options ``top_k``, ``min_confidence``, ``model``."""
    started = time.perf_counter()
    s = state(request)
    endpoint = "/v1/classify"
    try:
        params, upload = await read_classify(request, s.limits)
    except errors.ImageIQError as e:
        count_rejected(endpoint, e)
        raise
    served, (result,) = await _classify(
        request, s, params, [upload.data], principal=principal, endpoint=endpoint, started=started
    )
    if result.error is not None:
        raise result.error
    assert result.classified is not None
    return ClassifyResponse.model_validate(
        {"model": _model_ref(served), **prediction_fields(result.classified)}
    )


@router.post(
    "/classify/batch",
    response_model=BatchResponse,
    response_model_exclude_none=True,
    responses=_CLASSIFY_ERRORS,
    summary="Classify several images in one request",
    openapi_extra=_request_body(BatchJSON, "images"),
    dependencies=[Depends(query_options)],
)
async def classify_batch(
    request: Request, principal: Principal = Depends(require("classify"))
) -> BatchResponse:
    """One result per image, in order. A bad image gets an ``error`` in its result
    (with the status and code /v1/classify would answer) and does not fail the others.
    Repeated multipart fields ``images``, or JSON ``images_b64``."""
    started = time.perf_counter()
    s = state(request)
    endpoint = "/v1/classify/batch"
    params, uploads = await read_batch(request, s.limits)
    note(request.scope, images=len(uploads))
    # Rate limits charge per image: the request paid for one, these are the others.
    await charge(request, principal, cost=len(uploads) - 1, paid=1)
    readable = [i for i, u in enumerate(uploads) if u.error is None]
    for upload in uploads:
        if upload.error is not None:
            count_rejected(endpoint, upload.error)
    served, classified = await _classify(
        request,
        s,
        params,
        [uploads[i].data for i in readable],
        principal=principal,
        endpoint=endpoint,
        started=started,
    )
    results = [ImageResult(error=u.error) for u in uploads]
    for i, result in zip(readable, classified, strict=True):
        results[i] = result
    pairs = enumerate(zip(uploads, results, strict=True))
    items = [batch_item(i, upload.filename, result) for i, (upload, result) in pairs]
    failed = sum(1 for r in results if r.error is not None)
    return BatchResponse.model_validate(
        {
            "model": _model_ref(served),
            "results": items,
            "succeeded": len(results) - failed,
            "failed": failed,
        }
    )


@router.get(
    "/categories",
    response_model=CategoriesResponse,
    responses=error_responses(403, 404, 422, s404="The model asked for is not served."),
    summary="Labels and attribute heads of a model",
)
async def categories(
    request: Request,
    principal: Principal = Depends(require("classify")),
    model: str | None = Query(
        None, pattern=MODEL_TAG, description="A served model (default: the active one)."
    ),
) -> CategoriesResponse:
    """Every label the model predicts, in output order, and its attribute heads."""
    served = state(request).pool.resolve(model)
    note(request.scope, model=served.tag)
    card = served.model.card
    return CategoriesResponse.model_validate(
        {"model": _model_ref(served), "labels": card.labels, "attributes": card.heads}
    )


@router.get(
    "/models",
    response_model=ModelsResponse,
    responses=error_responses(403),
    summary="The served models",
)
async def list_models(
    request: Request, principal: Principal = Depends(require("classify"))
) -> ModelsResponse:
    """Every served model version: architecture, labels, training metrics, whether it is
    the active one, and its load state (loading, ready, failed); whether the service is
    ready, and the state of each dependency (database, cache, object store, records)."""
    s = state(request)
    pool = s.pool
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
        dependencies=s.backends.describe(),
    )
