"""The SDK's exceptions: one per kind of answer a caller handles differently.

Every error the service answers carries its HTTP ``status``, the stable ``code`` of the
envelope ``{"error": {"code", "message", "request_id", "details"}}``, the server's
``request_id`` (the ``X-Request-ID`` to quote in a bug report), ``details`` and, on 429 and
503, ``retry_after`` in seconds. A caller branches on the class (``except
RateLimitedError``) or on ``code``; codes are the API's and never change.

These are the client's view of an answer, not :mod:`imageiq.errors` (the server's domain
errors): a client never imports the server's code.
"""

from __future__ import annotations

from typing import Any

import httpx


class ImageIQError(Exception):
    """Anything the SDK raises about a call: an error answer or no answer at all."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "error",
        request_id: str | None = None,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.details = details or {}
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f" (request {self.request_id})" if self.request_id else ""
        status = f"{self.status} " if self.status is not None else ""
        return f"{status}{self.code}: {self.message}{where}"


class TransportError(ImageIQError):
    """No answer: the connection failed, was cut, or a timeout passed. ``status`` is None."""


class APIError(ImageIQError):
    """An error answer with a status this SDK has no narrower class for."""


class BadRequestError(APIError):
    """400: a malformed body, an empty image, an invalid cursor."""


class AuthenticationError(APIError):
    """401: no key, or an unknown or revoked one."""


class PermissionDeniedError(APIError):
    """403: the key lacks the scope (``details.required_scope``)."""


class NotFoundError(APIError):
    """404: an unknown image, job, model or path."""


class ConflictError(APIError):
    """409: e.g. cancelling a job that has ended, results of one not done."""


class PayloadTooLargeError(APIError):
    """413: a body, an image or a batch over a limit (``details`` says which)."""


class UnsupportedMediaError(APIError):
    """415: not an image in a supported format, or a body type the endpoint does not take."""


class InvalidRequestError(APIError):
    """422: an invalid option, a missing or corrupt image, invalid base64."""


class RateLimitedError(APIError):
    """429: the key's rate limit or its requests in progress; wait ``retry_after``."""


class ServerError(APIError):
    """5xx: the service failed or timed out."""


class ServiceUnavailableError(ServerError):
    """503: overloaded, a model not ready, a dependency down; wait ``retry_after``."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaError,
    422: InvalidRequestError,
    429: RateLimitedError,
    503: ServiceUnavailableError,
}


def error_class(status: int) -> type[APIError]:
    return _BY_STATUS.get(status, ServerError if status >= 500 else APIError)


def from_response(response: httpx.Response, *, retry_after: float | None) -> APIError:
    """The exception for an error answer. A body that is not the envelope (a proxy's HTML
    502, say) still gives the status and a code derived from it."""
    status = response.status_code
    request_id = response.headers.get("x-request-id")
    try:
        envelope = response.json()["error"]
        code = str(envelope["code"])
        message = str(envelope.get("message") or code)
        request_id = envelope.get("request_id") or request_id
        details = envelope.get("details") if isinstance(envelope.get("details"), dict) else None
    except (ValueError, KeyError, TypeError):
        code = response.headers.get("x-error-code") or f"http_{status}"
        message = f"HTTP {status}: {response.text[:300].strip() or response.reason_phrase}"
        details = None
    return error_class(status)(
        message,
        status=status,
        code=code,
        request_id=request_id,
        details=details,
        retry_after=retry_after,
    )


def from_transport(error: httpx.TransportError) -> TransportError:
    code = "timeout" if isinstance(error, httpx.TimeoutException) else "connection_error"
    return TransportError(f"{type(error).__name__}: {error}", code=code)
