"""HTTP plumbing of the public API: request ids, the body-size guard, the error envelope.

Every error leaves as ``{"error": {"code", "message", "request_id"}}`` with its status and an
``X-Error-Code`` header, whether it is a domain error, a validation failure, an unknown route
or a bug (500, logged with its traceback; the client sees only the request id).
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
import uuid
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imageiq import errors
from imageiq.logs import request_id_var
from imageiq.metrics import metrics
from imageiq.settings import Settings

log = logging.getLogger("imageiq.http")
access_log = logging.getLogger("imageiq.access")

REQUEST_ID_HEADER = "X-Request-ID"
ERROR_CODE_HEADER = "X-Error-Code"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Per-request facts the endpoints note for the access log and metrics (model, batch sizes).
NOTES_KEY = "imageiq.notes"


_ENVELOPE = 64 * 1024  # multipart boundaries, form fields, JSON keys


def body_limit(settings: Settings, path: str) -> int:
    """The largest body a path accepts: RequestGuard refuses more with 413."""
    if path.endswith("/classify/batch"):
        return settings.max_batch_request_bytes
    if path.endswith("/classify"):  # base64 in JSON is 4/3 of the file
        return settings.max_image_bytes * 4 // 3 + _ENVELOPE
    return _ENVELOPE


def note(scope: Scope, **facts: Any) -> None:
    scope.setdefault(NOTES_KEY, {}).update(facts)


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
    if error.retry_after is not None or error.status in (429, 503):
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after or 1)))
    return JSONResponse({"error": body}, status_code=error.status, headers=headers)


async def _domain_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.ImageIQError)
    return error_response(exc)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {"field": ".".join(str(p) for p in e["loc"][1:]) or str(e["loc"][0]), "message": e["msg"]}
        for e in exc.errors()
    ]
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
    """ASGI middleware of the public API: request id, in-flight cap, deadline, body cap,
    request metrics, and the envelope for anything that escapes the app.

    - More than ``max_in_flight`` requests at once: 503 ``overloaded`` at once.
    - A body over ``max_body_bytes(path)``: 413, at once when Content-Length says so, else as
      soon as the streamed bytes pass the cap (the app sees a disconnect; its answer is
      replaced).
    - Past ``timeout_s``: 504 ``timeout``.
    - An exception: 500 ``internal_error``, logged with its traceback and the request id.

    Each request ends with one ``imageiq.access`` log record and its metrics.
    """

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.max_body_bytes = functools.partial(body_limit, settings)
        self.max_in_flight = settings.max_in_flight
        self.timeout_s = settings.request_timeout_s
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = (
            incoming if incoming and _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        )
        token = request_id_var.set(request_id)
        limit = self.max_body_bytes(scope["path"])
        exchange = _Exchange(scope, receive, send, request_id, limit)
        started = time.perf_counter()
        try:
            refusal = self._refusal(scope, limit)
            if refusal is not None:
                await exchange.respond(refusal)
                return
            self.in_flight += 1
            in_flight = metrics().requests_in_flight
            in_flight.inc()
            try:
                with anyio.fail_after(self.timeout_s):
                    await self.app(scope, exchange.receive, exchange.send)
            except TimeoutError:
                if exchange.started:
                    raise
                await exchange.respond(
                    errors.Timeout(f"The request took longer than {self.timeout_s:g} s.")
                )
            except Exception:
                if exchange.too_large:  # the app choked on the body we cut: not a bug
                    if not exchange.started:
                        await exchange.respond(_too_large(limit))
                    return
                log.exception("unhandled error (request %s)", request_id)
                if exchange.started:
                    raise
                await exchange.respond(
                    errors.ImageIQError(
                        "Internal error; the request id identifies it in the server log."
                    )
                )
            finally:
                self.in_flight -= 1
                in_flight.dec()
        finally:
            elapsed = time.perf_counter() - started
            endpoint = _endpoint(scope)
            notes = scope.get(NOTES_KEY, {})
            m = metrics()
            m.requests.labels(
                endpoint, str(exchange.status), exchange.code, notes.get("model", "")
            ).inc()
            m.request_seconds.labels(endpoint).observe(elapsed)
            access_log.info(
                "%s %s %d %s",
                scope.get("method"),
                scope.get("path"),
                exchange.status,
                exchange.code or "ok",
                extra={
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "endpoint": endpoint,
                    "status": exchange.status,
                    "code": exchange.code or None,
                    "latency_ms": round(elapsed * 1000, 2),
                    "body_bytes": exchange.body_bytes,
                    **notes,
                },
            )
            request_id_var.reset(token)

    def _refusal(self, scope: Scope, limit: int) -> errors.ImageIQError | None:
        if self.in_flight >= self.max_in_flight:
            return errors.Overloaded(
                f"{self.in_flight} requests are in progress, the most this server takes; "
                "retry shortly."
            )
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return _too_large(limit)
        return None


class _Exchange:
    """One request's receive/send, wrapped: counts body bytes, stamps the request id, and
    remembers the status and error code for the metrics."""

    def __init__(
        self, scope: Scope, receive: Receive, send: Send, request_id: str, max_body: int
    ) -> None:
        self.scope, self._receive, self._send = scope, receive, send
        self.request_id = request_id
        self.max_body = max_body
        self.status, self.code = 500, ""
        self.started = False
        self.too_large = False
        self.body_bytes = 0
        self._replaced = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.body_bytes += len(message.get("body", b""))
            if self.body_bytes > self.max_body:
                self.too_large = True
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.too_large:  # whatever the app answers to the cut-off body, the client gets 413
            if not self._replaced:
                self._replaced = True
                await self.respond(_too_large(self.max_body))
            return
        await self._stamped_send(message)

    async def respond(self, error: errors.ImageIQError) -> None:
        await error_response(error)(self.scope, self._receive, self._stamped_send)

    async def _stamped_send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            self.status = message["status"]
            name = REQUEST_ID_HEADER.lower().encode()
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != name]
            headers.append((name, self.request_id.encode()))
            self.code = dict(headers).get(ERROR_CODE_HEADER.lower().encode(), b"").decode()
            message = {**message, "headers": headers}
        await self._send(message)


def _too_large(max_bytes: int) -> errors.PayloadTooLarge:
    return errors.PayloadTooLarge(
        f"The request body is larger than {max_bytes} bytes.", details={"max_bytes": max_bytes}
    )


class EnvelopeOutsideApi:
    """Service-level ASGI middleware: BentoML's plain-text 404 and 405 for paths outside the
    API (``/foo``, ``/internal/...``) leave in the same JSON error envelope as the API's."""

    def __init__(self, app: ASGIApp, *, api_prefix: str = "/v1") -> None:
        self.app = app
        self.api_prefix = api_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or path == self.api_prefix
            or path.startswith(self.api_prefix + "/")
        ):
            await self.app(scope, receive, send)
            return
        replaced = False

        async def guarded_send(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] in (404, 405):
                replaced = True
                token = request_id_var.set(uuid.uuid4().hex)
                try:
                    cls = errors.NotFound if message["status"] == 404 else errors.MethodNotAllowed
                    error = cls(f"No endpoint {scope.get('method')} {path}.")
                    await error_response(error)(scope, receive, send)
                finally:
                    request_id_var.reset(token)
                return
            if not replaced:
                await send(message)

        await self.app(scope, receive, guarded_send)


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
