"""API keys: minting, hashing, checking, revoking.

A key reads ``iiq_<id>_<secret>``: the id (public, 16 hex digits) finds the row, the secret
(192 random bits) is never stored; only HMAC-SHA256(pepper, salt || secret) is, with a salt
of its own per key. A random secret of that size needs no slow password hash: it cannot be
guessed, only stolen, and a stolen database without the pepper tests no guesses. Checks
compare in constant time, and an unknown id costs the same hash as a known one, so neither
the answer nor its timing tells whether a key exists.

Scopes: ``classify``, ``label`` (feedback, and reading stored images and stats) and
``admin`` (model activation, deletion, key management), which implies the other two.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from imageiq import errors
from imageiq.db.schema import ApiKey, AuditEntry
from imageiq.health import Dependency

SCOPES = ("classify", "label", "admin")
_KEY = re.compile(r"^iiq_([0-9a-f]{16})_([0-9a-f]{48})$")
_DUMMY_SALT = "0" * 32


@dataclass(frozen=True)
class Principal:
    """Who a request is: an API key's id, name and scopes."""

    key_id: str
    name: str
    scopes: frozenset[str]
    rate_limit_per_minute: int | None = None
    # Checked against a cached row past its TTL while the database is down: good enough to
    # classify for a grace period, not for the label and admin scopes (fail closed).
    stale: bool = False

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


ANONYMOUS = Principal("anonymous", "auth disabled", frozenset(SCOPES))


def parse_scopes(text: str | Iterable[str]) -> list[str]:
    items = text.split(",") if isinstance(text, str) else list(text)
    scopes = sorted({s.strip() for s in items if s.strip()})
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise errors.ConfigurationError(
            f"Invalid scopes {unknown or text!r}. Only {', '.join(SCOPES)} are supported."
        )
    return scopes


def hash_secret(secret: str, *, salt: str, pepper: bytes) -> str:
    return hmac.new(pepper, f"{salt}:{secret}".encode(), hashlib.sha256).hexdigest()


def create_key(
    engine: Engine,
    *,
    name: str,
    scopes: list[str],
    pepper: bytes,
    rate_limit_per_minute: int | None = None,
    actor: str | None = None,
) -> tuple[str, ApiKey]:
    """A new key: returns the plaintext (shown once, never stored) and its row."""
    if not name.strip() or len(name) > 128:
        raise errors.ConfigurationError("a key name is 1 to 128 characters")
    key_id, secret, salt = secrets.token_hex(8), secrets.token_hex(24), secrets.token_hex(16)
    row = ApiKey(
        id=key_id,
        name=name.strip(),
        scopes=parse_scopes(scopes),
        salt=salt,
        secret_hash=hash_secret(secret, salt=salt, pepper=pepper),
        rate_limit_per_minute=rate_limit_per_minute,
    )
    with Session(engine, expire_on_commit=False) as session, session.begin():
        session.add(row)
        session.add(
            AuditEntry(
                actor=actor,
                action="key.create",
                target=key_id,
                detail={
                    "name": row.name,
                    "scopes": row.scopes,
                    "rate_limit_per_minute": rate_limit_per_minute,
                },
            )
        )
    return f"iiq_{key_id}_{secret}", row


def list_keys(engine: Engine) -> list[ApiKey]:
    with Session(engine, expire_on_commit=False) as session:
        return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))


def revoke_key(engine: Engine, key_id: str, *, actor: str | None = None) -> ApiKey:
    with Session(engine, expire_on_commit=False) as session, session.begin():
        row = session.get(ApiKey, key_id) if re.fullmatch(r"[0-9a-f]{16}", key_id) else None
        if row is None:
            raise errors.KeyNotFound(f"No API key with id {key_id!r}.")
        if row.revoked_at is None:
            row.revoked_at = datetime.now(timezone.utc)
            session.add(
                AuditEntry(
                    actor=actor, action="key.revoke", target=key_id, detail={"name": row.name}
                )
            )
        return row


def _bearer(authorization: str) -> re.Match[str] | None:
    """The key id and secret of ``Bearer iiq_<id>_<secret>``; None for anything else."""
    scheme, _, token = authorization.strip().partition(" ")
    return _KEY.match(token.strip()) if scheme.lower() == "bearer" else None


