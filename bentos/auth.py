"""Scopes and rate limits of the /v1 endpoints, as FastAPI dependencies.

Who is asking was settled before the request reached the app, from its headers alone
(:mod:`bentos.gate`: the API key, failed-attempt throttling, the key's concurrency), so no
body is ever read for an unauthenticated request. ``Depends(require("classify"))`` on an
endpoint then checks the key's scopes (403) and charges its rate limit (429 with
``Retry-After``): one per request here, and the batch endpoint charges its other images
with :func:`charge` once it has counted them. Keys are only ever read from the
``Authorization`` header; one in the query string is ignored. A limit counted in Redis
runs in a worker thread, so the event loop never waits on the network.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable

import anyio
from fastapi import Request, Security
from fastapi.security import HTTPBearer

from bentos.gate import GATE_KEY, principal_of
from bentos.http import note
from bentos.state import state
from imageiq import errors
from imageiq.keys import SCOPES, Principal

# Only for the OpenAPI page (the "Authorize" button); the gate reads the header itself.
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An ImageIQ API key (`imageiq keys create`): `Authorization: Bearer iiq_...`; "
    "or, where OIDC is on (docs/oidc.md), a JWT access token of the identity provider.",
)


def require(scope: str) -> Callable[..., Awaitable[Principal]]:
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    async def dependency(request: Request, _: object = Security(bearer)) -> Principal:
        principal = principal_of(request.scope)
        note(request.scope, key=principal.key_id)
        try:
            if not principal.allows(scope):
                raise errors.Forbidden(
                    f"This API key or token lacks the {scope!r} scope this endpoint needs.",
                    details={"required_scope": scope},
                )
        except errors.Forbidden as e:
            gate = request.scope.get(GATE_KEY)
            if gate is not None:
                gate.denied(request.scope, state(request).backends, e, key_id=principal.key_id)
            raise
        if principal.stale and scope != "classify":
            raise errors.DatabaseUnavailable(
                "The database is unavailable, so this key's rights cannot be checked; "
                f"the {scope!r} scope is refused until it is back.",
                retry_after=2,
            )
        await charge(request, principal, cost=1)
        request.state.principal = principal
        return principal

    return dependency


async def charge(request: Request, principal: Principal, *, cost: int, paid: int = 0) -> None:
    """Counts ``cost`` requests (images) against the key's rate limit, for a request that
    already paid ``paid`` (the batch endpoint: one before its body was read, the rest once
    its images are counted). 429 with the request's whole cost, the limit and
    ``Retry-After`` when they do not fit now; 413 when they never could (more than the
    key's burst at once)."""
    backends = state(request).backends
    settings = backends.settings
    own = principal.rate_limit_per_minute
    per_minute = settings.rate_limit_per_minute if own is None else own  # 0: unlimited
    burst = settings.rate_limit_burst
    total = cost + paid
    if per_minute <= 0 or cost <= 0:
        return
    if total > burst:
        raise errors.TooManyImages(
            f"This request costs {total} (one per image); this API key or token may spend at most "
            f"{burst} at once: send at most {burst} images per request.",
            details={"cost": total, "burst": burst, "max_images": burst},
        )
    hit = functools.partial(
        backends.limiter.hit, principal.key_id, per_minute=per_minute, burst=burst, cost=cost
    )
    if backends.limiter.answers_from_memory(per_minute):
        decision = hit()
    else:
        decision = await anyio.to_thread.run_sync(hit)
    if not decision.allowed:
        # The wait covers what was paid already too: it is not given back, and the retry
        # pays it again (else a batch of exactly the burst would wait one image short).
        wait = max(1, math.ceil(decision.retry_after_s + paid * 60.0 / per_minute))
        raise errors.RateLimited(
            f"Rate limit of this API key or token exceeded: this request costs {total} (one per "
            f"image), the key may spend {decision.limit} at once, then {per_minute} per "
            f"minute; retry in {wait} s.",
            details={
                "cost": total,
                "burst": decision.limit,
                "per_minute": per_minute,
                "retry_after_s": wait,
            },
            retry_after=wait,
        )
