"""Tombstones against both databases (a migrated SQLite file, a private PostgreSQL
cluster): records of a forgotten image accepted before the deletion are dropped, later ones
kept; the object goes after the rows and a failed delete is swept; and a deletion racing a
writer's insert transaction never leaves the writer's rows behind."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, delete, func, select

from imageiq import catalog, errors, tombstones
from imageiq.cache import MemoryCache
from imageiq.catalog import insert_ignore
from imageiq.db.schema import AuditEntry, Image, Prediction, Tombstone
from imageiq.storage import LocalStore

T0 = datetime(2024, 3, 10, 12, 0, tzinfo=timezone.utc)


def data(n: int) -> bytes:
    return f"not an image, bytes {n}".encode()  # stored as they are (no metadata to strip)


def sha(n: int) -> str:
    return hashlib.sha256(data(n)).hexdigest()


def image_row(n: int, *, at: datetime) -> dict[str, Any]:
    digest = sha(n)
    return {
        "sha256": digest,
        "storage_key": f"{digest[:2]}/{digest}",
        "content_type": "application/octet-stream",
        "bytes": len(data(n)),
        "width": 1,
        "height": 1,
        "uploaded_by": None,
        "created_at": at,
    }


def prediction_row(n: int, *, at: datetime) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "image_sha256": sha(n),
        "model_name": "m",
        "model_version": "v1",
        "label": "cat",
        "score": 0.9,
        "top_k": [{"label": "cat", "score": 0.9}],
        "attributes": {},
        "latency_ms": 1.0,
        "cached": False,
        "api_key_id": None,
        "request_id": None,
        "client_request_id": None,
        "created_at": at,
    }


class FlakyStore(LocalStore):
    """A local store whose deletes fail while ``down`` is set, and which runs ``on_put``
    (a concurrent deletion, in the tests) right after each put."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.down = False
        self.on_put: Any = None

    def _delete(self, key: str) -> None:
        if self.down:
            raise OSError("the store is away")
        super()._delete(key)

    def _put(self, key: str, sha256: str, data: bytes, content_type: str) -> None:
        super()._put(key, sha256, data, content_type)
        if self.on_put is not None:
            self.on_put()


@pytest.fixture
def store(tmp_path: Path) -> FlakyStore:
    return FlakyStore(tmp_path / "objects")


def stored(store: LocalStore, n: int) -> bool:
    """Looked at through a store of its own (the one under test may be marked down)."""
    observer = LocalStore(store.root)
    return observer.exists(observer.key_for(sha(n)))


def count(engine: Engine, table: Any, *where: Any) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(select(func.count()).select_from(table).where(*where)) or 0)


