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
from collections.abc import Iterator
from typing import Any, Literal

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bentos.gate import PUBLIC, Gate
from imageiq import errors
from imageiq.admission import Budget, byte_budget, parse_factor
from imageiq.logs import client_request_id_var, request_id_var
from imageiq.metrics import metrics
from imageiq.settings import Settings

log = logging.getLogger("imageiq.http")
access_log = logging.getLogger("imageiq.access")

REQUEST_ID_HEADER = "X-Request-ID"
CLIENT_REQUEST_ID_HEADER = "X-Client-Request-ID"
ERROR_CODE_HEADER = "X-Error-Code"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Per-request facts the endpoints note for the access log and metrics (model, batch sizes).
NOTES_KEY = "imageiq.notes"


_ENVELOPE = 64 * 1024  # multipart boundaries, form fields, JSON keys
# A JSON job (bentos.jobs_routes): options and a source; 1,000,000 image ids are 67 MB.
JOBS_JSON_BYTES = 96 * 1024 * 1024


# What anyone may GET without a key, relative to a mount: the OpenAPI pages (/v1), the v2
# protocol's server metadata and health (/v2).
PUBLIC_PATHS = PUBLIC | {"", "/", "/health/live", "/health/ready"}
# How an error is written: /v1's envelope, or the v2 protocol's {"error": message} (with the
# code and request id beside it).
ErrorForm = Literal["envelope", "v2"]


def body_limit(settings: Settings, path: str) -> int:
    """The largest body a path accepts: RequestGuard refuses more with 413."""
    if path.endswith(("/classify/batch", "/classify_batch")):  # /v1's, BentoML's
        return settings.max_batch_request_bytes
    if path.endswith("/infer"):  # v2: a batch of images, base64 in JSON or binary
        return settings.max_batch_request_bytes * 4 // 3 + _ENVELOPE
    if path.endswith(("/classify", "/explain")):  # base64 in JSON is 4/3 of the file
        return settings.max_image_bytes * 4 // 3 + _ENVELOPE
    if path.endswith("/v1/jobs") or path == "/jobs":  # an archive, streamed to disk
        return max(settings.jobs_max_archive_bytes, JOBS_JSON_BYTES)
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


def error_response(error: errors.ImageIQError, form: ErrorForm = "envelope") -> JSONResponse:
    body: dict[str, Any] = {
        "code": error.code,
        "message": error.message,
        "request_id": request_id_var.get(),
    }
    if error.details:
        body["details"] = error.details
    # The v2 protocol's clients read "error" as the message.
    body = {"error": body.pop("message"), **body} if form == "v2" else {"error": body}
    headers = {ERROR_CODE_HEADER: error.code, REQUEST_ID_HEADER: request_id_var.get()}
    if error.retry_after is not None or error.status in (429, 503):
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after or 1)))
    if isinstance(error, errors.MethodNotAllowed) and error.details.get("allowed_methods"):
        headers["Allow"] = ", ".join(error.details["allowed_methods"])
    return JSONResponse(body, status_code=error.status, headers=headers)


def _as_domain_error(exc: Exception) -> errors.ImageIQError:
    if isinstance(exc, RequestValidationError):
        problems = [
            {
                "field": ".".join(str(p) for p in e["loc"][1:]) or str(e["loc"][0]),
                "message": e["msg"],
            }
            for e in exc.errors()
        ]
        summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        return errors.InvalidParameter(summary, details={"problems": problems})
    if isinstance(exc, StarletteHTTPException):
        cls = _STATUS_ERRORS.get(exc.status_code, errors.InvalidRequest)
        allow = (exc.headers or {}).get("Allow")
        details = {"allowed_methods": [m.strip() for m in allow.split(",")]} if allow else None
        return cls(str(exc.detail), details=details)
    assert isinstance(exc, errors.ImageIQError)
    return exc


