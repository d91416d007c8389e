"""The door of ``/v1``: who is asking, checked from the headers before any body is read.

:class:`Gate` runs in :class:`bentos.http.RequestGuard` ahead of the app, for every path
under the mount but the OpenAPI pages. In this order, each refusal answered at once, its
body unread and the connection closed:

1. the client address's failed authentications (429 ``auth_throttled`` once it spent its
   ``auth_failures_burst``, then ``auth_failures_per_minute``): a key guesser is turned
   away without a database look-up. A key this worker checked and cached still passes (one
   hash), so the good clients behind the same address (a NAT) keep working;
2. the API key (401; a key not cached is checked against the database in a worker thread,
   at most ``max_unauthenticated`` at once, more get 503), or, with ``oidc_issuer`` set, a
   bearer JWT in its place (:mod:`imageiq.oidc`: 401 when it does not verify; one that
   needs the issuer's keys fetched is verified in a worker thread, within the same bound,
   and gets 503 ``identity_provider_unavailable`` when the issuer does not answer);
3. the key's (or the token subject's) requests in progress on this worker (429
   ``too_many_concurrent_requests`` past ``max_in_flight_per_key``).

The endpoints then check the key's scope and rate limit (:mod:`bentos.auth`). Every 401 and
403 is counted and, when the service has a denial log, recorded there, under the key id
presented or the subject a token claims (never the secret, never the token).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio
from starlette.types import Scope

from imageiq import errors
from imageiq.audit import presented_key_id
from imageiq.keys import ANONYMOUS, Principal
from imageiq.logs import client_request_id_var, request_id_var
from imageiq.metrics import metrics
from imageiq.oidc import TokenVerifier, bearer_token
from imageiq.ratelimit import LocalGCRA
from imageiq.settings import Settings

PRINCIPAL_KEY = "imageiq.principal"  # where the request's principal lives in the ASGI scope
GATE_KEY = "imageiq.gate"  # and the gate, for the 403s the endpoints answer
# Paths under the mount that anyone may read (the OpenAPI pages, when they are on).
PUBLIC = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
_BLOCKED_MAX = 10_000


class Gate:
    """``public``: the paths under the mount that anyone may GET (relative to the mount)."""

    def __init__(self, settings: Settings, *, public: frozenset[str] = PUBLIC) -> None:
        self.settings = settings
        self.public = public
        self._failures = LocalGCRA()
        self._blocked: dict[str, float] = {}  # client address -> monotonic time it may retry
        self._checking = 0  # key and token checks in worker threads
        self._per_key: Counter[str] = Counter()
        self.tokens = TokenVerifier.from_settings(settings)  # None: OIDC is off

    async def admit(self, scope: Scope) -> Principal | None:
        """The request's principal (None on a public path), counted in its key's requests
        in progress until :meth:`release`; raises the refusal otherwise."""
        scope[GATE_KEY] = self
        if _relative(scope) in self.public and scope.get("method") in ("GET", "HEAD"):
            return None
        if not self.settings.auth_enabled:
            scope[PRINCIPAL_KEY] = ANONYMOUS
            return ANONYMOUS
        client = _client(scope)
        header = _header(scope, b"authorization")
        backends = backends_of(scope)
        token = bearer_token(header) if self.tokens is not None else None
        try:
            if token is not None:
                principal = await self._verify_token(client, token)
            else:
                principal = await self._check_key(client, header, backends.keys)
        except errors.Unauthorized as e:
            self._failed(client)
            presented = (
                self.tokens.presented_subject(token)
                if self.tokens is not None and token is not None
                else presented_key_id(header)
            )
            self.denied(scope, backends, e, key_id=presented)
            raise
        limit = self.settings.max_in_flight_per_key
        if self._per_key[principal.key_id] >= limit:
            raise errors.TooManyConcurrentRequests(
                f"This {'token subject' if token else 'API key'} has {limit} requests in "
                "progress on this server, the most it may; retry when one finishes.",
                details={"max_in_flight_per_key": limit},
                retry_after=1,
            )
        self._per_key[principal.key_id] += 1
        scope[PRINCIPAL_KEY] = principal
        return principal

    async def _check_key(self, client: str, header: str | None, keys: Any) -> Principal:
        if not keys.knows(header):  # a key checked and cached passes (a NAT's good clients)
            self._check_throttle(client)
        if keys.answers_from_memory(header):
            principal: Principal = keys.authenticate(header)
            return principal
        return await self._in_thread(keys.authenticate, header, what="API keys")

    async def _verify_token(self, client: str, token: str) -> Principal:
        assert self.tokens is not None
        if not self.tokens.knows(token):  # a token verified a moment ago passes, likewise
            self._check_throttle(client)
        if self.tokens.answers_from_memory(token):  # a signature check, no network
            return self.tokens.verify(token, fetch=False)
        return await self._in_thread(self.tokens.verify, token, what="tokens")

    async def _in_thread(
        self, check: Callable[[Any], Principal], credential: str | None, *, what: str
    ) -> Principal:
        """``check(credential)`` in a worker thread (it waits on the database or the
        issuer), at most ``max_unauthenticated`` at once across keys and tokens."""
        if self._checking >= self.settings.max_unauthenticated:
            raise errors.Overloaded(
                f"Too many {what} are being checked at once; retry shortly.", retry_after=1
            )
        self._checking += 1
        try:
            return await anyio.to_thread.run_sync(check, credential)
        finally:
            self._checking -= 1

    def release(self, principal: Principal | None) -> None:
        if principal is None or not self.settings.auth_enabled:
            return
        self._per_key[principal.key_id] -= 1
        if self._per_key[principal.key_id] <= 0:
            del self._per_key[principal.key_id]

    def denied(
        self,
        scope: Scope,
        backends: Any,
        error: errors.ImageIQError,
        *,
        key_id: str | None,
    ) -> None:
        """A 401 or 403: counted, and recorded in the denial log (when there is one)."""
        metrics().auth_failures.labels(error.code).inc()
        denials = getattr(backends, "denials", None)
        if denials is not None:
            denials.record(
                key_id=key_id,
                status=error.status,
                code=error.code,
                method=str(scope.get("method", "")),
                path=str(scope.get("path", ""))[:512],
                client=_client(scope),
                request_id=request_id_var.get(),
                client_request_id=client_request_id_var.get(),
            )

    def _check_throttle(self, client: str) -> None:
        until = self._blocked.get(client)
        if until is None:
            return
        left = until - time.monotonic()
        if left <= 0:
            del self._blocked[client]
            return
        raise errors.AuthThrottled(
            "Too many failed authentications from this address; "
            f"retry in {max(1, int(left + 0.999))} s.",
            retry_after=left,
        )

    def _failed(self, client: str) -> None:
        per_minute = self.settings.auth_failures_per_minute
        decision = self._failures.decide(
            client, interval=60.0 / per_minute, burst=self.settings.auth_failures_burst
        )
        if decision.allowed:
            return
        now = time.monotonic()
        if len(self._blocked) >= _BLOCKED_MAX:
            self._blocked = {c: t for c, t in self._blocked.items() if t > now}
        if len(self._blocked) < _BLOCKED_MAX:  # else the other limits still hold
            self._blocked[client] = now + decision.retry_after_s


def backends_of(scope: Scope) -> Any:
    """The service's backends (keys, limiter, denial log), from the app's state."""
    service = getattr(getattr(scope.get("app"), "state", None), "imageiq", None)
    if service is None:
        raise errors.ModelNotReady("The service is still starting.", retry_after=1)
    return service.backends


def principal_of(scope: Scope) -> Principal:
    """The principal the gate admitted this request as."""
    principal = scope.get(PRINCIPAL_KEY)
    if not isinstance(principal, Principal):  # a route outside the gate: a bug
        raise errors.Unauthorized("Missing API key: send `Authorization: Bearer <key>`.")
    return principal


def _relative(scope: Scope) -> str:
    path, root = str(scope.get("path", "")), str(scope.get("root_path", ""))
    return path[len(root) :] if root and path.startswith(root) else path


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None