def pending(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        query = select(Tombstone.sha256).where(Tombstone.object_deleted_at.is_(None))
        return set(connection.scalars(query))


# --- the rows' filter -------------------------------------------------------------------------
def test_records_accepted_before_the_deletion_are_dropped_later_ones_kept(engine: Engine) -> None:
    catalog.delete_image_rows(engine, sha(1), at=T0)
    before, after = T0 - timedelta(seconds=1), T0 + timedelta(milliseconds=1)
    images = [image_row(1, at=before), image_row(2, at=before)]
    predictions = [
        prediction_row(1, at=before),
        prediction_row(1, at=T0),  # the same instant: forgotten too
        prediction_row(1, at=after),  # a fresh upload of the same bytes
        prediction_row(2, at=before),  # another image
    ]
    with engine.begin() as connection:
        kept_images, kept_predictions = tombstones.drop_forgotten(connection, images, predictions)
        insert_ignore(connection, Image, kept_images)
        insert_ignore(connection, Prediction, kept_predictions)
    assert kept_images == [images[1]]
    assert kept_predictions == [predictions[2], predictions[3]]
    assert count(engine, Image) == 1 and count(engine, Prediction) == 2
    # The object of the dropped image row (its writer stored it first) is pending again.
    assert pending(engine) == {sha(1)}


def test_a_batch_without_tombstones_is_kept_whole(engine: Engine) -> None:
    rows = [image_row(3, at=T0)]
    with engine.begin() as connection:
        assert tombstones.drop_forgotten(connection, rows, []) == [rows, []]
        assert tombstones.drop_forgotten(connection) == []


def test_a_naive_time_is_taken_as_utc(engine: Engine) -> None:
    catalog.delete_image_rows(engine, sha(1), at=T0)
    naive = T0.replace(tzinfo=None)
    with engine.begin() as connection:
        kept = tombstones.drop_forgotten(
            connection,
            [prediction_row(1, at=naive - timedelta(seconds=1)), prediction_row(1, at=naive)],
        )
    assert kept == [[]]
    assert tombstones.is_forgotten(engine, sha(1), naive)


def test_is_forgotten(engine: Engine) -> None:
    assert not tombstones.is_forgotten(engine, sha(1), T0)
    catalog.delete_image_rows(engine, sha(1), at=T0)
    assert tombstones.is_forgotten(engine, sha(1), T0 - timedelta(days=3))
    assert tombstones.is_forgotten(engine, sha(1), T0)
    assert not tombstones.is_forgotten(engine, sha(1), T0 + timedelta(microseconds=1))
    assert not tombstones.is_forgotten(engine, sha(2), T0)


def test_a_second_deletion_moves_the_tombstone_forward_never_back(engine: Engine) -> None:
    catalog.delete_image_rows(engine, sha(1), at=T0)
    catalog.delete_image_rows(engine, sha(1), at=T0 + timedelta(hours=1), actor="k2")
    assert tombstones.is_forgotten(engine, sha(1), T0 + timedelta(minutes=30))
    catalog.delete_image_rows(engine, sha(1), at=T0, actor="k3")  # a replica's clock behind
    with engine.connect() as connection:
        stone = connection.execute(select(Tombstone)).one()
    assert (stone.deleted_at, stone.deleted_by) == (T0 + timedelta(hours=1), "k3")


# --- objects ----------------------------------------------------------------------------------
def test_put_object_stores_what_is_not_forgotten(engine: Engine, store: FlakyStore) -> None:
    assert tombstones.put_object(
        engine, store, sha(1), data(1), content_type="image/png", accepted_at=T0
    )
    assert stored(store, 1)


def test_put_object_stores_nothing_of_a_forgotten_image(engine: Engine, store: FlakyStore) -> None:
    catalog.delete_image_rows(engine, sha(1), at=T0)
    assert not tombstones.put_object(
        engine, store, sha(1), data(1), content_type="image/png", accepted_at=T0
    )
    assert not stored(store, 1)
    later = T0 + timedelta(seconds=1)  # a fresh upload of the same bytes
    assert tombstones.put_object(
        engine, store, sha(1), data(1), content_type="image/png", accepted_at=later
    )
    assert stored(store, 1)


def test_a_deletion_between_the_check_and_the_put_loses_the_object(
    engine: Engine, store: FlakyStore
) -> None:
    """The deletion commits (and deletes the object, not there yet) after the writer's first
    check and before its put lands: the second check sees the tombstone."""
    cache = MemoryCache(ttl_s=60, max_entries=10)
    accepted = datetime.now(timezone.utc) - timedelta(seconds=1)

    def deletion() -> None:
        store.on_put = None
        catalog.forget_image(engine, sha(1), store=store, cache=cache)

    store.on_put = deletion  # the put lands, then the deletion runs to its end
    assert not tombstones.put_object(
        engine, store, sha(1), data(1), content_type="image/png", accepted_at=accepted
    )
    assert not stored(store, 1)
    assert pending(engine) == set()


def test_forget_image_deletes_rows_then_object(engine: Engine, store: FlakyStore) -> None:
    cache = MemoryCache(ttl_s=60, max_entries=10)
    store.put(sha(1), data(1), content_type="image/png")
    insert_ignore(engine, Image, [image_row(1, at=T0)])
    insert_ignore(engine, Prediction, [prediction_row(1, at=T0), prediction_row(2, at=T0)])
    cache.put("k", {"x": 1}, sha256=sha(1))
    counts = catalog.forget_image(
        engine, sha(1), store=store, cache=cache, actor="k1", request_id="srv-1"
    )
    assert counts == {"object": 1, "cache_entries": 1, "labels": 0, "predictions": 1, "images": 1}
    assert not stored(store, 1) and cache.forget(sha(1)) == 0
    assert count(engine, Image) == 0 and count(engine, Prediction) == 1
    with engine.connect() as connection:
        entry = connection.execute(select(AuditEntry)).one()
        stone = connection.execute(select(Tombstone)).one()
    assert (entry.action, entry.target, entry.detail) == ("image.delete", sha(1), counts)
    assert (stone.sha256, stone.deleted_by, stone.request_id) == (sha(1), "k1", "srv-1")
    assert stone.object_deleted_at is not None


def test_forgetting_an_unknown_image_counts_nothing_but_leaves_a_tombstone(
    engine: Engine, store: FlakyStore
) -> None:
    """Nothing known here (the caller answers 404), yet another replica may hold records."""
    cache = MemoryCache(ttl_s=60, max_entries=10)
    counts = catalog.forget_image(engine, sha(9), store=store, cache=cache)
    assert not any(counts.values())
    assert count(engine, AuditEntry) == 0
    assert tombstones.is_forgotten(engine, sha(9), datetime.now(timezone.utc) - timedelta(1))


def test_an_object_delete_that_fails_is_swept_later(engine: Engine, store: FlakyStore) -> None:
    cache = MemoryCache(ttl_s=60, max_entries=10)
    store.put(sha(1), data(1), content_type="image/png")
    insert_ignore(engine, Image, [image_row(1, at=T0)])
    store.down = True
    with pytest.raises(errors.StorageUnavailable):
        catalog.forget_image(engine, sha(1), store=store, cache=cache)
    # The rows went with the tombstone: no row names the object still there.
    assert count(engine, Image) == 0 and stored(store, 1)
    assert pending(engine) == {sha(1)}
    assert tombstones.sweep(engine, store) == 0  # still away: left for the next pass
    store.down = False
    store.dependency.succeeded()  # its health probe would say so after the cool-down
    assert tombstones.sweep(engine, store) == 1
    assert not stored(store, 1) and pending(engine) == set()
    assert tombstones.sweep(engine, store) == 0


def test_the_sweep_keeps_the_object_of_a_fresh_upload(engine: Engine, store: FlakyStore) -> None:
    catalog.delete_image_rows(engine, sha(1), at=T0)  # its object delete never ran
    later = T0 + timedelta(seconds=1)
    assert tombstones.put_object(
        engine, store, sha(1), data(1), content_type="image/png", accepted_at=later
    )
    with engine.begin() as connection:
        (kept,) = tombstones.drop_forgotten(connection, [image_row(1, at=later)])
        insert_ignore(connection, Image, kept)
    assert tombstones.sweep(engine, store) == 0
    assert stored(store, 1) and count(engine, Image) == 1  # the row names an object
    assert pending(engine) == set()


def test_the_sweep_deletes_the_object_of_a_dropped_image_row(
    engine: Engine, store: FlakyStore
) -> None:
    """A writer that stored the object while the database was away (no check possible):
    its row transaction drops the row and the object is deleted after it."""
    catalog.delete_image_rows(engine, sha(1), at=T0)
    assert tombstones.sweep(engine, store) == 1 and pending(engine) == set()  # nothing there
    store.put(sha(1), data(1), content_type="image/png")
    rows = [image_row(1, at=T0 - timedelta(seconds=1))]
    with engine.begin() as connection:
        assert tombstones.drop_forgotten(connection, rows) == [[]]
    assert tombstones.sweep(engine, store, shas=[sha(1)]) == 1
    assert not stored(store, 1) and count(engine, Image) == 0


# --- the race with a concurrent deletion ------------------------------------------------------
def _in_thread(target: Any) -> tuple[threading.Thread, list[BaseException]]:
    failures: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as e:  # reported by the test
            failures.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, failures


def test_a_deletion_waits_for_an_insert_that_checked_first(engine: Engine) -> None:
    """The writer checked (no tombstone yet) and has not committed: the deletion must wait
    and then delete the writer's rows, not miss them (READ COMMITTED would)."""
    checked, release = threading.Event(), threading.Event()
    accepted = T0 - timedelta(seconds=1)

    def writer() -> None:
        with engine.begin() as connection:
            images, predictions = tombstones.drop_forgotten(
                connection, [image_row(1, at=accepted)], [prediction_row(1, at=accepted)]
            )
            checked.set()
            release.wait(10)
            insert_ignore(connection, Image, images)
            insert_ignore(connection, Prediction, predictions)

    writing, write_failed = _in_thread(writer)
    assert checked.wait(10)
    done: dict[str, int] = {}
    deleting, delete_failed = _in_thread(
        lambda: done.update(catalog.delete_image_rows(engine, sha(1), at=T0))
    )
    time.sleep(0.5)
    assert deleting.is_alive(), "the deletion did not wait for the writer's transaction"
    release.set()
    writing.join(15)
    deleting.join(15)
    assert not write_failed and not delete_failed, write_failed + delete_failed
    assert done == {"labels": 0, "predictions": 1, "images": 1}
    assert count(engine, Image) == 0 and count(engine, Prediction) == 0


def test_an_insert_waits_for_a_deletion_that_began_first(engine: Engine) -> None:
    """The deletion holds its tombstone, uncommitted: the writer must wait, then see it."""
    buried, release = threading.Event(), threading.Event()
    accepted = T0 - timedelta(seconds=1)

    def deletion() -> None:
        with engine.begin() as connection:
            tombstones.bury(connection, sha(1), at=T0)
            buried.set()
            release.wait(10)
            for table, column in ((Prediction, Prediction.image_sha256), (Image, Image.sha256)):
                connection.execute(delete(table).where(column == sha(1)))

    deleting, delete_failed = _in_thread(deletion)
    assert buried.wait(10)
    kept: list[list[dict[str, Any]]] = []

    def writer() -> None:
        with engine.begin() as connection:
            kept.extend(
                tombstones.drop_forgotten(
                    connection, [image_row(1, at=accepted)], [prediction_row(1, at=accepted)]
                )
            )
            insert_ignore(connection, Image, kept[0])
            insert_ignore(connection, Prediction, kept[1])

    writing, write_failed = _in_thread(writer)
    time.sleep(0.5)
    assert writing.is_alive(), "the writer did not wait for the deletion's transaction"
    release.set()
    deleting.join(15)
    writing.join(15)
    assert not write_failed and not delete_failed, write_failed + delete_failed
    assert kept == [[], []]
    assert count(engine, Image) == 0 and count(engine, Prediction) == 0
