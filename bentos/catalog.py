"""Stored images, feedback, statistics and model activation: the /v1 endpoints over the
metadata database (:mod:`imageiq.catalog`) and the object store.

Reading stored images and stats, and giving feedback, need the ``label`` scope; the admin
routes (deleting an image, activating a model) live under ``/admin/`` and need ``admin``,
so a public ingress can leave that prefix out. Every admin action writes its audit entry in
the transaction that makes the change. Database work runs in worker threads; a
database that is down answers 503 ``database_unavailable`` with ``Retry-After``.
"""

from __future__ import annotations

from typing import Any, Literal

import anyio
from fastapi import APIRouter, Depends, Path, Query, Request, Response

from bentos.admin_routes import router as admin_router
from bentos.admin_schemas import MODEL_NAME
from bentos.auth import require
from bentos.catalog_schemas import (
    CONTROL,
    MOMENT,
    MOMENT_EXAMPLES,
    SHA256,
    SURROGATE,
    ActivateIn,
    ActivateOut,
    DeletedOut,
    ImageDetailOut,
    ImagePage,
    LabelIn,
    LabelOut,
    StatsOut,
    parse_moment,
)
from bentos.dbcall import db_call
from bentos.http import note
from bentos.model_routes import router as model_router
from bentos.openapi import ADMITTED, BODY, IMAGE_TYPES, error_responses
from bentos.review_routes import router as review_router
from bentos.schemas import ModelRefOut
from bentos.state import state
from imageiq import catalog, errors
from imageiq.backends import Backends
from imageiq.keys import Principal
from imageiq.logs import client_request_id_var, request_id_var
from imageiq.pool import ModelPool
from imageiq.registry import get_model
from imageiq.settings import MODEL_TAG, TAG_PART

router = APIRouter(responses=error_responses(*ADMITTED))
router.include_router(review_router)
router.include_router(model_router)
router.include_router(admin_router)
ImageId = Path(pattern=SHA256, description="The image id: its sha256, 64 hex digits.")
_NO_IMAGE = "No image with this id is stored."
_MOMENT = "ISO 8601: a date (2024-03-10) or a date and time; no zone means UTC."


def _moment(description: str) -> Any:
    """A time in the query string: text, parsed by :func:`parse_moment` (never a number)."""
    return Query(
        None,
        max_length=40,
        pattern=MOMENT.pattern,
        description=description,
        examples=MOMENT_EXAMPLES,
    )


def _requests() -> dict[str, str | None]:
    """The server's id of the request being served, and the client's, for the records."""
    return {"request_id": request_id_var.get(), "client_request_id": client_request_id_var.get()}


def _backends(request: Request) -> Backends:
    return state(request).backends


def _pool(request: Request) -> ModelPool:
    return state(request).pool


@router.get(
    "/images",
    response_model=ImagePage,
    responses=error_responses(403, 422),
    summary="Stored images",
)
async def list_images(
    request: Request,
    principal: Principal = Depends(require("label")),
    label: str | None = Query(None, max_length=255, description="Given (true) label."),
    source: Literal["user", "admin", "model"] | None = Query(
        None, description="Has a label from this source (with `label`: that label from it)."
    ),
    attribute: str | None = Query(
        None,
        max_length=200,
        json_schema_extra={"pattern": r'^[^:"\\\x00-\x1f\x7f]{1,64}:[^\x00-\x1f\x7f]{1,64}$'},
        description="name:value: the image's effective value of an attribute (an admin's "
        "label beats a user's, which beats a model's; then the latest).",
        examples=["shiny:yes"],
    ),
    predicted_label: str | None = Query(None, max_length=255, description="Top-1 predicted."),
    min_confidence: float | None = Query(None, ge=0.0, le=1.0),
    max_confidence: float | None = Query(None, ge=0.0, le=1.0),
    model: str | None = Query(None, pattern=MODEL_TAG, description="name or name:version."),
    model_version: str | None = Query(None, pattern=rf"^{TAG_PART}$"),
    created_after: str | None = _moment(f"Stored at or after this time. {_MOMENT}"),
    created_before: str | None = _moment(f"Stored before this time. {_MOMENT}"),
    limit: int = Query(20, ge=1, le=100),
    offset: int = Query(0, ge=0, le=1_000_000),
) -> ImagePage:
    """Stored images, newest first, with their latest prediction and label. Prediction
    filters (predicted label, confidence range, model, version) match images that have one
    prediction meeting all of them; ``label`` and ``source`` one label meeting both."""
    for field, text in (("label", label), ("predicted_label", predicted_label)):
        if text is not None and (CONTROL.search(text) or SURROGATE.search(text)):
            raise errors.InvalidParameter(
                f"{field} must not contain control characters.", details={"field": field}
            )
    name, _, version = (model or "").partition(":")
    where = catalog.ImageFilter(
        label=label,
        label_source=source,
        attribute=_attribute(attribute),
        predicted_label=predicted_label,
        min_confidence=min_confidence,
        max_confidence=max_confidence,
        model_name=name or None,
        model_version=model_version or (version if version not in ("", "latest") else None),
        created_after=parse_moment("created_after", created_after),
        created_before=parse_moment("created_before", created_before),
    )
    items, total = await db_call(
        _backends(request), catalog.list_images, where, limit=limit, offset=offset
    )
    end = offset + len(items)
    return ImagePage.model_validate(
        {
            "items": items,
            "total": total,
            "limit": limit,
            "offset": offset,
            "next_offset": end if end < total else None,
        }
    )