def install_error_handlers(app: FastAPI, form: ErrorForm = "envelope") -> None:
    """Domain, validation and HTTP errors; anything else is caught by :class:`RequestGuard`."""

    async def handler(_: Request, exc: Exception) -> JSONResponse:
        return error_response(_as_domain_error(exc), form)

    for kind in (errors.ImageIQError, RequestValidationError, StarletteHTTPException):
        app.add_exception_handler(kind, handler)

    # Unknown paths under the mount: BentoML only routes paths the app declares, so a
    # catch-all keeps their 404 (and 405) in the error envelope.
    async def unknown_route(request: Request, path: str) -> None:
        allowed = allowed_methods(app, request.scope)
        if allowed:
            raise errors.MethodNotAllowed(
                f"{request.method} is not allowed on {request.url.path}; "
                f"allowed: {', '.join(allowed)}.",
                details={"allowed_methods": allowed},
            )
        raise errors.NotFound(f"No endpoint {request.method} {request.url.path}.")

    app.add_api_route(
        "/{path:path}",
        unknown_route,
        include_in_schema=False,
        methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
    )


class Door:
    """What the API's mounts (/v1, /v2) share, so that a limit holds across both: the
    requests in progress, the request-byte budget and the gate (keys, per-key concurrency,
    failed-authentication throttling)."""

    def __init__(self, settings: Settings) -> None:
        self.in_flight = 0
        self.bytes = Budget(byte_budget(settings), unit="bytes")
        self.gate = Gate(settings, public=PUBLIC_PATHS)


