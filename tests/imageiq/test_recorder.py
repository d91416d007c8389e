"""The prediction log writer, against real databases: a SQLite file for the quick cases, a
private PostgreSQL cluster (stopped and restarted by the tests) for the outages, and a
LocalStore whose directory cannot be created (a file in the way) for object-store outages."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select, text

from imageiq import errors
from imageiq.db.engine import make_engine, upgrade
from imageiq.db.schema import Image, Prediction
from imageiq.health import Dependency
from imageiq.recorder import Recorder
from imageiq.records import ImageRecord, PredictionRecord, Record, read_spool
from imageiq.spool import Spool
from imageiq.storage import LocalStore
from tests.backends import PostgresServer, migrated

SHA_A = hashlib.sha256(b"image a").hexdigest()
SHA_B = hashlib.sha256(b"image b").hexdigest()
TOO_LONG = "x" * 300  # predictions.label is String(255): PostgreSQL refuses this for good


# --- helpers ---------------------------------------------------------------------------------
def wait_for(condition: Callable[[], bool], *, what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        time.sleep(0.02)


def accept(recorder: Recorder, record: Record) -> int:
    """Records ``record`` as a client would have it: a 503 backlog_full is retried. Returns
    how many times it was refused first."""
    refused = 0
    while True:
        try:
            recorder.record(record)
            return refused
        except errors.BacklogFull:
            refused += 1
            time.sleep(0.01)


def count(engine: Engine, table: type[Image] | type[Prediction], **where: Any) -> int:
    query = select(func.count()).select_from(table)
    for column, value in where.items():
        query = query.where(getattr(table, column) == value)
    with engine.connect() as connection:
        return int(connection.scalar(query) or 0)


def spool_files(spool: Path) -> list[Path]:
    """The spool files of every instance (not the rejected ones), oldest first."""
    files = [p for p in spool.glob("*/*.jsonl") if p.parent.name != "rejected"]
    return sorted(files, key=lambda p: p.name)


def spooled(spool: Path) -> list[Record]:
    """What waits in spool files now (a file the writer replays meanwhile is skipped)."""
    records: list[Record] = []
    for path in spool_files(spool):
        try:
            records.extend(read_spool(path))
        except FileNotFoundError:
            continue
    return records


def rejected(spool: Path) -> list[Record]:
    return [r for path in sorted((spool / "rejected").glob("*.jsonl")) for r in read_spool(path)]


def keys(records: Sequence[Record]) -> list[str]:
    """Each record's primary key: a prediction's id, an image's hash."""
    return [str(r.id) if isinstance(r, PredictionRecord) else r.sha256 for r in records]


def prediction(sha256: str = SHA_A, *, label: str = "cat") -> PredictionRecord:
    return PredictionRecord(
        image_sha256=sha256,
        model_name="digits",
        model_version="v1",
        label=label,
        score=0.9,
        top_k=[{"label": label, "score": 0.9}],
        attributes={},
        latency_ms=1.5,
    )


def image(data: bytes, store: LocalStore) -> ImageRecord:
    sha256 = hashlib.sha256(data).hexdigest()
    return ImageRecord(
        sha256=sha256,
        storage_key=store.key_for(sha256),
        content_type="image/png",
        bytes=len(data),
        width=1,
        height=1,
        data=data,
    )


def blocked_store(tmp_path: Path) -> tuple[LocalStore, Path]:
    """A store whose directory cannot be created (its parent is a file: the tests run as
    root, so permissions would not stop a write). Remove the file to bring it back."""
    blocker = tmp_path / "blocker"
    blocker.write_text("in the way")
    store = LocalStore(blocker / "images")
    store.dependency.cooldown_s = 0.1  # retried soon after it comes back
    return store, blocker


def unblock(blocker: Path) -> None:
    blocker.unlink()
    blocker.mkdir()


def is_running(server: PostgresServer) -> bool:
    return (server.data / "postmaster.pid").exists()