@router.get(
    "/images/{image_id}",
    response_model=ImageDetailOut,
    responses=error_responses(403, 404, 422, s404=_NO_IMAGE),
    summary="A stored image",
)
async def get_image(
    request: Request,
    image_id: str = ImageId,
    principal: Principal = Depends(require("label")),
) -> ImageDetailOut:
    """Its metadata, latest predictions and every label given."""
    found = await db_call(_backends(request), catalog.get_image, image_id)
    return ImageDetailOut.model_validate(found)


@router.get(
    "/images/{image_id}/content",
    responses={
        **error_responses(403, 404, 422, s404=_NO_IMAGE),
        200: {
            "description": "The image's bytes, as uploaded, with their media type.",
            "content": {
                media: {"schema": {"type": "string", "format": "binary"}} for media in IMAGE_TYPES
            },
        },
    },
    response_class=Response,
    summary="A stored image's bytes",
)
async def get_image_content(
    request: Request,
    image_id: str = ImageId,
    principal: Principal = Depends(require("label")),
) -> Response:
    backends = _backends(request)
    image = await db_call(backends, catalog.find_image, image_id)
    if image is None:
        raise errors.ImageNotFound(f"No stored image {image_id}.")
    data = await anyio.to_thread.run_sync(backends.store.get, backends.store.key_for(image_id))
    return Response(data, media_type=image.content_type)


@router.post(
    "/images/{image_id}/labels",
    response_model=LabelOut,
    status_code=201,
    responses=error_responses(
        403,
        404,
        *BODY,
        s403="The API key lacks the label scope, or the admin scope a source other than user "
        "needs.",
        s404=_NO_IMAGE,
        s422="An invalid field, a label or attribute value no served model knows (without "
        "new_label), or neither a label nor attributes.",
    ),
    summary="Give feedback: an image's true label and attributes",
)
async def add_label(
    request: Request,
    body: LabelIn,
    image_id: str = ImageId,
    principal: Principal = Depends(require("label")),
) -> LabelOut:
    """The input of continuous retraining. The label and attribute values must be ones a
    served model knows, unless ``new_label`` is true (a new class)."""
    if body.label is None and not body.attributes:
        raise errors.InvalidParameter("Give a label, attributes, or both.")
    if body.source != "user" and not principal.allows("admin"):
        raise errors.Forbidden(f"Labels with source {body.source!r} need the admin scope.")
    _check_known(_pool(request), body)
    backends = _backends(request)
    if image_id in backends.recorder.pending_images():
        raise errors.DatabaseUnavailable(
            "The image is being stored (the database or store was briefly away); retry.",
            retry_after=2,
        )
    row = await db_call(
        backends,
        catalog.add_label,
        image_id,
        label=body.label,
        attributes=body.attributes,
        source=body.source,
        created_by=principal.key_id,
        **_requests(),
    )
    note(request.scope, image=image_id)
    return LabelOut(image=image_id, **row)


