"""The signing keys an OpenID Connect issuer publishes (its JWKS), fetched and cached for
:mod:`imageiq.oidc`.

Our own small cache over httpx rather than PyJWT's ``PyJWKClient``, because that client
fetches the set again for every token whose ``kid`` it does not know, with no minimum
interval: a client sending made-up key ids would make every replica hammer the issuer,
and wait on it request after request. This one fetches at most once per
``min_refresh_s``, whatever the tokens say, one fetch at a time (threads that need the
same answer wait for it, then read it); :meth:`KeySet.due` tells the caller beforehand
whether an answer needs the network, so the event loop never waits on the issuer. While
the issuer does not answer, the keys fetched last keep verifying (the tokens they signed
expire on their own); a token that needs another key gets 503
``identity_provider_unavailable`` rather than a 401 that would blame the client.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from imageiq import errors

log = logging.getLogger("imageiq.oidc")
MAX_DOCUMENT_BYTES = 1024 * 1024  # a discovery document or key set; real ones are ~10 KB
DISCOVERY = "/.well-known/openid-configuration"

Jwk = dict[str, Any]


class _FetchFailed(Exception):
    """Why one fetch failed (logged; never shown to a client)."""


class KeySet:
    """The issuer's published keys, by ``kid``; kept ``lifetime_s``, refetched when stale or
    when a token names a key not among them, never twice within ``min_refresh_s``.

    ``jwks_url``: unset, the ``jwks_uri`` of the issuer's discovery document (whose
    ``issuer`` must be the one configured, as OpenID Connect Discovery requires)."""

    def __init__(
        self,
        *,
        issuer: str,
        jwks_url: str | None = None,
        lifetime_s: float = 3600.0,
        min_refresh_s: float = 60.0,
        timeout_s: float = 5.0,
    ) -> None:
        self.issuer, self._jwks_url = issuer, jwks_url
        self._configured_url = jwks_url
        self._lifetime, self._min_refresh, self._timeout = lifetime_s, min_refresh_s, timeout_s
        self._lock = threading.Lock()  # the state below; never held across the network
        self._fetching = threading.Lock()  # one fetch at a time
        self._keys: dict[str, Jwk] = {}
        self._fetched_at: float | None = None  # monotonic time of the last good fetch
        self._tried_at: float | None = None  # and of the last attempt, good or not
        self._failing = False  # whether the last attempt failed
        self.fetches = 0  # attempts since start (tests and logs)

    def due(self, kid: str | None) -> bool:
        """Whether :meth:`key` would fetch now: the set is stale or lacks ``kid``, and the
        last attempt was ``min_refresh_s`` ago or more."""
        with self._lock:
            return self._due(kid, time.monotonic())

    def key(self, kid: str | None, *, fetch: bool = True) -> Jwk | None:
        """The published key named ``kid`` (no ``kid``: the only key, when there is one);
        None when the issuer does not publish it. ``fetch=False`` answers from memory."""
        if fetch and self.due(kid):
            with self._fetching:
                if self.due(kid):  # not fetched meanwhile by the thread we waited for
                    self._refresh()
        with self._lock:
            found = self._find(kid)
            if found is None and (self._failing or self._fetched_at is None):
                since = time.monotonic() - (self._tried_at or 0.0)  # the next try's wait
                raise errors.IdentityProviderUnavailable(
                    "The identity provider's signing keys cannot be fetched; retry shortly.",
                    retry_after=max(1.0, self._min_refresh - since),
                )
            return found

    def _due(self, kid: str | None, now: float) -> bool:
        wanted = (
            self._fetched_at is None
            or now - self._fetched_at >= self._lifetime
            or self._find(kid) is None
        )
        return wanted and (self._tried_at is None or now - self._tried_at >= self._min_refresh)

    def _find(self, kid: str | None) -> Jwk | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    def _refresh(self) -> None:
        with self._lock:
            self._tried_at = time.monotonic()
            self.fetches += 1
        try:
            keys = self._fetch()
        except _FetchFailed as e:
            log.warning("cannot fetch the OIDC issuer's signing keys: %s", e)
            with self._lock:
                self._failing = True
                if self._configured_url is None:
                    self._jwks_url = None  # discover it again next time: it may have moved
            return
        with self._lock:
            self._keys, self._fetched_at, self._failing = keys, time.monotonic(), False
        log.info("fetched %d signing keys of the OIDC issuer %s", len(keys), self.issuer)

    def _fetch(self) -> dict[str, Jwk]:
        url = self._jwks_url
        if url is None:
            discovery = self._get(self.issuer.rstrip("/") + DISCOVERY)
            if discovery.get("issuer") != self.issuer:
                raise _FetchFailed(
                    f"the discovery document names issuer {discovery.get('issuer')!r}, not "
                    f"{self.issuer!r} (set IMAGEIQ_OIDC_ISSUER exactly as the IdP spells it)"
                )
            url = discovery.get("jwks_uri")
            if not isinstance(url, str) or not _secure(url):
                raise _FetchFailed(f"the discovery document's jwks_uri {url!r} is not https")
            self._jwks_url = url
        document = self._get(url)
        listed = document.get("keys")
        if not isinstance(listed, list):
            raise _FetchFailed(f"{url} is not a JWK set (no 'keys' list)")
        keys: dict[str, Jwk] = {}
        for jwk in listed:
            # Signing keys only: never a symmetric one, never one published for encryption.
            if not isinstance(jwk, dict) or jwk.get("kty") not in ("RSA", "EC", "OKP"):
                continue
            if jwk.get("use", "sig") != "sig":
                continue
            kid = jwk.get("kid")
            keys[kid if isinstance(kid, str) else ""] = jwk
        if not keys:
            raise _FetchFailed(f"{url} publishes no signing keys")
        return keys

    def _get(self, url: str) -> dict[str, Any]:
        """A JSON object from ``url``: no redirects, at most MAX_DOCUMENT_BYTES."""
        try:
            with httpx.stream(
                "GET",
                url,
                timeout=self._timeout,
                follow_redirects=False,
                headers={"Accept": "application/json"},
            ) as response:
                if response.status_code != 200:
                    raise _FetchFailed(f"{url} answered {response.status_code}")
                body = b""
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise _FetchFailed(f"{url} sent more than {MAX_DOCUMENT_BYTES} bytes")
        except httpx.HTTPError as e:
            raise _FetchFailed(f"{url}: {type(e).__name__}: {e}") from e
        try:
            document = json.loads(body)
        except ValueError as e:
            raise _FetchFailed(f"{url} did not send JSON") from e
        if not isinstance(document, dict):
            raise _FetchFailed(f"{url} did not send a JSON object")
        return document


def _secure(url: str) -> bool:
    """https, or http to a loopback address (the rule the settings apply to the issuer)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return False
    if parts.scheme == "https" and host:
        return True
    try:
        return parts.scheme == "http" and (
            host == "localhost" or ipaddress.ip_address(host).is_loopback
        )
    except ValueError:
        return False
