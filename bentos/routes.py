"""The classification routes of ``/v1``: each maps a request to one call of the core
(:class:`imageiq.classify.Classification`) and its results to a response body.

What the routes share (settings, model pool, backends, core) is :class:`bentos.state.ServiceState`,
built by the service at start-up.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from bentos.answers import batch_item, prediction_fields
from bentos.auth import charge, require
from bentos.http import note
from bentos.inputs import read_batch, read_classify
from bentos.schemas import (
    BatchJSON,
    BatchResponse,
    CategoriesResponse,
    ClassifyJSON,
    ClassifyParams,
    ClassifyResponse,
    ErrorResponse,
    ModelOut,
    ModelsResponse,
)
from bentos.state import ServiceState, state
from imageiq import errors
from imageiq.classify import ImageResult, count_rejected
from imageiq.keys import Principal
from imageiq.pool import ServedModel
from imageiq.settings import MODEL_TAG

router = APIRouter()


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "Malformed request (bad multipart or JSON) or empty image.",
        401: "Missing, unknown or revoked API key.",
        403: "The API key lacks the scope this endpoint needs.",
        404: "The model asked for is not served.",
        413: "Image over the byte or pixel limit, or too many images.",
        415: "Not multipart/form-data or JSON, or not an image in a supported format.",
        422: "Missing image, invalid parameter or base64, or corrupt image data.",
        429: "The API key's rate limit (one per image) or its requests in progress are "
        "exceeded, or its address failed to authenticate too often (see Retry-After).",
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
    note(request.scope, model=served.tag)
    try:
        results = await s.core.classify(
            served,
            images,
            top_k=params.top_k,
            min_confidence=params.min_confidence,
            store=params.store,
            principal=principal,
            endpoint=endpoint,
            started=started,
        )
    except Exception as e:
        # A canary is judged on its server errors too (not on capacity refusals or the
        # client's mistakes).
        status = e.status if isinstance(e, errors.ImageIQError) else 500
        if s.rollouts is not None and status >= 500 and status != 503:
            s.rollouts.note_error(served.tag)
        raise
    sizes = [r.classified.batch_size for r in results if r.classified and not r.classified.cached]
    if sizes:
        note(request.scope, batch_sizes=sizes)
    return served, results


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    response_model_exclude_none=True,
    responses=_errors(400, 401, 403, 404, 413, 415, 422, 429, 503),
    summary="Classify one image",
    openapi_extra=_request_body(ClassifyJSON, "image"),
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
    responses=_errors(400, 401, 403, 404, 413, 415, 422, 429, 503),
    summary="Classify several images in one request",
    openapi_extra=_request_body(BatchJSON, "images"),
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
    responses=_errors(404, 503),
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


@router.get("/models", response_model=ModelsResponse, summary="The served models")
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
