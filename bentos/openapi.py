"""The OpenAPI documents: the error answers every route shares, declared once, and the
service's own document at ``/docs.json``.

Every ``/v1`` route can be refused before it runs, by :class:`bentos.http.RequestGuard` and
:class:`bentos.gate.Gate` (:data:`ADMITTED`); each router declares those once
(``APIRouter(responses=error_responses(*ADMITTED))``) and its routes add their own. Every
error is the same envelope (:class:`bentos.schemas.ErrorResponse`) with an ``X-Error-Code``
header, and ``Retry-After`` on 429 and 503 (:func:`bentos.http.error_response`).

``/docs.json`` is BentoML's: built from the service, it reads ``info.version`` from a built
bento ("None" when served from source) and BentoML's readme boilerplate as the description,
declares OpenAPI 3.0.2 around FastAPI's 3.1 schemas and drops what its own classes do not
model. :class:`ServiceOpenApi` answers it with the API's document instead (the paths under
``/v1`` and ``/v2``, and BentoML's probes).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from bentos.schemas import ErrorResponse

# What each status means on the API; a route may say it more precisely.
DESCRIBED: dict[int, str] = {
    400: "Malformed request: a body that is not valid multipart or JSON, or an empty image.",
    401: "Missing, unknown or revoked API key.",
    403: "The API key lacks the scope this endpoint needs.",
    404: "Not found.",
    408: "The request body was not all sent in time (IMAGEIQ_BODY_TIMEOUT_S).",
    409: "Conflict with the resource's state.",
    413: "The body is over this path's limit (a declared Content-Length is refused unread).",
    415: "Unsupported content type, or not an image in a supported format.",
    422: "An invalid parameter or field (error.details names it).",
    429: "The API key's rate limit or its requests in progress, or the address's failed "
    "authentications, are exceeded (see Retry-After).",
    503: "Not ready yet, overloaded, or the database is unavailable (see Retry-After).",
    504: "The request took longer than IMAGEIQ_REQUEST_TIMEOUT_S.",
}
# The image formats the decoder reads (imageiq.images), as the media types a stored image
# is answered with; an upload's own content type is not trusted, its bytes are.
IMAGE_TYPES = (
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/gif",
    "image/bmp",
    "image/tiff",
    "image/mpo",
)
# Who may be turned away before any route runs: the guard (413 declared body, 503 too many
# requests or request bytes, 504 deadline) and the gate (401 key, 429 throttled or too many
# in progress, 503 key checks or still starting).
ADMITTED = (401, 413, 429, 503, 504)
# What reading a body adds: 400 unparsable, 408 too slow, 422 invalid.
BODY = (400, 408, 422)

_TEXT = {"schema": {"type": "string"}}
_ERROR_HEADERS = {
    "X-Error-Code": {"description": "The error's code, as in the body.", "required": True, **_TEXT},
}
_RETRY_HEADERS = {
    **_ERROR_HEADERS,
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
}


def error_responses(
    *statuses: int, model: type[BaseModel] = ErrorResponse, **described: str
) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses`` for these error statuses: the envelope (or ``model``: the v2
    protocol's form), its headers and a description (``described`` overrides one by
    ``s404="..."``)."""
    return {
        status: {
            "model": model,
            "description": described.get(f"s{status}", DESCRIBED[status]),
            "headers": _RETRY_HEADERS if status in (429, 503) else _ERROR_HEADERS,
        }
        for status in statuses
    }


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its ``$defs`` inlined, for a request body written by
    hand (``openapi_extra``), where ``#/$defs/...`` would not resolve."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(copy.deepcopy(defs[ref.removeprefix("#/$defs/")]))
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def service_spec(
    api: FastAPI,
    *,
    prefix: str = "/v1",
    metrics: bool = True,
    mounts: dict[str, FastAPI] | None = None,
) -> dict[str, Any]:
    """The service's OpenAPI document: the API's own (its version, description and
    schemas), with its paths under ``prefix``, the paths of the other ``mounts`` (prefix
    -> app: the v2 protocol's) and their schemas, and BentoML's probes (``/metrics`` when
    it is served on the API port)."""
    spec = copy.deepcopy(api.openapi())
    paths = {f"{prefix}{path}": item for path, item in spec.get("paths", {}).items()}
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for mount, app in (mounts or {}).items():
        other = copy.deepcopy(app.openapi())
        paths.update({f"{mount}{path}": item for path, item in other.get("paths", {}).items()})
        for name, schema in other.get("components", {}).get("schemas", {}).items():
            if schemas.setdefault(name, schema) != schema:
                raise ValueError(f"two schemas named {name!r} in the service's document")
    probes = {
        "/livez": "200 while the process runs.",
        "/readyz": "200 once every configured model is loaded and warm; 503 before.",
    }
    if metrics:
        probes["/metrics"] = "Prometheus metrics (text exposition format)."
    for path, description in probes.items():
        paths[path] = {
            "get": {
                "tags": ["Infrastructure"],
                "summary": description,
                "operationId": f"probe_{path.strip('/')}",
                "responses": {"200": {"description": description}},
            }
        }
    spec["paths"] = paths
    return spec


class ServiceOpenApi:
    """Service-level ASGI middleware: ``GET /docs.json`` answers :func:`service_spec`
    (built on the first request) instead of BentoML's document."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        api: FastAPI,
        metrics: bool = True,
        mounts: dict[str, FastAPI] | None = None,
    ) -> None:
        self.app = app
        self.api = api
        self.metrics = metrics
        self.mounts = mounts
        self._body: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("path") != "/docs.json"
            or scope.get("method") not in ("GET", "HEAD")
        ):
            await self.app(scope, receive, send)
            return
        if self._body is None:
            spec = service_spec(self.api, metrics=self.metrics, mounts=self.mounts)
            self._body = json.dumps(spec, separators=(",", ":")).encode()
        await Response(self._body, media_type="application/json")(scope, receive, send)
