"""HTTP plumbing of the public API: request ids, the body-size guard, the error envelope.

Every error leaves as ``{"error": {"code", "message", "request_id"}}`` with its status and an
``X-Error-Code`` header, whether it is a domain error, a validation failure, an unknown route
or a bug (500, logged with its traceback; the client sees only the request id).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextvars import ContextVar
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imageiq import errors
from imageiq.metrics import metrics

log = logging.getLogger("imageiq.http")

REQUEST_ID_HEADER = "X-Request-ID"
ERROR_CODE_HEADER = "X-Error-Code"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
request_id_var: ContextVar[str] = ContextVar("request_id", default="-")

_STATUS_ERRORS: dict[int, type[errors.ImageIQError]] = {
    400: errors.MalformedRequest,
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge,
    415: errors.UnsupportedMediaType,
}


def error_response(error: errors.ImageIQError) -> JSONResponse:
    body: dict[str, Any] = {
        "code": error.code,
        "message": error.message,
        "request_id": request_id_var.get(),
    }
    if error.details:
        body["details"] = error.details
    headers = {ERROR_CODE_HEADER: error.code, REQUEST_ID_HEADER: request_id_var.get()}
    if error.status in (429, 503):
        headers["Retry-After"] = "1"
    return JSONResponse({"error": body}, status_code=error.status, headers=headers)


async def _domain_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.ImageIQError)
    return error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    content_type = request.headers.get("content-type", "")
    if request.method == "POST" and not content_type.startswith("multipart/form-data"):
        return error_response(
            errors.UnsupportedMediaType(
                f"Send the image as multipart/form-data (got {content_type or 'no content type'})."
            )
        )
    problems = [
        {"field": ".".join(str(p) for p in e["loc"][1:]) or str(e["loc"][0]), "message": e["msg"]}
        for e in exc.errors()
    ]
    if any(p["field"] == "image" for p in problems):
        return error_response(
            errors.MissingImage(
                "The multipart field 'image' must carry an image file.",
                details={"problems": problems},
            )
        )
    summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    return error_response(errors.InvalidParameter(summary, details={"problems": problems}))


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    cls = _STATUS_ERRORS.get(exc.status_code, errors.InvalidRequest)
    return error_response(cls(str(exc.detail)))


def install_error_handlers(app: FastAPI) -> None:
    """Domain, validation and HTTP errors; anything else is caught by :class:`RequestGuard`."""
    app.add_exception_handler(errors.ImageIQError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)

    # Unknown paths under the mount: BentoML only routes paths the app declares, so a
    # catch-all keeps their 404 (and 405) in the error envelope.
    async def unknown_route(request: Request, path: str) -> None:
        scope = dict(request.scope)
        if any(
            route.matches(scope)[0] == Match.PARTIAL
            for route in app.routes
            if getattr(route, "endpoint", None) is not unknown_route
        ):
            raise errors.MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}.")
        raise errors.NotFound(f"No endpoint {request.method} {request.url.path}.")

    app.add_api_route(
        "/{path:path}",
        unknown_route,
        include_in_schema=False,
        methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
    )


class RequestGuard:
    """ASGI middleware: request id, request body cap, request metrics.

    A body over ``max_body_bytes`` is refused with 413: at once when Content-Length says so,
    else as soon as the streamed bytes pass the cap (the app sees a disconnect, and its
    response is replaced by the 413).
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = (
            incoming if incoming and _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        )
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status, code = 500, ""
        too_large = False
        seen = 0

        async def guarded_receive() -> Message:
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        started_response = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, code, started_response
            if message["type"] == "http.response.start":
                started_response = True
                status = message["status"]
                name = REQUEST_ID_HEADER.lower().encode()
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != name]
                headers.append((name, request_id.encode()))
                code = dict(headers).get(ERROR_CODE_HEADER.lower().encode(), b"").decode()
                message = {**message, "headers": headers}
            await send(message)

        try:
            declared = _header(scope, b"content-length")
            if declared is not None and (
                not declared.isdigit() or int(declared) > self.max_body_bytes
            ):
                response = error_response(self._too_large())
                await response(scope, receive, send_with_id)
                return
            replaced = False

            async def send_or_replace(message: Message) -> None:
                nonlocal replaced
                if too_large:
                    if not replaced:
                        replaced = True
                        await error_response(self._too_large())(scope, receive, send_with_id)
                    return
                await send_with_id(message)

            try:
                await self.app(scope, guarded_receive, send_or_replace)
            except Exception:
                log.exception("unhandled error (request %s)", request_id)
                if started_response:
                    raise
                await error_response(
                    errors.ImageIQError(
                        "Internal error; the request id identifies it in the server log."
                    )
                )(scope, receive, send_with_id)
        finally:
            endpoint = _endpoint(scope)
            m = metrics()
            m.requests.labels(endpoint, str(status), code).inc()
            m.request_seconds.labels(endpoint).observe(time.perf_counter() - started)
            request_id_var.reset(token)

    def _too_large(self) -> errors.PayloadTooLarge:
        return errors.PayloadTooLarge(
            f"The request body is larger than {self.max_body_bytes} bytes.",
            details={"max_bytes": self.max_body_bytes},
        )


INNER_APP_KEY = "imageiq.inner_app"
INTERNAL_PREFIX = "/internal/"


class InnerAppHandle:
    """Service-level ASGI middleware: in-process access to the service's own endpoints.

    It puts the app inside it in each request's scope, so ``/v1/classify`` can send its
    preprocessed tensor to the service's own ``batchable=True`` endpoint through httpx's
    in-process ASGI transport: the request reaches BentoML's adaptive-batching dispatcher
    without a socket, and without BentoML's self-proxy, whose ASGI connector loses request
    bodies under concurrent load. Those calls enter *inside* this middleware; requests from
    outside for ``/internal/...`` are answered 404 here, so the internal endpoint is no way
    around the public API's limits.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if scope["path"].startswith(INTERNAL_PREFIX):
                token = request_id_var.set(uuid.uuid4().hex)
                try:
                    response = error_response(errors.NotFound(f"No endpoint {scope['path']}."))
                    await response(scope, receive, send)
                finally:
                    request_id_var.reset(token)
                return
            scope[INNER_APP_KEY] = self.app
        await self.app(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _endpoint(scope: Scope) -> str:
    """The matched route template (bounded label values); 'other' for unknown paths."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return f"{scope.get('root_path', '')}{path}" if path else "other"
