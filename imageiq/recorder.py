"""The prediction log: every served prediction (and every stored image's row) reaches the
database, off the request path and without loss.

Requests hand records to :meth:`Recorder.record`, which never blocks and does no disk I/O:
a queue in memory that one writer thread drains in batches (one transaction, ``INSERT ...
ON CONFLICT DO NOTHING``, so a replayed record is written once). While the database or the
object store is down the writer keeps one batch in memory and moves the rest to the spool
(:class:`imageiq.spool.Spool`, on the pod's volume); an image accepted while they are down
is written to the spool before the request is answered (:meth:`record_durably`, in a worker
thread). Spooled records are replayed, oldest first, once the dependency is back, by this
process or, if it is gone, by whichever instance adopts its spool. On shutdown the writer
flushes, and spools what it could not write.

What waits (in memory and on disk) is bounded in bytes, ``pending_max_bytes``: past it a
new record is refused with 503 ``backlog_full`` instead of being accepted. A record is
dropped only when its image is forgotten (``DELETE /v1/admin/images/{id}``).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from imageiq import errors, tombstones
from imageiq.catalog import insert_ignore
from imageiq.db.engine import is_transient
from imageiq.db.schema import Image, Prediction
from imageiq.health import Dependency
from imageiq.metrics import metrics
from imageiq.records import ImageRecord, PredictionRecord, Record, as_row, utcnow
from imageiq.spool import Spool
from imageiq.storage import ObjectStore

log = logging.getLogger("imageiq.recorder")
# How long a forgotten image is remembered, to drop its records still in flight.
_REMEMBER = timedelta(minutes=10)
# What a record costs in the backlog, besides its image's bytes (its row, its JSON line).
RECORD_OVERHEAD = 1024
# Seconds between the writer's heartbeats, and between its looks for orphaned spools.
_HEARTBEAT_S = 10.0
_ADOPT_S = 30.0
_SWEEP_S = 60.0


def record_cost(record: Record) -> int:
    data = record.data if isinstance(record, ImageRecord) else None
    return RECORD_OVERHEAD + (len(data) * 4 // 3 if data else 0)  # base64 in the spool


class Recorder:
    def __init__(
        self,
        engine: Engine,
        store: ObjectStore,
        *,
        database: Dependency,
        spool: Spool,
        max_bytes: int,
        queue_size: int,
        batch_size: int,
        flush_interval_s: float,
    ) -> None:
        self._engine, self._store, self.database = engine, store, database
        self._spool = spool
        self.max_bytes = max_bytes
        self._queue: queue.Queue[Record] = queue.Queue(maxsize=queue_size)
        self._queue_size, self._batch_size = queue_size, batch_size
        self._interval = flush_interval_s
        self._rows: deque[Record] = deque()  # ready for the database
        self._uploads: deque[ImageRecord] = deque()  # images whose object is not stored yet
        self._lock = threading.Lock()  # guards the deques, _forgotten and the spool
        self._writing = threading.Lock()  # held while a batch is written (see forget)
        self._forgotten: dict[str, datetime] = {}
        # Bytes of the records in the queue (the request side adds, the writer takes) and
        # of those the writer holds; the spool counts its own. Read without a lock.
        self._queued_bytes = 0
        self._held_bytes = 0
        self._spooled = spool.records
        self._spooled_bytes = spool.bytes
        self._heartbeat_at = self._adopt_at = self._swept_at = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="imageiq-recorder", daemon=True)
        self._gauge = metrics().records_pending
        self._written = metrics().records_written
        if self._spooled:
            log.info("%d spooled records wait to be replayed from %s", self._spooled, spool.dir)

    # --- request side -----------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def record(self, item: Record) -> None:
        """Accept a record; never blocks, never touches the disk. 503 ``backlog_full``
        when the records waiting (memory and spool) would pass ``max_bytes``, or the queue
        is full (the writer cannot keep up)."""
        cost = record_cost(item)
        self._admit(cost)
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            raise errors.BacklogFull(
                f"{self._queue_size} records wait to be written, the most this server "
                "queues; retry shortly.",
                retry_after=5,
            ) from None
        self._queued_bytes += cost

    def record_durably(self, item: Record) -> None:
        """Accept a record onto the spool (fsynced) before returning, for an image accepted
        while its store or the database is down: it survives the process being killed.
        Disk I/O: call it from a worker thread. 503 ``backlog_full`` as :meth:`record`."""
        self._admit(record_cost(item))
        with self._lock:
            self._spool.append([item])
            self._sync_spool()

    @property
    def pending_bytes(self) -> int:
        """Bytes of the records accepted and not yet written (memory and spool)."""
        return self._queued_bytes + self._held_bytes + self._spooled_bytes

    def _admit(self, cost: int) -> None:
        if self.pending_bytes + cost > self.max_bytes:
            raise errors.BacklogFull(
                f"{self.pending_bytes} bytes of records wait for the database or the object "
                f"store, the most this server keeps ({self.max_bytes}); retry later.",
                details={"pending_bytes": self.pending_bytes, "max_bytes": self.max_bytes},
                retry_after=30,
            )

    def pending_images(self) -> set[str]:
        # Lock-free (the event loop calls it): list() of a deque is one step under the GIL.
        held = [*list(self._uploads), *list(self._rows), *list(self._queue.queue)]
        return {r.sha256 for r in held if isinstance(r, ImageRecord)}

    @property
    def pending(self) -> int:
        """Records accepted and not yet in the database (queue, memory and spool); read
        without the lock, so a probe never waits behind spool-file work."""
        return self._queue.qsize() + len(self._rows) + len(self._uploads) + self._spooled

    def forget(self, sha256: str) -> None:
        """Drop every record of an image accepted until now: queued, held or spooled. Waits
        for a batch being written, so the caller may delete the image's rows after it."""
        with self._writing, self._lock:
            now = utcnow()
            self._forgotten = {k: t for k, t in self._forgotten.items() if now - t < _REMEMBER}
            self._forgotten[sha256] = now
            self._rows = deque(r for r in self._rows if r.sha256 != sha256)
            self._uploads = deque(r for r in self._uploads if r.sha256 != sha256)
            self._held_bytes = self._count_held()
            self._spool.forget(sha256)
            self._sync_spool()
        # Records still in the queue are dropped by the writer, which checks _forgotten.

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush what can be written within ``timeout_s``; spool the rest."""
        self._stop.set()
        if self._thread.is_alive():  # never started: nothing written yet, all is spooled
            self._thread.join(timeout_s)
        with self._writing, self._lock:  # nothing is being written while we snapshot
            held = [*self._uploads, *self._rows, *self._drain(None)]
            left = [r for r in held if self._keep(r)]
            self._rows.clear()
            self._uploads.clear()
            if left:
                self._write_spool(left)
                log.warning(
                    "shutdown: %d records spooled to %s for the next start",
                    len(left),
                    self._spool.dir,
                )
            self._held_bytes = self._queued_bytes = 0
            try:
                self._spool.release()  # the next instance adopts what is left at once
            except OSError as e:
                log.error("cannot release the spool %s: %s", self._spool.dir, e)

    # --- writer thread ----------------------------------------------------------------------
    def _run(self) -> None:
        backoff = self._interval
        while True:
            stopping = self._stop.is_set()
            try:
                batch, waiting = self._step()
            except Exception:  # the writer must outlive any one bad record or full disk
                log.exception("the recorder's writer failed; retrying")
                batch, waiting = [], True
            self._gauge.set(self.pending)
            if stopping and (waiting or not batch):
                return
            self._look_after_spool()
            if waiting:
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            else:
                backoff = self._interval
                if not batch:
                    self._wait_for_work()
                elif len(batch) < self._batch_size:
                    # A partial batch was written: gather for one interval before the next,
                    # so a steady stream is written in batches. Without this wait each
                    # record that arrived woke the writer for a transaction of its own:
                    # 0.82 core-ms per request at 16 clients, 0.05 in batches of 40
                    # (docs/performance.md). The first record after a quiet spell is still
                    # written at once.
                    self._stop.wait(self._interval)

    def _step(self) -> tuple[list[Record], bool]:
        """One round: take, upload, write a batch. Returns the batch and whether a
        dependency keeps records waiting."""
        self._take()
        waiting = self._upload()
        with self._lock:
            batch = list(itertools.islice(self._rows, self._batch_size))
        if batch:
            with self._writing:
                written, db_waiting = self._write(batch)
            with self._lock:
                done = {id(r) for r in written}
                self._rows = deque(r for r in self._rows if id(r) not in done)
            waiting = waiting or db_waiting
        with self._lock:
            if waiting:
                self._overflow()
            self._held_bytes = self._count_held()
        return batch, waiting

    def _take(self) -> None:
        """Queue (and, while the database keeps up, spool) into the two backlogs."""
        with self._lock:
            taken = self._drain(self._batch_size)
            replay = not self._stop.is_set() and self.database.available()
            if replay and len(self._rows) < self._batch_size:
                taken.extend(self._replay_one())
            for record in taken:
                self._sort(record)
            self._held_bytes = self._count_held()

    def _sort(self, record: Record) -> None:
        if not self._keep(record):
            return
        if isinstance(record, ImageRecord) and record.data is not None:
            self._uploads.append(record)
        else:
            self._rows.append(record)

    def _upload(self) -> bool:
        """Store waiting images' objects; each done one moves to the rows. True while some
        still wait for the store (their rows stay out: no row points at a missing object).
        Holds ``_writing`` per upload, so ``forget`` never races one in flight."""
        while True:
            with self._lock:
                if not self._uploads:
                    return False
                record = self._uploads[0]
            if not self._store.dependency.available():
                return True
            with self._writing:
                if not self._keep(record):  # forgotten while it waited
                    self._remove_upload(record)
                    continue
                try:
                    kept = self._put(record)
                except errors.StorageUnavailable:
                    return True
                except Exception as e:  # refused for good (bad hash, ...): set it aside
                    self._reject([record], e)
                    self._remove_upload(record)
                    continue
                if not kept:  # forgotten on some replica: nothing of it is stored
                    self._remove_upload(record)
                    continue
                record.data = None
                if self._remove_upload(record):
                    with self._lock:
                        self._rows.append(record)

    def _put(self, record: ImageRecord) -> bool:
        """The image's object, unless a tombstone forgot it (checked before and after the
        put: imageiq.tombstones.put_object). False when forgotten."""
        data = record.data or b""
        try:
            return tombstones.put_object(
                self._engine,
                self._store,
                record.sha256,
                data,
                content_type=record.content_type,
                accepted_at=record.created_at,
            )
        except SQLAlchemyError as e:
            if not is_transient(e):
                raise
            # The database is away: the object is stored now, and the row's transaction
            # decides later (drop_forgotten), the sweep deleting the object if forgotten.
            self.database.failed(e)
            self._store.put(record.sha256, data, content_type=record.content_type)
            return True

    def _remove_upload(self, record: ImageRecord) -> bool:
        """Take ``record`` (by identity) off the uploads; False when it was not there."""
        with self._lock:
            for i, held in enumerate(self._uploads):
                if held is record:
                    del self._uploads[i]
                    return True
        return False

    def _wait_for_work(self) -> None:
        try:
            item = self._queue.get(timeout=self._interval)
        except queue.Empty:
            return
        cost = record_cost(item)
        with self._lock:
            self._sort(item)
            self._held_bytes = self._count_held()
        self._queued_bytes -= cost

    def _drain(self, limit: int | None) -> list[Record]:
        """Take up to ``limit`` records off the queue. The caller holds ``_lock`` and
        recounts the held bytes before the lock is released."""
        items: list[Record] = []
        while limit is None or len(items) < limit:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        taken = sum(record_cost(r) for r in items)
        self._held_bytes += taken  # before the queue's share goes: never under-counted
        self._queued_bytes -= taken
        return items

    def _count_held(self) -> int:
        return sum(record_cost(r) for r in self._rows) + sum(record_cost(r) for r in self._uploads)

    def _look_after_spool(self) -> None:
        """The heartbeat that keeps this instance's spool its own, and now and then the
        adoption of the spools of instances that are gone, and the sweep that deletes the
        objects of forgotten images a writer put back (imageiq.tombstones.sweep)."""
        now = time.monotonic()
        if now - self._heartbeat_at < _HEARTBEAT_S:
            return
        self._heartbeat_at = now
        if now - self._swept_at >= _SWEEP_S:
            self._swept_at = now
            if self.database.available() and self._store.dependency.available():
                try:
                    tombstones.sweep(self._engine, self._store)
                except Exception as e:  # the next pass retries
                    log.warning("tombstone sweep failed: %s", e)
        with self._lock:
            try:
                self._spool.heartbeat()
                if now - self._adopt_at >= _ADOPT_S:
                    self._adopt_at = now
                    self._spool.adopt_orphans()
                    self._sync_spool()
            except OSError as e:
                log.error("spool upkeep failed: %s", e)

    def _keep(self, record: Record) -> bool:
        forgotten = self._forgotten.get(record.sha256)
        return forgotten is None or record.created_at > forgotten

    def _write(self, batch: list[Record]) -> tuple[list[Record], bool]:
        """Insert the rows in one transaction. Returns the records done with (written, or
        set aside when the database refuses them) and whether the database is away."""
        dropped = [r for r in batch if not self._keep(r)]  # forgotten meanwhile
        batch = [r for r in batch if self._keep(r)]
        try:
            self._insert(batch)
        except Exception as e:
            if is_transient(e):  # the database is away: keep everything, retry
                self.database.failed(e)
                return dropped, True
            # A record the database refuses: find it, set it aside.
            log.error("the database refused a batch (%s); writing it record by record", e)
            done, away = self._write_one_by_one(batch)
            return done + dropped, away
        self.database.succeeded()
        return batch + dropped, False

    def _write_one_by_one(self, batch: list[Record]) -> tuple[list[Record], bool]:
        done: list[Record] = []
        refused: list[Record] = []
        away = False
        for record in batch:
            try:
                self._insert([record])
            except Exception as e:
                if is_transient(e):
                    self.database.failed(e)
                    away = True
                    break
                log.error("record of image %s refused by the database: %s", record.sha256, e)
                refused.append(record)
            done.append(record)
        self._reject(refused, None)
        return done, away

    def _insert(self, records: list[Record]) -> None:
        images = [as_row(r) for r in records if isinstance(r, ImageRecord)]
        predictions = [as_row(r) for r in records if isinstance(r, PredictionRecord)]
        if not images and not predictions:
            return
        with self._engine.begin() as connection:
            # First in the transaction: it locks these images until the commit, so a
            # deletion on another replica either sees these rows or they see its tombstone.
            images_kept, predictions_kept = tombstones.drop_forgotten(
                connection, images, predictions
            )
            insert_ignore(connection, Image, images_kept)
            insert_ignore(connection, Prediction, predictions_kept)
        self._written.labels("image").inc(len(images_kept))
        self._written.labels("prediction").inc(len(predictions_kept))
        dropped = {r["sha256"] for r in images} - {r["sha256"] for r in images_kept}
        if dropped:  # forgotten elsewhere: their objects (stored before the rows) go too
            try:
                tombstones.sweep(self._engine, self._store, shas=dropped)
            except Exception as e:  # the periodic sweep finishes it
                log.warning("objects of %d forgotten images left to the sweep: %s", len(dropped), e)

    def _reject(self, records: list[Record], error: Exception | None) -> None:
        """Set records aside under spool/rejected/ for an operator: never dropped."""
        if not records:
            return
        path = self._spool.reject(records)
        if error is not None:
            log.error("%d records set aside in %s: %s", len(records), path, error)

    # --- spool ------------------------------------------------------------------------------
    def _overflow(self) -> None:
        """While a dependency is down, keep one batch in memory and spool the rest: on the
        pod's volume they survive the process, and the memory stays small."""
        for held in (self._rows, self._uploads):
            while len(held) > self._batch_size:
                count = min(self._batch_size, len(held) - self._batch_size)
                chunk: list[Record] = [held.pop() for _ in range(count)]
                self._write_spool(list(reversed(chunk)))

    def _write_spool(self, records: list[Record]) -> None:
        self._spool.append(records)
        self._sync_spool()

    def _sync_spool(self) -> None:
        self._spooled, self._spooled_bytes = self._spool.records, self._spool.bytes

    def _replay_one(self) -> list[Record]:
        records = self._spool.pop_oldest()
        self._sync_spool()
        if records:
            log.info("replaying %d spooled records", len(records))
        return records
