"""The prediction log: every served prediction (and every stored image's row) reaches the
database, off the request path and without loss.

Requests hand records to :meth:`Recorder.record`, which never blocks: a bounded queue that
one writer thread drains in batches (one transaction, ``INSERT ... ON CONFLICT DO NOTHING``,
so a replayed record is written once). While the database or the object store is down the
writer keeps the records, retries with back-off, and moves what exceeds the queue size to
spool files under ``spool_dir``; those are replayed, oldest first, once it is back, at the
next start if need be. On shutdown the writer flushes, and spools what it could not write.
A record is dropped only when its image is forgotten (``DELETE /v1/images/{id}``).
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import (
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from imageiq import errors
from imageiq.db.schema import Image, Prediction
from imageiq.health import Dependency
from imageiq.metrics import metrics
from imageiq.records import (
    ImageRecord,
    PredictionRecord,
    Record,
    encode,
    read_spool,
    utcnow,
    write_spool,
)
from imageiq.storage import ObjectStore

log = logging.getLogger("imageiq.recorder")
# The database is away (down, restarting, unreachable): keep the records and retry.
TRANSIENT = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout)


class Recorder:
    def __init__(
        self,
        engine: Engine,
        store: ObjectStore,
        *,
        database: Dependency,
        spool_dir: Path,
        queue_size: int,
        batch_size: int,
        flush_interval_s: float,
    ) -> None:
        self._engine, self._store, self.database = engine, store, database
        self._spool = spool_dir
        self._rejected = spool_dir / "rejected"
        self._rejected.mkdir(parents=True, exist_ok=True)
        self._queue: queue.Queue[Record] = queue.Queue(maxsize=queue_size)
        self._queue_size, self._batch_size = queue_size, batch_size
        self._interval = flush_interval_s
        self._backlog: deque[Record] = deque()  # taken from the queue, not yet written
        self._lock = threading.Lock()  # guards _backlog, _forgotten and the spool files
        self._forgotten: dict[str, datetime] = {}
        self._spooled = sum(len(read_spool(p)) for p in self._spool.glob("*.jsonl"))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="imageiq-recorder", daemon=True)
        self._gauge = metrics().records_pending
        self._written = metrics().records_written
        if self._spooled:
            log.info("%d spooled records wait to be replayed from %s", self._spooled, spool_dir)

    # --- request side -----------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def record(self, item: Record) -> None:
        """Accept a record; never blocks. A full queue means the writer is stuck: the record
        goes straight to a spool file."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            with self._lock:
                self._write_spool([item])

    def pending_images(self) -> set[str]:
        with self._lock:
            held = list(self._backlog) + list(self._queue.queue)
        return {r.sha256 for r in held if isinstance(r, ImageRecord)}

    @property
    def pending(self) -> int:
        """Records accepted and not yet in the database (queue, memory and spool)."""
        return self._queue.qsize() + len(self._backlog) + self._spooled

    def forget(self, sha256: str) -> None:
        """Drop every record of an image accepted until now: queued, held or spooled."""
        with self._lock:
            self._forgotten[sha256] = utcnow()
            self._backlog = deque(r for r in self._backlog if r.sha256 != sha256)
            for path in sorted(self._spool.glob("*.jsonl")):
                records = read_spool(path)
                kept = [r for r in records if r.sha256 != sha256]
                if len(kept) != len(records):
                    self._spooled -= len(records) - len(kept)
                    write_spool(path, kept)
        # Records still in the queue are dropped by the writer, which checks _forgotten.

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush what can be written within ``timeout_s``; spool the rest."""
        self._stop.set()
        self._thread.join(timeout_s)
        with self._lock:
            left = [r for r in list(self._backlog) + self._drain(None) if self._keep(r)]
            self._backlog.clear()
            if left:
                self._write_spool(left)
                log.warning(
                    "shutdown: %d records spooled to %s for the next start", len(left), self._spool
                )

    # --- writer thread ----------------------------------------------------------------------
    def _run(self) -> None:
        backoff = self._interval
        while True:
            stopping = self._stop.is_set()
            with self._lock:
                self._backlog.extend(self._drain(self._batch_size))
                self._backlog = deque(r for r in self._backlog if self._keep(r))
                if not self._backlog and self.database.available():
                    self._backlog.extend(self._replay_one())
                batch = list(itertools.islice(self._backlog, self._batch_size))
            self._gauge.set(self.pending)
            if not batch:
                if stopping:
                    return
                self._wait_for_work()
                continue
            try:
                written, waiting = self._write(batch)
            except TRANSIENT as e:  # the database is away: keep everything, retry
                self.database.failed(e)
                written, waiting = [], True
            except SQLAlchemyError as e:  # a record the database refuses: set it aside
                written, waiting = self._write_one_by_one(batch, e), False
            else:
                self.database.succeeded()
            with self._lock:
                done = {id(r) for r in written}
                self._backlog = deque(r for r in self._backlog if id(r) not in done)
                if waiting:
                    self._overflow()
            self._gauge.set(self.pending)
            if waiting:
                if stopping:
                    return
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            else:
                backoff = self._interval

    def _wait_for_work(self) -> None:
        try:
            item = self._queue.get(timeout=self._interval)
        except queue.Empty:
            return
        with self._lock:
            self._backlog.append(item)

    def _drain(self, limit: int | None) -> list[Record]:
        items: list[Record] = []
        while limit is None or len(items) < limit:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _keep(self, record: Record) -> bool:
        forgotten = self._forgotten.get(record.sha256)
        return forgotten is None or record.created_at > forgotten

    def _write(self, batch: list[Record]) -> tuple[list[Record], bool]:
        """Upload what must be uploaded, then insert the rows in one transaction. Returns
        the records written, and whether some wait for the object store: an image whose
        upload fails keeps its row out, so no row ever points at a missing object."""
        ready: list[Record] = []
        waiting = False
        for record in batch:
            if isinstance(record, ImageRecord) and record.data is not None:
                try:
                    self._store.put(record.sha256, record.data, content_type=record.content_type)
                except errors.StorageUnavailable:
                    waiting = True
                    continue
                record.data = None
            ready.append(record)
        self._insert(ready)
        return ready, waiting

    def _insert(self, records: list[Record]) -> None:
        images = [_row(r, Image) for r in records if isinstance(r, ImageRecord)]
        predictions = [_row(r, Prediction) for r in records if isinstance(r, PredictionRecord)]
        if not images and not predictions:
            return
        with self._engine.begin() as connection:
            for table, rows in ((Image, images), (Prediction, predictions)):
                if rows:
                    connection.execute(_insert_ignore(self._engine, table), rows)
        self._written.labels("image").inc(len(images))
        self._written.labels("prediction").inc(len(predictions))

    def _write_one_by_one(self, batch: list[Record], error: SQLAlchemyError) -> list[Record]:
        """A batch the database refused: write each record alone; set aside (never drop)
        the ones it still refuses, under spool/rejected/, and say so in the log."""
        log.error("the database refused a batch (%s); writing it record by record", error)
        rejected = []
        for record in batch:
            try:
                self._insert([record])
            except TRANSIENT as e:
                self.database.failed(e)
                return batch[: batch.index(record)]
            except SQLAlchemyError as e:
                log.error("record %s refused by the database: %s", record.sha256, e)
                rejected.append(record)
        if rejected:
            path = self._rejected / f"{time.time_ns():020d}.jsonl"
            path.write_text("".join(json.dumps(encode(r)) + "\n" for r in rejected))
        return batch

    # --- spool ------------------------------------------------------------------------------
    def _overflow(self) -> None:
        """Keep at most a queue's worth of records in memory while a dependency is down."""
        while len(self._backlog) > self._queue_size:
            chunk = [self._backlog.pop() for _ in range(min(self._batch_size, len(self._backlog)))]
            self._write_spool(list(reversed(chunk)))

    def _write_spool(self, records: list[Record]) -> None:
        path = self._spool / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
        write_spool(path, records)
        self._spooled += len(records)

    def _replay_one(self) -> list[Record]:
        files = sorted(self._spool.glob("*.jsonl"))
        if not files:
            return []
        records = read_spool(files[0])
        files[0].unlink()
        self._spooled -= len(records)
        log.info("replaying %d spooled records from %s", len(records), files[0].name)
        return records


def _row(record: Record, table: type[Image] | type[Prediction]) -> dict[str, Any]:
    columns = set(table.__table__.columns.keys())
    return {k: v for k, v in asdict(record).items() if k in columns}


def _insert_ignore(engine: Engine, table: type[Image] | type[Prediction]) -> Insert:
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing()
