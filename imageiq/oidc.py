"""OpenID Connect bearer tokens, a second way in beside API keys: a JWT signed by the
configured issuer, verified into a :class:`~imageiq.keys.Principal` (docs/oidc.md).

What is checked, in this order, each failure a 401 ``unauthorized`` saying which, in words
that name no internals:

1. the shape (three base64url parts) and size of the token;
2. its ``alg``: one of ``oidc_algorithms``, asymmetric only. ``none`` and the HMACs are
   refused before any key is looked at, so a token "signed" with the issuer's public key as
   an HMAC secret gets nowhere;
3. its ``kid``: a key the issuer publishes (:mod:`imageiq.jwks`), of the kind that ``alg``
   needs (RSA for RS*/PS*, the matching curve for ES*, OKP for EdDSA) and with the same
   ``alg`` when the key names one;
4. the signature (PyJWT, with the key bound to that one algorithm);
5. ``iss``, ``aud``, ``exp`` (all three required), ``nbf`` and ``iat`` when present, each
   with ``oidc_leeway_s`` of clock skew;
6. the subject (``oidc_subject_claim``).

The principal: ``key_id`` ``oidc:<subject>``, the identity its rate limit, concurrency,
audit entries, predictions and jobs are kept under. Those columns hold 64 characters, so a
longer subject, or one with characters outside a small safe set, becomes
``oidc-sha256:<40 hex digits of its SHA-256>`` (stable, and no subject can spell it, since
``-`` follows ``oidc`` where a literal subject has ``:``); ``name`` is the subject itself.
Scopes come from the values of ``oidc_scopes_claim`` (``oidc_*_values``); the rate limit
is ``oidc_rate_limit_per_minute`` (unset: the service's default).

A token that verified is remembered by its SHA-256 until it expires, at most
``auth_cache_ttl_s``: a repeat costs one hash, and passes an address that failed
authentication too often (the good clients behind a NAT), as a cached API key does. The
token itself is never logged or stored.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections import OrderedDict
from typing import Any

import jwt

from imageiq import errors
from imageiq.jwks import KeySet
from imageiq.keys import Principal
from imageiq.settings import Settings

_JWT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
MAX_TOKEN_CHARS = 16 * 1024
MAX_SUBJECT_CHARS = 255
# What a key_id may hold verbatim after "oidc:" (the columns are 64 characters).
_SAFE_SUBJECT = re.compile(r"^[A-Za-z0-9._~@|:+=/-]{1,59}$")
SUBJECT_ID = re.compile(r"oidc:[A-Za-z0-9._~@|:+=/-]{1,59}|oidc-sha256:[0-9a-f]{40}")
_KEY_KINDS = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521", "EdDSA": "Ed25519"}
_REMEMBERED_MAX = 10_000


def bearer_token(authorization: str | None) -> str | None:
    """The JWT of ``Authorization: Bearer <JWT>``; None for anything else (an API key)."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or token.startswith("iiq_"):
        return None
    return token if _JWT.match(token) else None


def subject_id(subject: str) -> str:
    """The principal id of a token's subject, at most 64 characters."""
    if _SAFE_SUBJECT.match(subject):
        return f"oidc:{subject}"
    return "oidc-sha256:" + hashlib.sha256(subject.encode()).hexdigest()[:40]


