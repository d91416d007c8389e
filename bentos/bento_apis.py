"""BentoML's own API endpoints, ``POST /classify`` and ``POST /classify_batch``, so a
BentoML user's standard client works::

    with bentoml.SyncHTTPClient(url, token=api_key) as client:
        client.classify(image=Path("cat.jpg"), top_k=3)

They are the ``/v1`` classify routes in BentoML's shape (the image as a file; the options
as fields), the same core call (:mod:`bentos.core_call`) and the same answer. The same
door too: :class:`BentoApiGuard` puts their paths behind ``/v1``'s guard (the key, its
rate limit per image, body caps, deadlines), so this is no second, unguarded way in. Their
errors are ``/v1``'s envelope with its status.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import anyio
import bentoml
from pydantic import ValidationError
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from bentos import core_call
from bentos.answers import batch_item, prediction_fields
from bentos.auth import charge, require
from bentos.http import Door, RequestGuard, error_response
from bentos.schemas import ClassifyParams
from bentos.state import ServiceState, state
from imageiq import errors
from imageiq.classify import ImageResult, count_rejected

PATHS = ("/classify", "/classify_batch")
_SPOOLED = re.compile(r"tmp[a-z0-9_]{8}(.*)", re.DOTALL)


class BentoApiGuard:
    """Service-level ASGI middleware: requests to BentoML's API routes pass ``/v1``'s
    :class:`bentos.http.RequestGuard` (one :class:`bentos.http.Door` with ``/v1`` and
    ``/v2``) before BentoML reads their bodies. The routes find the service's state on
    BentoML's app, where the gate looks for it too."""

    def __init__(self, app: ASGIApp, *, settings: Any, door: Door, api: Any) -> None:
        self.app = app
        self.api = api  # the /v1 app, whose state the service fills at start-up
        self.guard = RequestGuard(app, settings=settings, door=door)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") not in PATHS:
            await self.app(scope, receive, send)
            return
        holder = scope.get("app")
        shared = getattr(self.api.state, "imageiq", None)
        if holder is not None and shared is not None:
            holder.state.imageiq = shared
        await self.guard(scope, receive, send)


async def classify(
    ctx: bentoml.Context,
    image: Path,
    *,
    top_k: int | None,
    min_confidence: float,
    model: str | None,
) -> dict[str, Any] | JSONResponse:
    started = time.perf_counter()
    try:
        s, principal, params = await _admitted(ctx, top_k, min_confidence, model)
        data = await _read(image, s, "/classify")
        served = s.pool.resolve(params.model)
        (result,) = await core_call.classify(
            ctx.request.scope,
            s,
            served,
            [data],
            top_k=params.top_k,
            min_confidence=params.min_confidence,
            principal=principal,
            endpoint="/classify",
            started=started,
        )
        if result.error is not None:
            raise result.error
        assert result.classified is not None
        return {"model": _model_ref(served), **prediction_fields(result.classified)}
    except errors.ImageIQError as e:
        return _error(ctx, e)


async def classify_batch(
    ctx: bentoml.Context,
    images: list[Path],
    *,
    top_k: int | None,
    min_confidence: float,
    model: str | None,
) -> dict[str, Any] | JSONResponse:
    started = time.perf_counter()
    try:
        s, principal, params = await _admitted(ctx, top_k, min_confidence, model)
        if not images:
            raise errors.MissingImage("Send at least one image in 'images'.")
        if len(images) > s.limits.max_images:
            raise errors.TooManyImages(
                f"{len(images)} images; at most {s.limits.max_images} per request.",
                details={"max_images": s.limits.max_images, "images": len(images)},
            )
        await charge(ctx.request, principal, cost=len(images) - 1, paid=1)
        uploads: list[bytes] = []
        failures: dict[int, errors.ImageIQError] = {}
        for i, path in enumerate(images):
            try:
                uploads.append(await _read(path, s, "/classify_batch"))
            except errors.ImageIQError as e:
                failures[i] = e
                uploads.append(b"")
        served = s.pool.resolve(params.model)
        good = [i for i in range(len(images)) if i not in failures]
        results = await core_call.classify(
            ctx.request.scope,
            s,
            served,
            [uploads[i] for i in good],
            top_k=params.top_k,
            min_confidence=params.min_confidence,
            principal=principal,
            endpoint="/classify_batch",
            started=started,
        )
        by_index = dict(zip(good, results, strict=True))
        items = [
            batch_item(i, _filename(path), by_index.get(i) or ImageResult(error=failures[i]))
            for i, path in enumerate(images)
        ]
        return {"model": _model_ref(served), "results": items}
    except errors.ImageIQError as e:
        return _error(ctx, e)


async def _admitted(
    ctx: bentoml.Context, top_k: int | None, min_confidence: float, model: str | None
) -> tuple[ServiceState, Any, ClassifyParams]:
    """The key's scope and one request of its rate limit (as ``/v1``), and the options."""
    request = ctx.request
    principal = await require("classify")(request, None)
    s = state(request)
    fields: dict[str, Any] = {"min_confidence": min_confidence, "model": model}
    fields["top_k"] = s.limits.default_top_k if top_k is None else top_k
    try:
        params = ClassifyParams.model_validate(fields)
    except ValidationError as e:
        problems = [
            {"field": ".".join(str(p) for p in err["loc"]), "message": err["msg"]}
            for err in e.errors(include_url=False)
        ]
        summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        raise errors.InvalidParameter(summary, details={"problems": problems}) from None
    return s, principal, params


async def _read(path: Path, s: ServiceState, endpoint: str) -> bytes:
    """An uploaded file's bytes (BentoML spooled it to disk; the guard capped the body)."""
    size = path.stat().st_size
    if size > s.limits.max_image_bytes:
        error: errors.ImageIQError = errors.ImageTooLarge(
            f"The image is {size} bytes; the limit is {s.limits.max_image_bytes}.",
            details={"max_bytes": s.limits.max_image_bytes},
        )
        count_rejected(endpoint, error)
        raise error
    return await anyio.Path(path).read_bytes()


def _filename(path: Path) -> str | None:
    """The name the client gave the file: BentoML spools it to ``tmp<8 random><name>``
    (``tempfile.NamedTemporaryFile(suffix=name)``)."""
    found = _SPOOLED.fullmatch(path.name)
    return (found.group(1) or None) if found else path.name


def _model_ref(served: Any) -> dict[str, str]:
    return {"name": served.model.name, "version": served.model.version}


def _error(ctx: bentoml.Context, error: errors.ImageIQError) -> JSONResponse:
    """The envelope, with its status: BentoML sets the answer's status from the context."""
    response = error_response(error)
    ctx.response.status_code = error.status
    for name, value in response.headers.items():
        if name.lower() not in ("content-length", "content-type"):
            ctx.response.metadata[name] = value
    return response