# --- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        engine = make_engine(server.url)
        try:
            upgrade(engine)
        finally:
            engine.dispose()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg(postgres: PostgresServer) -> Iterator[Engine]:
    """The shared cluster, running and with empty tables; running again afterwards."""
    if not is_running(postgres):
        postgres.start()
    engine = make_engine(postgres.url)
    with engine.begin() as connection:
        connection.execute(text("TRUNCATE predictions, labels, images, tombstones CASCADE"))
    yield engine
    engine.dispose()
    if not is_running(postgres):
        postgres.start()


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[Engine]:
    with migrated(f"sqlite:///{tmp_path / 'meta.db'}") as engine:
        yield engine


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "images")


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def recorders() -> Iterator[Callable[..., Recorder]]:
    """Builds recorders (small flush interval and cool-down), closed at the end."""
    made: list[Recorder] = []

    def make(
        engine: Engine,
        store: LocalStore,
        spool: Path,
        *,
        queue_size: int = 1000,
        batch_size: int = 100,
        max_bytes: int = 1 << 30,
        start: bool = True,
    ) -> Recorder:
        database = Dependency("database", backend=engine.dialect.name, cooldown_s=0.1)
        recorder = Recorder(
            engine,
            store,
            database=database,
            spool=Spool(spool, instance=f"test-{len(made)}"),
            max_bytes=max_bytes,
            queue_size=queue_size,
            batch_size=batch_size,
            flush_interval_s=0.05,
        )
        made.append(recorder)
        if start:
            recorder.start()
        return recorder

    yield make
    for recorder in made:
        with contextlib.suppress(RuntimeError):  # never started
            recorder.close(timeout_s=5.0)


