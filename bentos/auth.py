"""Authentication, scopes and rate limits of the /v1 endpoints, as FastAPI dependencies.

``Depends(require("classify"))`` on an endpoint: the bearer key is checked (401), its
scopes (403) and its rate limit (429 with ``Retry-After``). The classify endpoints read
their bodies themselves, after this, so an unauthenticated upload is never read; FastAPI
parses the small JSON bodies of the other endpoints (64 KiB at most) first. Keys are
only ever read from the ``Authorization`` header; one in the query string is ignored. The
dependency is a plain ``def``: FastAPI runs it in a worker thread, so a key looked up in the
database does not stall the event loop.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request, Security
from fastapi.security import HTTPBearer

from bentos.http import note
from imageiq import errors
from imageiq.backends import Backends
from imageiq.keys import ANONYMOUS, SCOPES, Principal
from imageiq.metrics import metrics

# Only for the OpenAPI page (the "Authorize" button); the dependency reads the header itself.
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An ImageIQ API key (`imageiq keys create`): `Authorization: Bearer iiq_...`.",
)


def require(scope: str) -> Callable[..., Principal]:
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    def dependency(request: Request, _: object = Security(bearer)) -> Principal:
        backends: Backends = request.app.state.backends
        settings = backends.settings
        try:
            if settings.auth_enabled:
                principal = backends.keys.authenticate(request.headers.get("authorization"))
            else:
                principal = ANONYMOUS
            if not principal.allows(scope):
                raise errors.Forbidden(
                    f"This API key lacks the {scope!r} scope this endpoint needs.",
                    details={"required_scope": scope},
                )
        except (errors.Unauthorized, errors.Forbidden) as e:
            metrics().auth_failures.labels(e.code).inc()
            raise
        note(request.scope, key=principal.key_id)
        own = principal.rate_limit_per_minute
        per_minute = settings.rate_limit_per_minute if own is None else own  # 0: unlimited
        decision = backends.limiter.hit(
            principal.key_id, per_minute=per_minute, burst=settings.rate_limit_burst
        )
        if not decision.allowed:
            raise errors.RateLimited(
                f"Rate limit of this API key exceeded ({decision.limit} at once, "
                f"then {per_minute} per minute); retry in {decision.retry_after_s:.1f} s.",
                retry_after=decision.retry_after_s,
            )
        request.state.principal = principal
        return principal

    return dependency
