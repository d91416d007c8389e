"""The audit log of refused attempts: every 401 and 403 becomes an ``auth.denied`` entry,
off the request path and at a bounded cost.

The HTTP gate calls :meth:`DenialLog.record`, which never blocks and never raises: a
bounded queue that one writer thread drains in batches (one transaction each), at most
``max_per_s`` rows a second. A flood of bad keys is exactly when denials come fastest, and
it must not turn into as many database writes: what does not fit in the queue is dropped,
counted (:attr:`DenialLog.dropped`), and the count itself is written as an
``auth.denied.dropped`` entry, so the log says how much it left out. While the database is
away the writer keeps its batch and retries; new denials wait in the queue meanwhile.

The key id recorded is the one presented, when it was well formed (``iiq_<16 hex>_...``):
the id of an unknown or revoked key is worth knowing, its secret is never kept. For an
OpenID Connect token it is the principal id of the subject the token claims
(``oidc:<subject>``, :mod:`imageiq.oidc`; unverified when the token was refused, as an
unknown key's id is); the token itself is never kept.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from typing import Any

from sqlalchemy import Engine, insert

from imageiq.db.engine import is_transient
from imageiq.db.schema import AuditEntry, utcnow
from imageiq.health import Dependency
from imageiq.oidc import SUBJECT_ID

log = logging.getLogger("imageiq.audit")
DENIED = "auth.denied"
DROPPED = "auth.denied.dropped"
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_PRESENTED = re.compile(r"^iiq_([0-9a-f]{16})_[^\s_]*$")


def presented_key_id(authorization: str | None) -> str | None:
    """The key id of ``Authorization: Bearer iiq_<id>_<secret>``, whether or not the key
    exists; None for a missing header, another scheme or anything not shaped like a key."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    match = _PRESENTED.match(token.strip()) if scheme.lower() == "bearer" else None
    return match.group(1) if match else None


def _is_principal_id(key_id: object) -> bool:
    """An API key's id or a token subject's principal id (never free text)."""
    return isinstance(key_id, str) and bool(
        _KEY_ID.fullmatch(key_id) or SUBJECT_ID.fullmatch(key_id)
    )


def _text(value: object, limit: int) -> str | None:
    """A column-sized, printable copy of what a client sent (a path, a request id)."""
    if value is None:
        return None
    text = "".join(c if c.isprintable() else "?" for c in str(value))
    return text[:limit]


class DenialLog:
    """Writes ``auth.denied`` audit entries from a bounded queue, in batches."""

    def __init__(
        self,
        engine: Engine,
        *,
        database: Dependency,
        queue_size: int = 1000,
        batch_size: int = 100,
        max_per_s: float = 50.0,
        flush_interval_s: float = 0.5,
    ) -> None:
        self._engine, self.database = engine, database
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=queue_size)
        self._batch_size, self._interval = batch_size, flush_interval_s
        self._min_gap_s = 1.0 / max_per_s  # per row: batches are spaced to keep the rate
        self._count_lock = threading.Lock()
        self._dropped = 0  # since start, read by metrics and tests
        self._reported = 0  # of those, already written as an auth.denied.dropped entry
        self._written = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="imageiq-denials", daemon=True)

    # --- request side -----------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def record(
        self,
        *,
        key_id: str | None,
        status: int,
        code: str,
        method: str,
        path: str,
        client: str | None,
        request_id: str,
        client_request_id: str | None,
    ) -> None:
        """Accept one refused attempt. Never blocks, never raises: a full queue drops it
        (and counts it)."""
        try:
            row = {
                "at": utcnow(),
                "actor": key_id if _is_principal_id(key_id) else None,
                "action": DENIED,
                "target": _text(path, 255),
                "detail": {
                    "status": int(status),
                    "code": _text(code, 64),
                    "method": _text(method, 16),
                    "client": _text(client, 64),
                },
                "request_id": _text(request_id, 64),
                "client_request_id": _text(client_request_id, 64),
            }
            self._queue.put_nowait(row)
        except Exception:  # queue.Full, or a value no str() takes: never the caller's problem
            with self._count_lock:
                self._dropped += 1

    @property
    def dropped(self) -> int:
        """Denials left out since start (queue full or refused by the database)."""
        return self._dropped

    @property
    def written(self) -> int:
        return self._written

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what the queue holds within ``timeout_s``; the rest is lost (and logged)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        left = self._queue.qsize()
        if left:
            log.warning("shutdown: %d denied attempts not written to the audit log", left)

    # --- writer thread ----------------------------------------------------------------------
    def _run(self) -> None:
        batch: list[dict[str, Any]] = []
        backoff = self._interval
        while True:
            stopping = self._stop.is_set()
            if len(batch) < self._batch_size:
                batch.extend(self._take(self._batch_size - len(batch), wait=not batch))
            summary = self._summary()
            if not batch and summary is None:
                if stopping:
                    return
                continue
            started = time.monotonic()
            try:
                self._insert([*batch, *([summary] if summary else [])])
            except Exception as e:  # the writer must outlive any one bad batch
                if is_transient(e):
                    self.database.failed(e)
                    if stopping:
                        log.warning("shutdown: %d denied attempts not written", len(batch))
                        return
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                log.exception("the audit log refused %d denied attempts", len(batch))
                with self._count_lock:
                    self._dropped += len(batch)
            else:
                self.database.succeeded()
                self._written += len(batch)
                if summary is not None:
                    self._reported = summary["detail"]["total"]
            rows = len(batch) + (summary is not None)
            batch, backoff = [], self._interval
            if not stopping:  # at most max_per_s rows a second, on average
                self._stop.wait(max(0.0, started + self._min_gap_s * rows - time.monotonic()))

    def _take(self, limit: int, *, wait: bool) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        if wait and not self._stop.is_set():
            try:
                items.append(self._queue.get(timeout=self._interval))
            except queue.Empty:
                return items
        while len(items) < limit:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _summary(self) -> dict[str, Any] | None:
        """An ``auth.denied.dropped`` entry when denials were dropped since the last one."""
        total = self._dropped
        if total == self._reported:
            return None
        return {
            "at": utcnow(),
            "actor": None,
            "action": DROPPED,
            "target": None,
            "detail": {"count": total - self._reported, "total": total},
            "request_id": None,
            "client_request_id": None,
        }

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        with self._engine.begin() as connection:
            connection.execute(insert(AuditEntry), rows)
