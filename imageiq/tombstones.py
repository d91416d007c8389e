"""Tombstones: an image forgotten through one replica stays forgotten on all of them.

A deletion commits a tombstone (the image's sha256 and the moment it was forgotten) in the
transaction that removes the image's rows, and only then deletes the object, so no row ever
names a missing object. Another replica may still hold records of the image (queued,
retried, spooled while the database was away), and its own upload of the object: every
writer asks the tombstones first. A record accepted (``created_at``) at or before
``deleted_at`` was in flight when the image was forgotten and is dropped; one accepted
after it is a fresh upload of the same bytes and is kept.

Why the checks cannot be outrun:

* Rows. :func:`drop_forgotten` runs inside the writer's insert transaction and the deletion
  writes its tombstone inside its own, both behind :func:`lock`. On PostgreSQL (READ
  COMMITTED) a check made before a concurrent deletion commits would not see the tombstone,
  and that deletion's ``DELETE`` would not see the still uncommitted rows: both would
  commit and the rows survive. So both transactions first take a transaction-scoped
  advisory lock per image (``pg_advisory_xact_lock`` on the sha's hash, in one global
  order, so two writers never deadlock). Whichever holds it first commits before the other
  reads: the writer then sees the tombstone (each statement reads what is committed), or the
  deletion's ``DELETE`` sees the writer's rows. A hash collision only serialises two
  images. On SQLite a transaction takes the database's one write lock first (a write that
  changes nothing), which serialises it with the deletion the same way.
* Objects. A writer checks :func:`is_forgotten` before ``store.put`` and again after it
  (:func:`put_object`). The deletion commits the tombstone, then deletes the object. If the
  tombstone committed before the second check, that check sees it and the writer deletes
  what it put; if after, the put was already done (it precedes the check), so the
  deletion's own delete, which follows the commit, removes it. A writer that skips the
  checks (the database was away) is caught by the row transaction: dropping an image row
  marks its tombstone's object as pending again, for the writer (or the sweep) to delete.
* Every object delete is :func:`delete_object`: behind the same lock, and skipped while an
  image row exists, which after a deletion can only be a fresh upload of the same bytes (the
  same object, content-addressed). One that fails leaves ``object_deleted_at`` empty and
  :func:`sweep` retries it.

Left open: a fresh upload of the same bytes whose object lands before such a delete and
whose row commits after it (a window of the delete's duration, or a writer's outage) ends
with a row and no object; closing it needs the writer to keep the bytes until its row is in.
Both times come from the replicas' clocks (``records.utcnow``): a skew between replicas
shifts the boundary between "in flight" and "fresh" by that much.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, Engine, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from imageiq import errors
from imageiq.db.schema import Image, Tombstone, utcnow
from imageiq.storage import ObjectStore

_SHA256 = re.compile(r"[0-9a-f]{64}")
# The first key of the advisory locks, so they never meet another use of advisory locks.
_LOCK_SPACE = 0x1B5A6E
_PG_LOCK = text(
    "SELECT pg_advisory_xact_lock(:space, k) FROM "
    "(SELECT DISTINCT hashtext(s) AS k FROM unnest(CAST(:shas AS text[])) AS s "
    "ORDER BY k OFFSET 0) AS keys"
)
# A write that changes nothing: it takes SQLite's write lock for the transaction.
_SQLITE_LOCK = text("UPDATE tombstones SET deleted_at = deleted_at WHERE 1 = 0")


def lock(connection: Connection, shas: Iterable[str]) -> None:
    """Serialise this transaction with every other that writes or forgets these images,
    until it ends. Call it first in the transaction."""
    wanted = sorted(set(shas))
    if not wanted:
        return
    if connection.dialect.name == "postgresql":
        connection.execute(_PG_LOCK, {"space": _LOCK_SPACE, "shas": wanted})
    else:
        connection.execute(_SQLITE_LOCK)


def bury(
    connection: Connection,
    sha256: str,
    *,
    at: datetime,
    deleted_by: str | None = None,
    request_id: str | None = None,
) -> None:
    """Write (or move forward) the image's tombstone, in the caller's transaction, which
    must also delete the rows. Its object counts as not deleted until
    :func:`delete_object` says so. An id that is no SHA-256 names no image: nothing to
    bury."""
    if not _SHA256.fullmatch(sha256):
        return
    lock(connection, [sha256])
    before = connection.scalar(select(Tombstone.deleted_at).where(Tombstone.sha256 == sha256))
    values = {
        # Never backwards (two deletions on replicas whose clocks differ).
        "deleted_at": max(_aware(at), before) if before is not None else _aware(at),
        "deleted_by": deleted_by,
        "request_id": request_id,
        "object_deleted_at": None,
    }
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(Tombstone).values(sha256=sha256, **values)
    connection.execute(
        statement.on_conflict_do_update(index_elements=[Tombstone.sha256], set_=values)
    )


def drop_forgotten(
    connection: Connection, *batches: list[dict[str, Any]]
) -> list[list[dict[str, Any]]]:
    """Each batch of rows (``records.as_row``: images keyed by ``sha256``, predictions by
    ``image_sha256``) less those of forgotten images accepted before they were forgotten.
    Call it first in the transaction that inserts what it returns: it locks the images
    until that commits. An image row it drops marks its tombstone's object as pending (the
    writer stored it before the row): delete it after the commit with :func:`sweep` (the
    periodic sweep does it otherwise)."""
    shas = {_sha(row) for batch in batches for row in batch}
    lock(connection, shas)
    if not shas:
        return [list(batch) for batch in batches]
    query = select(Tombstone.sha256, Tombstone.deleted_at).where(Tombstone.sha256.in_(shas))
    deleted_at = {sha256: at for sha256, at in connection.execute(query)}
    if not deleted_at:
        return [list(batch) for batch in batches]

    def forgotten(row: dict[str, Any]) -> bool:
        at = deleted_at.get(_sha(row))
        return at is not None and _aware(row["created_at"]) <= _aware(at)

    kept = [[row for row in batch if not forgotten(row)] for batch in batches]
    objects = {row["sha256"] for batch in batches for row in batch if _is_image(row)}
    dropped = {_sha(row) for batch in batches for row in batch if forgotten(row)} & objects
    if dropped:
        connection.execute(
            update(Tombstone).where(Tombstone.sha256.in_(dropped)).values(object_deleted_at=None)
        )
    return kept


def is_forgotten(engine: Engine, sha256: str, accepted_at: datetime) -> bool:
    """Whether a record of the image accepted at ``accepted_at`` must be dropped: the image
    was forgotten at or after that moment."""
    with engine.connect() as connection:
        at = connection.scalar(select(Tombstone.deleted_at).where(Tombstone.sha256 == sha256))
    return at is not None and _aware(accepted_at) <= _aware(at)


def put_object(
    engine: Engine,
    store: ObjectStore,
    sha256: str,
    data: bytes,
    *,
    content_type: str,
    accepted_at: datetime,
) -> bool:
    """``store.put`` unless the image was forgotten after ``accepted_at``, checked before
    the put and again after it (see the module's docstring); False when it was, and
    nothing of it is left in the store. The database's errors propagate (the caller keeps
    the record and retries), and so do the store's."""
    if is_forgotten(engine, sha256, accepted_at):
        return False
    store.put(sha256, data, content_type=content_type)
    if not is_forgotten(engine, sha256, accepted_at):
        return True
    _mark_pending(engine, [sha256])  # a failed delete below is the sweep's
    delete_object(engine, store, sha256)
    return False


