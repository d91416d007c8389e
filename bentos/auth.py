"""Authentication, scopes and rate limits of the /v1 endpoints, as FastAPI dependencies.

``Depends(require("classify"))`` on an endpoint: the bearer key is checked (401), its
scopes (403) and its rate limit (429 with ``Retry-After``). The classify endpoints read
their bodies themselves, after this, so an unauthenticated upload is never read; FastAPI
parses the small JSON bodies of the other endpoints (64 KiB at most) first. Keys are
only ever read from the ``Authorization`` header; one in the query string is ignored. A key
looked up in the database, or a limit counted in Redis, runs in a worker thread, so the
event loop never waits on the network; the usual request (its key cached, its limit
counted in this process or none) is checked on the event loop, without a thread hop.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import anyio
from fastapi import Request, Security
from fastapi.security import HTTPBearer

from bentos.http import note
from bentos.state import state
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


def require(scope: str) -> Callable[..., Awaitable[Principal]]:
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    async def dependency(request: Request, _: object = Security(bearer)) -> Principal:
        backends = state(request).backends
        settings = backends.settings
        header = request.headers.get("authorization")
        if settings.auth_enabled and not backends.keys.answers_from_memory(header):
            principal = await anyio.to_thread.run_sync(_authenticate, backends, header)
        else:
            principal = _authenticate(backends, header)
        note(request.scope, key=principal.key_id)
        own = principal.rate_limit_per_minute
        per_minute = settings.rate_limit_per_minute if own is None else own  # 0: unlimited
        hit = functools.partial(
            backends.limiter.hit,
            principal.key_id,
            per_minute=per_minute,
            burst=settings.rate_limit_burst,
        )
        if backends.limiter.answers_from_memory(per_minute):
            decision = hit()
        else:
            decision = await anyio.to_thread.run_sync(hit)
        if not decision.allowed:
            raise errors.RateLimited(
                f"Rate limit of this API key exceeded ({decision.limit} at once, "
                f"then {per_minute} per minute); retry in {decision.retry_after_s:.1f} s.",
                retry_after=decision.retry_after_s,
            )
        request.state.principal = principal
        return principal

    def _authenticate(backends: Backends, header: str | None) -> Principal:
        try:
            if backends.settings.auth_enabled:
                principal = backends.keys.authenticate(header)
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
        return principal

    return dependency