# --- batches ---------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["sqlite", "pg"])
def test_records_are_written_in_batches_off_the_callers_thread(
    backend: str,
    request: pytest.FixtureRequest,
    recorders: Callable[..., Recorder],
    store: LocalStore,
    spool: Path,
) -> None:
    engine: Engine = request.getfixturevalue(backend)
    threads: set[str] = set()
    commits = []

    @event.listens_for(engine, "before_cursor_execute")
    def _statement(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            threads.add(threading.current_thread().name)

    @event.listens_for(engine, "commit")
    def _commit(*_: Any) -> None:
        commits.append(1)

    recorder = recorders(engine, store, spool, queue_size=2000, batch_size=100)
    records = [prediction(label=f"label-{i % 7}") for i in range(1000)]
    started = time.perf_counter()
    for record in records:
        recorder.record(record)
    assert time.perf_counter() - started < 1.0  # well under a millisecond a call
    recorder.record(records[0])  # the same record twice (a replay): written once
    # pending alone may read 0 for an instant while the writer moves records from the
    # queue to its backlog: wait for the rows too.
    wait_for(
        lambda: count(engine, Prediction) == 1000 and recorder.pending == 0,
        what="every record written",
    )
    with engine.connect() as connection:
        ids = connection.scalars(select(Prediction.id)).all()
    assert len(ids) == len(set(ids)) == 1000
    assert set(ids) == {r.id for r in records}
    assert threads == {"imageiq-recorder"}
    assert 10 <= len(commits) <= 200  # batches of up to 100, not a transaction per record
    assert recorder.database.up

    recorder.record(records[1])  # already in the table: still written once, not refused
    recorder.close()
    assert count(engine, Prediction) == 1000
    assert not rejected(spool) and not spooled(spool)


def test_a_steady_stream_is_written_in_batches_not_a_transaction_per_record(
    sqlite: Engine, recorders: Callable[..., Recorder], store: LocalStore, spool: Path
) -> None:
    """Records arriving one by one, as requests answer, are gathered for a flush interval
    (0.05 s here) after each partial batch; the writer used to wake for each record."""
    commits = []

    @event.listens_for(sqlite, "commit")
    def _commit(*_: Any) -> None:
        commits.append(1)

    recorder = recorders(sqlite, store, spool, batch_size=100)
    started = time.perf_counter()
    for i in range(300):  # about 0.6 s at one record every 2 ms
        recorder.record(prediction(label=f"label-{i % 7}"))
        time.sleep(0.002)
    elapsed = time.perf_counter() - started
    wait_for(lambda: count(sqlite, Prediction) == 300, what="every record written")
    # One transaction per flush interval, give or take: ~12 here; a transaction per record
    # would be hundreds.
    assert len(commits) <= 2 * elapsed / 0.05 + 5, (len(commits), elapsed)


def test_close_flushes_what_is_queued(
    sqlite: Engine, recorders: Callable[..., Recorder], store: LocalStore, spool: Path
) -> None:
    recorder = recorders(sqlite, store, spool, batch_size=50)
    for _ in range(500):
        recorder.record(prediction())
    recorder.close()
    assert count(sqlite, Prediction) == 500
    assert recorder.pending == 0 and not spooled(spool)


# --- images and the object store -------------------------------------------------------------
def test_image_object_is_stored_before_its_row(
    sqlite: Engine, recorders: Callable[..., Recorder], store: LocalStore, spool: Path
) -> None:
    record = image(b"image bytes", store)
    object_there_at_insert: list[bool] = []

    @event.listens_for(sqlite, "before_cursor_execute")
    def _statement(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO IMAGES"):
            object_there_at_insert.append((store.root / record.storage_key).is_file())

    recorder = recorders(sqlite, store, spool)
    recorder.record(record)
    wait_for(lambda: count(sqlite, Image) == 1, what="the image row")
    assert object_there_at_insert == [True]
    assert store.get(record.storage_key) == b"image bytes"
    assert recorder.pending == 0 and recorder.pending_images() == set()


def test_image_row_waits_for_the_object_store(
    sqlite: Engine, recorders: Callable[..., Recorder], spool: Path, tmp_path: Path
) -> None:
    store, blocker = blocked_store(tmp_path)
    record = image(b"image bytes", store)
    recorder = recorders(sqlite, store, spool, start=False)
    recorder.record(record)
    for _ in range(3):  # in the same batch as the image
        recorder.record(prediction(record.sha256))
    recorder.start()

    wait_for(lambda: count(sqlite, Prediction) == 3, what="the predictions, store or not")
    wait_for(lambda: not store.dependency.up, what="the store reported down")
    time.sleep(0.3)  # a few retries
    assert count(sqlite, Image) == 0  # no row may point at a missing object
    assert recorder.pending == 1
    assert recorder.pending_images() == {record.sha256}

    unblock(blocker)
    wait_for(lambda: count(sqlite, Image) == 1, what="the image row once the store is back")
    assert store.get(record.storage_key) == b"image bytes"
    assert store.dependency.up
    assert recorder.pending == 0 and recorder.pending_images() == set()


def test_predictions_keep_flowing_behind_images_waiting_for_the_store(
    sqlite: Engine, recorders: Callable[..., Recorder], spool: Path, tmp_path: Path
) -> None:
    store, blocker = blocked_store(tmp_path)
    recorder = recorders(sqlite, store, spool, batch_size=5, start=False)
    for i in range(5):
        recorder.record(image(f"image {i}".encode(), store))
    for _ in range(5):
        recorder.record(prediction())
    recorder.start()
    try:
        wait_for(
            lambda: count(sqlite, Prediction) == 5,
            what="predictions written while the store is down",
            timeout_s=3.0,
        )
    finally:
        unblock(blocker)
    wait_for(lambda: count(sqlite, Image) == 5, what="the images once the store is back")


def test_refused_record_does_not_orphan_an_image_waiting_for_the_store(
    pg: Engine, recorders: Callable[..., Recorder], spool: Path, tmp_path: Path
) -> None:
    store, blocker = blocked_store(tmp_path)
    record = image(b"image bytes", store)
    recorder = recorders(pg, store, spool, start=False)
    recorder.record(record)
    recorder.record(prediction(record.sha256))
    recorder.record(prediction(record.sha256, label=TOO_LONG))  # same batch, refused
    recorder.start()

    wait_for(lambda: len(rejected(spool)) == 1, what="the refused record set aside")
    wait_for(lambda: count(pg, Prediction) == 1, what="the good prediction")
    assert count(pg, Image) == 0  # the object is not stored: no row yet
    assert recorder.pending_images() == {record.sha256}

    unblock(blocker)
    wait_for(lambda: count(pg, Image) == 1, what="the image row once the store is back")
    assert store.get(record.storage_key) == b"image bytes"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_record_the_store_refuses_for_good_does_not_stop_the_writer(
    sqlite: Engine, recorders: Callable[..., Recorder], store: LocalStore, spool: Path
) -> None:
    broken = image(b"image bytes", store)
    broken.data = b"bytes that do not hash to its name"
    recorder = recorders(sqlite, store, spool, start=False)
    recorder.record(broken)
    recorder.start()
    later = prediction()
    recorder.record(later)
    wait_for(
        lambda: count(sqlite, Prediction, id=later.id) == 1,
        what="a later record written",
        timeout_s=2.0,
    )


# --- database outages (PostgreSQL stopped and restarted) -------------------------------------
def test_database_outage_keeps_records_until_it_is_back(
    postgres: PostgresServer,
    pg: Engine,
    recorders: Callable[..., Recorder],
    store: LocalStore,
    spool: Path,
) -> None:
    recorder = recorders(pg, store, spool)
    for _ in range(5):
        recorder.record(prediction())
    wait_for(lambda: count(pg, Prediction) == 5, what="the records before the outage")

    postgres.stop()
    slowest = 0.0
    for _ in range(50):
        started = time.perf_counter()
        recorder.record(prediction())
        slowest = max(slowest, time.perf_counter() - started)
    assert slowest < 0.05  # never waits for the database
    wait_for(lambda: not recorder.database.up, what="the database reported down")
    assert recorder.database.describe()["state"] == "down"
    assert recorder.pending == 50
    assert not spooled(spool)  # within the queue size: kept in memory

    postgres.start()  # the same cluster, same data
    wait_for(
        lambda: count(pg, Prediction) == 55 and recorder.pending == 0,
        what="the backlog written after the restart",
    )
    assert recorder.database.up
    assert recorder.database.describe()["state"] == "up"


def test_overflow_goes_to_spool_files_and_is_replayed(
    postgres: PostgresServer,
    pg: Engine,
    recorders: Callable[..., Recorder],
    store: LocalStore,
    spool: Path,
) -> None:
    queue_size, batch_size = 20, 10
    recorder = recorders(pg, store, spool, queue_size=queue_size, batch_size=batch_size)
    postgres.stop()
    records = [prediction() for _ in range(200)]
    refused = sum(accept(recorder, record) for record in records)
    assert refused  # the queue filled faster than the writer spooled: refused, not lost
    wait_for(lambda: not recorder.database.up, what="the database reported down")
    assert spool_files(spool)

    # Memory stays bounded while the writer retries: the rest is on disk, nothing is lost.
    samples = []
    for _ in range(10):
        samples.append(recorder.pending - len(spooled(spool)))
        time.sleep(0.05)
    assert max(samples) <= 2 * queue_size + batch_size  # the queue and the backlog
    wait_for(
        lambda: recorder.pending - len(spooled(spool)) <= queue_size + batch_size,
        what="the queue taken in, the backlog at most a queue's worth and a batch",
    )
    wait_for(lambda: recorder.pending == 200, what="every record accounted for")

    postgres.start()
    wait_for(
        lambda: count(pg, Prediction) == 200 and recorder.pending == 0,
        what="every record written after the restart",
    )
    assert not spool_files(spool)
    with pg.connect() as connection:
        ids = set(connection.scalars(select(Prediction.id)))
    assert ids == {r.id for r in records}


def test_close_while_down_spools_and_the_next_start_replays(
    postgres: PostgresServer,
    pg: Engine,
    recorders: Callable[..., Recorder],
    store: LocalStore,
    spool: Path,
) -> None:
    first = recorders(pg, store, spool)
    postgres.stop()
    records = [prediction() for _ in range(30)]
    for record in records:
        first.record(record)
    wait_for(lambda: not first.database.up, what="the database reported down")
    started = time.monotonic()
    first.close(timeout_s=5.0)
    assert time.monotonic() - started < 5.0
    assert first.pending == 30
    assert sorted(keys(spooled(spool))) == sorted(keys(records))

    postgres.start()
    # Another instance (as a replacement pod is): adopts the released spool at its start.
    second = recorders(pg, store, spool, start=False)
    assert second.pending == 30  # counted from the spool files before starting
    second.start()
    wait_for(lambda: count(pg, Prediction) == 30, what="the spooled records replayed")
    wait_for(lambda: second.pending == 0, what="nothing left pending")
    assert not spool_files(spool)


# --- forget ----------------------------------------------------------------------------------
def test_forget_drops_queued_and_spooled_records(
    sqlite: Engine, recorders: Callable[..., Recorder], store: LocalStore, spool: Path
) -> None:
    recorder = recorders(sqlite, store, spool, queue_size=10, batch_size=5, start=False)
    for _ in range(5):  # 10 queued, and 10 spooled
        recorder.record(prediction(SHA_A))
        recorder.record(prediction(SHA_B))
        recorder.record_durably(prediction(SHA_A))
        recorder.record_durably(prediction(SHA_B))
    assert recorder.pending == 20 and len(spooled(spool)) == 10

    recorder.forget(SHA_A)
    assert {r.sha256 for r in spooled(spool)} == {SHA_B}
    later = prediction(SHA_A)  # made after the forget: a new upload of the same image
    recorder.start()
    recorder.record(later)
    wait_for(
        lambda: count(sqlite, Prediction, id=later.id) == 1 and recorder.pending == 0,
        what="everything else written",
    )
    assert count(sqlite, Prediction, image_sha256=SHA_B) == 10
    with sqlite.connect() as connection:
        kept = connection.scalars(select(Prediction.id).where(Prediction.image_sha256 == SHA_A))
        assert list(kept) == [later.id]


def test_forget_during_an_outage_drops_held_records(
    postgres: PostgresServer,
    pg: Engine,
    recorders: Callable[..., Recorder],
    store: LocalStore,
    spool: Path,
) -> None:
    recorder = recorders(pg, store, spool, queue_size=20, batch_size=10)
    postgres.stop()
    for _ in range(30):  # queued, held by the writer and spooled
        accept(recorder, prediction(SHA_A))
        accept(recorder, prediction(SHA_B))
    # Reported down only after a failed write: the writer holds a batch from then on.
    wait_for(lambda: not recorder.database.up, what="the database reported down")
    assert spool_files(spool)
    recorder.forget(SHA_A)
    assert SHA_A not in {r.sha256 for r in spooled(spool)}
    # A's records still queued are dropped as the writer takes them in.
    wait_for(lambda: recorder.pending == 30, what="only B's records left pending")

    postgres.start()
    wait_for(
        lambda: count(pg, Prediction, image_sha256=SHA_B) == 30 and recorder.pending == 0,
        what="B's records written",
    )
    assert count(pg, Prediction, image_sha256=SHA_A) == 0
    assert not spool_files(spool)


# --- records the database refuses ------------------------------------------------------------
def test_refused_record_is_set_aside_and_does_not_block_the_others(
    pg: Engine, recorders: Callable[..., Recorder], store: LocalStore, spool: Path
) -> None:
    recorder = recorders(pg, store, spool, start=False)
    good = [prediction() for _ in range(9)]
    bad = prediction(label=TOO_LONG)
    for record in [*good[:4], bad, *good[4:]]:  # one batch
        recorder.record(record)
    recorder.start()

    wait_for(lambda: count(pg, Prediction) == 9, what="the records the database accepts")
    wait_for(lambda: len(rejected(spool)) == 1, what="the refused record set aside")
    [aside] = rejected(spool)
    assert isinstance(aside, PredictionRecord)
    assert (aside.id, aside.label) == (bad.id, TOO_LONG)
    assert count(pg, Prediction, id=bad.id) == 0
    assert recorder.pending == 0 and not spooled(spool)
    assert recorder.database.up

    after = prediction()  # the writer carries on
    recorder.record(after)
    wait_for(lambda: count(pg, Prediction, id=after.id) == 1, what="a later record")


def test_refused_record_is_kept_when_the_database_goes_away_mid_retry(
    postgres: PostgresServer,
    pg: Engine,
    recorders: Callable[..., Recorder],
    store: LocalStore,
    spool: Path,
) -> None:
    bad, good = prediction(label=TOO_LONG), prediction()

    @event.listens_for(pg, "before_cursor_execute")
    def _stop_before_good_alone(
        conn: Any, cursor: Any, statement: str, params: Any, *_: Any
    ) -> None:
        # The record-by-record retry: bad was refused alone, good comes next. A real outage
        # (pg_ctl stop) right then makes this INSERT fail with OperationalError.
        alone = str(good.id) in str(params) and str(bad.id) not in str(params)
        if alone and is_running(postgres):
            postgres.stop()

    recorder = recorders(pg, store, spool, start=False)
    recorder.record(bad)
    recorder.record(good)
    recorder.start()
    wait_for(lambda: not recorder.database.up, what="the database reported down")
    event.remove(pg, "before_cursor_execute", _stop_before_good_alone)
    postgres.start()
    wait_for(lambda: count(pg, Prediction, id=good.id) == 1, what="the good record")
    wait_for(lambda: recorder.pending == 0, what="nothing left pending")
    assert keys(rejected(spool) + spooled(spool)) == [str(bad.id)]  # set aside, not lost


# --- the backlog's byte budget, durability and orphaned spools ---------------------------------
def test_the_backlog_is_bounded_in_bytes_and_refuses_past_it(
    postgres: PostgresServer,
    pg: Engine,
    recorders: Callable[..., Recorder],
    store: LocalStore,
    spool: Path,
) -> None:
    budget = 64 * 1024
    recorder = recorders(pg, store, spool, max_bytes=budget)
    postgres.stop()
    accepted: list[Record] = []
    data = b"x" * 10_000
    with pytest.raises(errors.BacklogFull) as full:
        for i in range(100):
            record = image(data + str(i).encode(), store)
            recorder.record_durably(record)  # an image accepted while its store is down
            accepted.append(record)
    assert full.value.status == 503 and full.value.retry_after
    assert 3 <= len(accepted) < 10
    assert recorder.pending_bytes <= budget
    assert recorder.pending == len(accepted)
    # On disk before record_durably returned: a process killed now loses none of them.
    assert {r.sha256 for r in spooled(spool)} == {r.sha256 for r in accepted}
    with pytest.raises(errors.BacklogFull):  # predictions too: none accepted past it
        for _ in range(100):
            recorder.record(prediction())
            accepted.append(prediction())
    assert recorder.pending_bytes <= budget
    postgres.start()
    images = sum(isinstance(r, ImageRecord) for r in accepted)
    wait_for(
        lambda: count(pg, Image) == images and recorder.pending == 0,
        what="the backlog written once the database is back",
    )
    assert recorder.pending_bytes == 0
    recorder.record(prediction())  # room again


def test_a_killed_instances_spool_is_adopted_by_another(
    sqlite: Engine, recorders: Callable[..., Recorder], store: LocalStore, spool: Path
) -> None:
    """A pod replaced mid-outage: its spool, on the shared volume, is replayed by the next."""
    gone = Spool(spool, instance="gone-pod-1", orphan_after_s=0.5)
    records = [prediction() for _ in range(12)]
    gone.append(records[:5])
    gone.append(records[5:])  # it is killed here: no close, no release
    fresh = Spool(spool, instance="live-pod", orphan_after_s=0.5)
    assert fresh.records == 0  # its heartbeat is recent: not adopted yet
    time.sleep(0.6)
    assert fresh.adopt_orphans() == 12
    assert not (spool / "gone-pod-1").exists()
    taken = fresh.pop_oldest() + fresh.pop_oldest()
    assert [r.id for r in taken] == [r.id for r in records]  # in order, each once
    assert fresh.pop_oldest() == [] and fresh.records == 0 and fresh.bytes == 0