@router.delete(
    "/admin/images/{image_id}",
    response_model=DeletedOut,
    responses=error_responses(403, 404, 422, s404="Nothing of this image is known."),
    summary="Forget an image: its object, rows and cached predictions",
)
async def delete_image(
    request: Request,
    image_id: str = ImageId,
    principal: Principal = Depends(require("admin")),
) -> DeletedOut:
    """The right to be forgotten, on every replica: the cache entries first, then the
    image's tombstone, every row (image, labels, predictions) and the audit entry in one
    transaction, then the object (behind the tombstone, so no row ever points at a missing
    object). The tombstone stops every replica from writing the image or its records back
    (imageiq/tombstones.py). A failure answers 503; a retry, or the recorders' sweep,
    finishes the job. 404 when nothing of the image was known."""
    backends = _backends(request)
    await anyio.to_thread.run_sync(backends.recorder.forget, image_id)  # this replica, at once
    deleted = await db_call(
        backends,
        catalog.forget_image,
        image_id,
        store=backends.store,
        cache=backends.cache,
        actor=principal.key_id,
        **_requests(),
    )
    if not any(deleted.values()):
        raise errors.ImageNotFound(f"Nothing is known of image {image_id}.")
    return DeletedOut(id=image_id, deleted=deleted)


@router.get(
    "/stats",
    response_model=StatsOut,
    responses=error_responses(403, 422),
    summary="Usage statistics",
)
async def stats(
    request: Request,
    principal: Principal = Depends(require("label")),
    since: str | None = _moment(f"From this time (inclusive). {_MOMENT}"),
    until: str | None = _moment(f"Up to this time (exclusive). {_MOMENT}"),
) -> StatsOut:
    """Predictions per label, per model version and per day (UTC), the cache hit ratio,
    labels given, stored images."""
    since_at, until_at = parse_moment("since", since), parse_moment("until", until)
    found = await db_call(_backends(request), catalog.stats, since=since_at, until=until_at)
    return StatsOut(**found, since=since_at, until=until_at)


@router.post(
    "/admin/models/{name}/activate",
    response_model=ActivateOut,
    responses=error_responses(
        403,
        404,
        503,
        *BODY,
        s404="No such version of the model in the store.",
        s503="The version could not be loaded (nothing changed), the server is overloaded, "
        "or the database is unavailable (see Retry-After).",
    ),
    summary="Switch a model's active version without a restart",
)
async def activate_model(
    request: Request,
    body: ActivateIn,
    name: str = Path(pattern=MODEL_NAME, description="A model name."),
    principal: Principal = Depends(require("admin")),
) -> ActivateOut:
    """Requests for ``name`` (and the default ones, when it is the active model) get
    ``version`` from now on; the version it replaces is retired once its requests finish.
    Loads and warms the version first: a version that fails to load changes nothing (503).
    Recorded in the models table and the audit log."""
    pool = _pool(request)
    backends = _backends(request)
    model = await anyio.to_thread.run_sync(get_model, f"{name}:{body.version}")
    previous = next((m.tag for m in pool.models.values() if m.model.name == name), None)
    if not await pool.activate(model.tag):
        raise errors.ModelNotReady(
            f"Model {model.tag} could not be loaded; still serving {previous}.",
            details={"last_reload": pool.last_reload},
        )
    await db_call(
        backends,
        catalog.activate_model,
        name=model.name,
        version=model.version,
        metrics=model.card.metrics,
        actor=principal.key_id,
        previous=previous,
        **_requests(),
    )
    return ActivateOut(
        model=ModelRefOut(name=model.name, version=model.version),
        previous=previous,
        serving=list(pool.models),
    )


def _attribute(text: str | None) -> tuple[str, str] | None:
    """``name:value`` (split at the first colon) -> (name, value); 422 ``invalid_parameter``
    naming the field for anything else."""
    if text is None:
        return None
    head, colon, value = text.partition(":")
    bad = CONTROL.search(text) or SURROGATE.search(text)
    if not colon or bad or not catalog.ATTRIBUTE_HEAD.fullmatch(head) or not 0 < len(value) <= 64:
        raise errors.InvalidParameter(
            "attribute must be name:value: a name of 1 to 64 characters (no colon, quote, "
            "backslash or control character), a colon, then a value of 1 to 64 characters.",
            details={"field": "attribute", "expected": "name:value"},
        )
    return head, value


def _check_known(pool: ModelPool, body: LabelIn) -> None:
    cards = [m.model.card for m in pool.models.values()]
    if body.label is not None and not body.new_label:
        known = {label for card in cards for label in card.labels}
        if body.label not in known:
            raise errors.InvalidParameter(
                f"No served model knows the label {body.label!r}; send new_label=true "
                "to add a new class.",
                details={"field": "label"},
            )
    for head, answer in body.attributes.items():
        values = {v for card in cards for v in card.heads.get(head, [])}
        if answer not in values:
            raise errors.InvalidParameter(
                f"Attribute {head!r}={answer!r} is not one a served model predicts"
                + (f" ({', '.join(sorted(values))})." if values else "."),
                details={"field": f"attributes.{head}"},
            )