class RequestGuard:
    """ASGI middleware of the public API: request id, admission, deadlines, body cap,
    request metrics, and the envelope for anything that escapes the app.

    In this order, each refusal answered before the body is read, with ``Connection:
    close``:

    - more than ``max_in_flight`` requests at once: 503 ``overloaded``;
    - who is asking (:class:`bentos.gate.Gate`): 401, 429, 503;
    - a body over ``body_limit(path)``: 413, at once when Content-Length says so, else as
      soon as the streamed bytes pass it;
    - the worker's request-byte budget (:mod:`imageiq.admission`): the declared body times
      its parse factor is taken from it (a streamed body's, chunk by chunk); 503
      ``overloaded`` when it is spent, 413 when the body alone is over it.

    Then the app runs: past ``request_timeout_s``, 504 ``timeout``; a body not all sent
    within ``body_timeout_s``, 408 ``body_timeout``; a client that goes away is counted as
    499 ``client_closed_request`` (logged at INFO, not an error); an exception is a 500
    ``internal_error``, logged with its traceback and the request id.

    The request id is the server's own; a client's valid ``X-Request-ID`` is kept apart
    (logs, records) and echoed as ``X-Client-Request-ID``. Each request ends with one
    ``imageiq.access`` log record and its metrics.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        door: Door | None = None,
        form: ErrorForm = "envelope",
    ) -> None:
        self.app = app
        self.settings = settings
        self.max_body_bytes = functools.partial(body_limit, settings)
        self.max_in_flight = settings.max_in_flight
        self.timeout_s = settings.request_timeout_s
        self.door = door if door is not None else Door(settings)
        self.gate = self.door.gate
        self.form = form

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        incoming = _header(scope, b"x-request-id")
        client_request_id = incoming if incoming and _VALID_REQUEST_ID.match(incoming) else None
        tokens = (
            request_id_var.set(request_id),
            client_request_id_var.set(client_request_id),
        )
        limit = self.max_body_bytes(scope["path"])
        exchange = _Exchange(
            scope,
            receive,
            send,
            request_id=request_id,
            client_request_id=client_request_id,
            max_body=limit,
            budget=self.door.bytes,
            factor=parse_factor(_header(scope, b"content-type")),
            body_timeout_s=self.settings.body_timeout_s,
            form=self.form,
        )
        started = time.perf_counter()
        try:
            if self.door.in_flight >= self.max_in_flight:
                await exchange.respond(
                    errors.Overloaded(
                        f"{self.door.in_flight} requests are in progress, the most this "
                        "server takes; retry shortly."
                    ),
                    close=True,
                )
                return
            self.door.in_flight += 1
            in_flight = metrics().requests_in_flight
            in_flight.inc()
            principal = None
            try:
                with anyio.fail_after(self.timeout_s):
                    try:
                        principal = await self.gate.admit(scope)
                        exchange.admit_body(_header(scope, b"content-length"))
                    except errors.ImageIQError as e:
                        await exchange.respond(e, close=True)
                        return
                    await self.app(scope, exchange.receive, exchange.send)
            except TimeoutError:
                if exchange.started:
                    raise
                await exchange.respond(
                    errors.Timeout(f"The request took longer than {self.timeout_s:g} s."),
                    close=True,
                )
            except Exception:
                if exchange.cut is not None:  # the app choked on the body we cut: not a bug
                    if not exchange.started:
                        await exchange.respond(exchange.cut, close=True)
                    return
                if exchange.client_gone:
                    exchange.gone()
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
                self.door.in_flight -= 1
                in_flight.dec()
                self.gate.release(principal)
                exchange.release()
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
                    "client_request_id": client_request_id,
                    **notes,
                },
            )
            for var, token in zip((request_id_var, client_request_id_var), tokens, strict=True):
                var.reset(token)  # type: ignore[attr-defined]


class _Exchange:
    """One request's receive/send, wrapped: counts and budgets the body bytes, enforces
    the body deadline, notices a client that leaves, stamps the request ids, and remembers
    the status and error code for the metrics."""

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        request_id: str,
        client_request_id: str | None,
        max_body: int,
        budget: Budget,
        factor: int,
        body_timeout_s: float,
        form: ErrorForm = "envelope",
    ) -> None:
        self.scope, self._receive, self._send = scope, receive, send
        self.form = form
        self.request_id, self.client_request_id = request_id, client_request_id
        self.max_body, self.budget, self.factor = max_body, budget, factor
        self.body_timeout_s = body_timeout_s
        self.body_deadline = time.monotonic() + body_timeout_s
        self.status, self.code = 500, ""
        self.started = False
        self.body_bytes = 0
        self.body_done = False
        self.client_gone = False
        # The answer that replaces the app's once the body was cut off (too large, too
        # slow, over the budget): the app only saw a disconnect.
        self.cut: errors.ImageIQError | None = None
        self._covered = 0  # body bytes the budget holds a share for
        self._held = 0  # what the budget holds for them
        self._replaced = False

    def admit_body(self, declared: str | None) -> None:
        """Takes the declared body's share of the byte budget (before reading it)."""
        if declared is None:
            return  # chunked: taken as it streams (receive)
        if not declared.isdigit() or int(declared) > self.max_body:
            raise _too_large(self.max_body)
        self._cover(int(declared))
        if self.cut is not None:
            raise self.cut

    def release(self) -> None:
        self.budget.give(self._held)
        self._held = 0

    async def receive(self) -> Message:
        if self.body_done or self.cut is not None:
            return await self._receive()
        left = self.body_deadline - time.monotonic()
        message: Message | None = None
        if left > 0:
            with anyio.move_on_after(left):
                message = await self._receive()
        if message is None:
            self.cut = errors.BodyTimeout(
                f"The request body was not all sent within {self.body_timeout_s:g} s.",
            )
            return {"type": "http.disconnect"}
        if message["type"] == "http.request":
            self.body_bytes += len(message.get("body", b""))
            if self.body_bytes > self.max_body:
                self.cut = _too_large(self.max_body)
                return {"type": "http.disconnect"}
            if self.body_bytes > self._covered:
                self._cover(self.body_bytes)
                if self.cut is not None:
                    return {"type": "http.disconnect"}
            if not message.get("more_body", False):
                self.body_done = True
        elif message["type"] == "http.disconnect":
            self.client_gone = True
        return message

    def _cover(self, body_bytes: int) -> None:
        """Holds the budget's share for ``body_bytes`` of body; sets :attr:`cut` if it cannot."""
        need = (body_bytes - self._covered) * self.factor
        if not self.budget.fits(self._held + need):
            self.cut = errors.PayloadTooLarge(
                f"A body of {body_bytes} bytes needs more memory than this server gives "
                "requests at once.",
                details={"max_bytes": self.budget.total // self.factor},
            )
        elif not self.budget.take(need):
            self.cut = errors.Overloaded(
                "The server holds as many request bytes as it may at once; retry shortly.",
                retry_after=1,
            )
        else:
            self._held += need
            self._covered = body_bytes

    async def send(self, message: Message) -> None:
        if self.client_gone:  # nobody to answer: counted as the client's abort
            self.gone()
            return
        if self.cut is not None:  # whatever the app answers to the cut-off body
            if not self._replaced:
                self._replaced = True
                await self.respond(self.cut, close=True)
            return
        await self._stamped_send(message)

    def gone(self) -> None:
        self.status, self.code = errors.ClientClosedRequest.status, errors.ClientClosedRequest.code

    async def respond(self, error: errors.ImageIQError, *, close: bool = False) -> None:
        response = error_response(error, self.form)
        if close:
            response.headers["Connection"] = "close"
        await response(self.scope, self._receive, self._stamped_send)

    async def _stamped_send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            self.status = message["status"]
            names = {REQUEST_ID_HEADER.lower().encode(), CLIENT_REQUEST_ID_HEADER.lower().encode()}
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
            headers.append((REQUEST_ID_HEADER.lower().encode(), self.request_id.encode()))
            if self.client_request_id:
                headers.append(
                    (CLIENT_REQUEST_ID_HEADER.lower().encode(), self.client_request_id.encode())
                )
            self.code = dict(headers).get(ERROR_CODE_HEADER.lower().encode(), b"").decode()
            message = {**message, "headers": headers}
        await self._send(message)


def _too_large(max_bytes: int) -> errors.PayloadTooLarge:
    return errors.PayloadTooLarge(
        f"The request body is larger than {max_bytes} bytes.", details={"max_bytes": max_bytes}
    )


class MountRoot:
    """Service-level ASGI middleware: a request for a mount's own path (``/v2``) goes to
    the mount's root route (``/v2/``) rather than to Starlette's redirect, which
    Triton's client does not follow (the v2 protocol's server metadata is ``GET /v2``)."""

    def __init__(self, app: ASGIApp, *, paths: tuple[str, ...]) -> None:
        self.app = app
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") in self.paths:
            path = f"{scope['path']}/"
            scope = {**scope, "path": path, "raw_path": path.encode()}
        await self.app(scope, receive, send)


class EnvelopeOutsideApi:
    """Service-level ASGI middleware: BentoML's plain-text 404 and 405 leave in the same
    JSON error envelope as the API's, for paths outside the API (``/foo``) and for those
    its mount does not match (``/v1/images/a%0Ab``: the mount's pattern stops at a line
    break). An answer that already carries an error code is the API's own, left as is."""

    def __init__(self, app: ASGIApp, *, api_prefix: str = "/v1") -> None:
        self.app = app
        self.api_prefix = api_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        replaced = False
        code_header = ERROR_CODE_HEADER.lower().encode()

        async def guarded_send(message: Message) -> None:
            nonlocal replaced
            if (
                message["type"] == "http.response.start"
                and message["status"] in (404, 405)
                and not any(k.lower() == code_header for k, _ in message.get("headers", []))
            ):
                replaced = True
                token = request_id_var.set(uuid.uuid4().hex)
                try:
                    if message["status"] == 404:
                        error: errors.ImageIQError = errors.NotFound(
                            f"No endpoint {scope.get('method')} {path!r}."
                        )
                    else:
                        allow = dict(message.get("headers", [])).get(b"allow", b"").decode()
                        methods = [m.strip() for m in allow.split(",") if m.strip()]
                        error = errors.MethodNotAllowed(
                            f"{scope.get('method')} is not allowed on {path!r}.",
                            details={"allowed_methods": methods} if methods else None,
                        )
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


def flat_routes(routes: Any) -> Iterator[Any]:
    """The app's endpoint routes, with the routers it includes flattened (FastAPI keeps an
    included router as one route of its own)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from flat_routes(included.routes)
        elif getattr(route, "path", "") != "/{path:path}":  # not the catch-all
            yield route


def matched_route(app: Any, scope: Scope) -> Any | None:
    """The route that serves this request (path and method), if any."""
    for route in flat_routes(getattr(app, "routes", ())):
        if route.matches(dict(scope))[0] == Match.FULL:
            return route
    return None


def allowed_methods(app: Any, scope: Scope) -> list[str]:
    """The methods some route answers on this request's path (for 405 and ``Allow``)."""
    return sorted(
        {
            method
            for route in flat_routes(getattr(app, "routes", ()))
            if route.matches(dict(scope))[0] != Match.NONE
            for method in getattr(route, "methods", None) or ()
        }
    )


def _endpoint(scope: Scope) -> str:
    """The route template (bounded label values): the matched one, or, for a request
    refused before routing, the one that would have served it; 'other' for unknown paths."""
    route = scope.get("route")
    if getattr(route, "endpoint", None) is None or getattr(route, "path", "") in (
        "",
        "/{path:path}",
    ):
        route = matched_route(scope.get("app"), scope) if scope.get("app") is not None else None
    path = getattr(route, "path", None)
    return f"{scope.get('root_path', '')}{path}" if path else "other"