def delete_object(engine: Engine, store: ObjectStore, sha256: str) -> bool:
    """Delete a forgotten image's object, unless an image row names it (a fresh upload of
    the same bytes), and note it done on the tombstone. Behind :func:`lock`, so no row can
    commit between the look and the delete. True when it deleted. A store error rolls
    back: the tombstone stays pending and the error propagates."""
    with engine.begin() as connection:
        lock(connection, [sha256])
        live = connection.scalar(select(Image.sha256).where(Image.sha256 == sha256))
        if live is None:
            store.delete(store.key_for(sha256))
        connection.execute(
            update(Tombstone).where(Tombstone.sha256 == sha256).values(object_deleted_at=utcnow())
        )
    return live is None


def sweep(
    engine: Engine, store: ObjectStore, *, shas: Iterable[str] | None = None, limit: int = 500
) -> int:
    """Finish the object deletes left pending (oldest tombstones first; only ``shas``
    when given): after a deletion whose object delete failed, or a writer that put an
    object its row transaction then dropped. Stops at the first store error (the store is
    away; the next pass goes on). Returns how many objects it deleted."""
    query = (
        select(Tombstone.sha256)
        .where(Tombstone.object_deleted_at.is_(None))
        .order_by(Tombstone.deleted_at)
        .limit(limit)
    )
    if shas is not None:
        query = query.where(Tombstone.sha256.in_(set(shas)))
    with engine.connect() as connection:
        pending = list(connection.scalars(query))
    deleted = 0
    for sha256 in pending:
        try:
            deleted += delete_object(engine, store, sha256)
        except errors.StorageUnavailable:
            break
    return deleted


def _mark_pending(engine: Engine, shas: list[str]) -> None:
    with engine.begin() as connection:
        connection.execute(
            update(Tombstone).where(Tombstone.sha256.in_(shas)).values(object_deleted_at=None)
        )


def _is_image(row: dict[str, Any]) -> bool:
    return "image_sha256" not in row


def _sha(row: dict[str, Any]) -> str:
    return str(row["sha256"] if _is_image(row) else row["image_sha256"])


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)