class TokenVerifier:
    """Verifies bearer JWTs of one issuer for the service (thread-safe)."""

    def __init__(
        self,
        keys: KeySet,
        *,
        audience: str,
        algorithms: list[str],
        leeway_s: float = 60.0,
        subject_claim: str = "sub",
        scopes_claim: str = "scope",
        grants: dict[str, frozenset[str]],
        rate_limit_per_minute: int | None = None,
        remember_s: float = 10.0,
    ) -> None:
        self.keys, self.audience, self.algorithms = keys, audience, list(algorithms)
        self.leeway_s, self.subject_claim, self.scopes_claim = leeway_s, subject_claim, scopes_claim
        self.grants = grants  # ImageIQ scope -> the claim values that grant it
        self.rate_limit_per_minute, self.remember_s = rate_limit_per_minute, remember_s
        self._lock = threading.Lock()
        self._verified: OrderedDict[bytes, tuple[float, Principal]] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier | None:
        """The service's verifier; None while OIDC is off (no ``oidc_issuer``)."""
        if settings.oidc_issuer is None or settings.oidc_audience is None:
            return None
        keys = KeySet(
            issuer=settings.oidc_issuer,
            jwks_url=settings.oidc_jwks_url,
            lifetime_s=settings.oidc_jwks_cache_s,
            min_refresh_s=settings.oidc_jwks_min_refresh_s,
            timeout_s=settings.oidc_timeout_s,
        )
        return cls(
            keys,
            audience=settings.oidc_audience,
            algorithms=list(settings.oidc_algorithms),
            leeway_s=settings.oidc_leeway_s,
            subject_claim=settings.oidc_subject_claim,
            scopes_claim=settings.oidc_scopes_claim,
            grants={
                "classify": frozenset(settings.oidc_classify_values),
                "label": frozenset(settings.oidc_label_values),
                "admin": frozenset(settings.oidc_admin_values),
            },
            rate_limit_per_minute=settings.oidc_rate_limit_per_minute,
            remember_s=settings.auth_cache_ttl_s,
        )

    def verify(self, token: str, *, fetch: bool = True) -> Principal:
        """The token's principal; :class:`errors.Unauthorized` when it does not verify,
        503 when the issuer's keys are needed and cannot be fetched. ``fetch=False``
        answers from memory (see :meth:`answers_from_memory`)."""
        remembered = self._remembered(token)
        if remembered is not None:
            return remembered
        header = self._header(token)
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self.algorithms:
            raise errors.Unauthorized("The token's signing algorithm is not accepted.")
        jwk = self.keys.key(kid, fetch=fetch)
        if jwk is None:
            raise errors.Unauthorized("The token is signed by a key its issuer does not publish.")
        if not _fits(jwk, alg):
            raise errors.Unauthorized("The token's algorithm does not fit its signing key.")
        claims = self._claims(token, jwk, alg)
        subject = claims.get(self.subject_claim)
        if not isinstance(subject, str) or not subject or len(subject) > MAX_SUBJECT_CHARS:
            raise errors.Unauthorized(f"The token has no usable {self.subject_claim!r} claim.")
        principal = Principal(
            subject_id(subject),
            subject,
            self._scopes(claims),
            rate_limit_per_minute=self.rate_limit_per_minute,
        )
        self._remember(token, principal, expires=float(claims["exp"]))
        return principal

    def answers_from_memory(self, token: str) -> bool:
        """Whether :meth:`verify` would answer without the network: a malformed token, one
        verified a moment ago, or one whose key (or its absence) needs no fetch now."""
        if self._remembered(token) is not None:
            return True
        try:
            header = self._header(token)
        except errors.Unauthorized:
            return True
        kid = header.get("kid")
        if header.get("alg") not in self.algorithms or not isinstance(kid, (str, type(None))):
            return True
        return not self.keys.due(kid)

    def knows(self, token: str) -> bool:
        """Whether the token verified a moment ago (one hash to check it again)."""
        return self._remembered(token) is not None

    def presented_subject(self, token: str) -> str | None:
        """The principal id of the subject a token claims, unverified: what the denial
        log records for a token that was refused, as it does the id of an unknown key."""
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return None
        subject = claims.get(self.subject_claim)
        if not isinstance(subject, str) or not 0 < len(subject) <= MAX_SUBJECT_CHARS:
            return None
        return subject_id(subject)

    def _header(self, token: str) -> dict[str, Any]:
        if len(token) > MAX_TOKEN_CHARS or not _JWT.match(token):
            raise errors.Unauthorized("Invalid bearer token.")
        try:
            return jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise errors.Unauthorized("Invalid bearer token.") from e

    def _claims(self, token: str, jwk: dict[str, Any], alg: str) -> dict[str, Any]:
        try:
            key = jwt.PyJWK(jwk, algorithm=alg)
            return jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.keys.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "iss", "aud"], "enforce_minimum_key_length": True},
            )
        except jwt.ExpiredSignatureError as e:
            raise errors.Unauthorized("The token has expired.") from e
        except jwt.ImmatureSignatureError as e:
            raise errors.Unauthorized("The token is not valid yet (nbf or iat).") from e
        except jwt.InvalidAudienceError as e:
            raise errors.Unauthorized("The token is not meant for this service (aud).") from e
        except jwt.InvalidIssuerError as e:
            raise errors.Unauthorized("The token comes from another issuer (iss).") from e
        except jwt.MissingRequiredClaimError as e:
            raise errors.Unauthorized(f"The token lacks the {e.claim!r} claim.") from e
        except jwt.PyJWTError as e:  # the signature, a malformed claim, an unusable key
            raise errors.Unauthorized("Invalid bearer token.") from e

    def _scopes(self, claims: dict[str, Any]) -> frozenset[str]:
        value = _claim(claims, self.scopes_claim)
        if isinstance(value, str):
            values = set(value.split())
        elif isinstance(value, list):
            values = {v for v in value if isinstance(v, str)}
        else:
            values = set()
        return frozenset(scope for scope, granting in self.grants.items() if granting & values)

    def _remembered(self, token: str) -> Principal | None:
        digest = hashlib.sha256(token.encode()).digest()
        with self._lock:
            found = self._verified.get(digest)
            if found is None:
                return None
            if time.monotonic() >= found[0]:
                del self._verified[digest]
                return None
            return found[1]

    def _remember(self, token: str, principal: Principal, *, expires: float) -> None:
        left = min(self.remember_s, expires - time.time())
        if left <= 0:
            return
        digest = hashlib.sha256(token.encode()).digest()
        with self._lock:
            self._verified[digest] = (time.monotonic() + left, principal)
            self._verified.move_to_end(digest)
            while len(self._verified) > _REMEMBERED_MAX:
                self._verified.popitem(last=False)


def _fits(jwk: dict[str, Any], alg: str) -> bool:
    """Whether a published key may verify ``alg``: its kind, its curve, its own ``alg``."""
    if jwk.get("kty") != _KEY_KINDS.get(alg[:2]):
        return False
    if alg in _CURVES and jwk.get("crv") != _CURVES[alg]:
        return False
    return jwk.get("alg", alg) == alg


def _claim(claims: dict[str, Any], name: str) -> Any:
    """A claim by name, else by a dotted path into objects (``realm_access.roles``)."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value