class KeyRing:
    """Checks bearer keys for the service.

    Rows of existing keys are cached for ``ttl_s`` (a revocation made elsewhere applies
    within that time; one made through this replica at once). Ids that match no key are
    remembered apart, in a bounded LRU, so a flood of made-up keys neither reaches the
    database for each repeat nor evicts the good keys.

    While the database is down, a cached key past its TTL is still accepted for
    ``stale_grace_s`` more seconds, marked :attr:`Principal.stale` (the endpoints let a
    stale key classify, nothing else); after that, and for any key not cached, the answer
    is 503 ``database_unavailable``.
    """

    UNKNOWN_MAX = 10_000

    def __init__(
        self,
        engine: Engine,
        *,
        pepper: bytes,
        ttl_s: float,
        stale_grace_s: float = 0.0,
        database: Dependency | None = None,
    ) -> None:
        self._engine, self._pepper, self._ttl = engine, pepper, ttl_s
        self._grace = stale_grace_s
        self._database = database
        self._lock = threading.Lock()
        self._known: dict[str, tuple[float, dict[str, Any]]] = {}
        self._unknown: OrderedDict[str, float] = OrderedDict()

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise errors.Unauthorized("Missing API key: send `Authorization: Bearer <key>`.")
        match = _bearer(authorization)
        key_id, secret = match.groups() if match else ("", "")
        row, stale = self._row(key_id) if match else (None, False)
        salt = row["salt"] if row else _DUMMY_SALT
        expected = row["secret_hash"] if row else "0" * 64
        ok = hmac.compare_digest(hash_secret(secret, salt=salt, pepper=self._pepper), expected)
        if not ok or row is None or row["revoked"]:
            raise errors.Unauthorized("Invalid API key.")
        return Principal(
            key_id, row["name"], frozenset(row["scopes"]), row["rate_limit"], stale=stale
        )

    def answers_from_memory(self, authorization: str | None) -> bool:
        """Whether :meth:`authenticate` would answer without the database: the key is
        malformed or missing (refused as is), its row (or its absence) is cached and fresh,
        or the database is known to be down."""
        match = _bearer(authorization or "")
        if match is None:
            return True
        key_id, now = match.group(1), time.monotonic()
        with self._lock:
            known = self._known.get(key_id)
            unknown_at = self._unknown.get(key_id)
        if known is not None and now - known[0] < self._ttl:
            return True
        if unknown_at is not None and now - unknown_at < self._ttl:
            return True
        return self._database is not None and not self._database.available()

    def knows(self, authorization: str | None) -> bool:
        """Whether the key's id is one this replica checked and found to exist, within its
        TTL: checking its secret then costs one hash, no database."""
        match = _bearer(authorization or "")
        if match is None:
            return False
        with self._lock:
            known = self._known.get(match.group(1))
        return known is not None and time.monotonic() - known[0] < self._ttl

    def forget(self, key_id: str) -> None:
        with self._lock:
            self._known.pop(key_id, None)
            self._unknown.pop(key_id, None)

    def _row(self, key_id: str) -> tuple[dict[str, Any] | None, bool]:
        """The key's row (None: no such key) and whether it is stale."""
        now = time.monotonic()
        with self._lock:
            known = self._known.get(key_id)
            unknown_at = self._unknown.get(key_id)
        if known is not None and now - known[0] < self._ttl:
            return known[1], False
        if unknown_at is not None and now - unknown_at < self._ttl:
            return None, False
        if self._database is not None and not self._database.available():
            return self._stale(known, now)  # known to be down: no wait for its timeout
        try:
            with Session(self._engine) as session:
                found = session.get(ApiKey, key_id)
                row = None
                if found is not None:
                    row = {
                        "name": found.name,
                        "scopes": list(found.scopes),
                        "salt": found.salt,
                        "secret_hash": found.secret_hash,
                        "rate_limit": found.rate_limit_per_minute,
                        "revoked": found.revoked_at is not None,
                    }
        except SQLAlchemyError as e:
            if self._database is not None:
                self._database.failed(e)
            return self._stale(known, now)
        with self._lock:
            if row is not None:
                self._known[key_id] = (now, row)
                self._unknown.pop(key_id, None)
            else:
                self._known.pop(key_id, None)  # deleted from the table meanwhile
                self._unknown[key_id] = now
                self._unknown.move_to_end(key_id)
                while len(self._unknown) > self.UNKNOWN_MAX:
                    self._unknown.popitem(last=False)
        return row, False

    def _stale(
        self, known: tuple[float, dict[str, Any]] | None, now: float
    ) -> tuple[dict[str, Any] | None, bool]:
        """The database cannot be asked: a cached row within its grace, or 503."""
        if known is not None and now - known[0] < self._ttl + self._grace:
            return known[1], True
        raise errors.DatabaseUnavailable(
            "Cannot check the API key: the database is unavailable.", retry_after=2
        )
