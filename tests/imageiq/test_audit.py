"""The denial log: refused attempts reach the audit log in batches, never block or raise, and
a flood is cut to a bounded number of rows plus one entry that counts what was left out."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, text

from imageiq.audit import DENIED, DROPPED, DenialLog, presented_key_id
from imageiq.db.schema import AuditEntry
from imageiq.health import Dependency
from tests.backends import migrated

KEY_ID = "0123456789abcdef"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with migrated(f"sqlite:///{tmp_path / 'imageiq.db'}") as engine:
        yield engine


def entries(engine: Engine) -> list[AuditEntry]:
    with engine.connect() as connection:
        rows = connection.execute(select(AuditEntry).order_by(AuditEntry.id)).all()
    return [AuditEntry(**row._mapping) for row in rows]


def denial(n: int = 0, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "key_id": KEY_ID,
        "status": 403,
        "code": "forbidden",
        "method": "DELETE",
        "path": f"/v1/admin/images/{n:064x}",
        "client": "203.0.113.9",
        "request_id": f"server-{n}",
        "client_request_id": f"client-{n}",
    }
    return {**values, **overrides}


def wait_for(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_denial_is_written_with_both_request_ids(engine: Engine) -> None:
    log = DenialLog(engine, database=Dependency("database", backend="sqlite"))
    log.start()
    try:
        log.record(**denial(1))
        log.record(**denial(2, key_id=None, status=401, code="unauthorized", client=None))
        wait_for(lambda: log.written == 2)
    finally:
        log.close()
    first, second = entries(engine)
    assert (first.actor, first.action, first.target) == (
        KEY_ID,
        DENIED,
        f"/v1/admin/images/{1:064x}",
    )
    assert first.detail == {
        "status": 403,
        "code": "forbidden",
        "method": "DELETE",
        "client": "203.0.113.9",
    }
    assert (first.request_id, first.client_request_id) == ("server-1", "client-1")
    assert first.at is not None and first.at.utcoffset() is not None
    assert (second.actor, second.detail["status"], second.detail["client"]) == (None, 401, None)


def test_what_a_client_sent_is_cut_to_size_and_never_raises(engine: Engine) -> None:
    log = DenialLog(engine, database=Dependency("database", backend="sqlite"))
    log.start()
    try:
        log.record(**denial(path="/v1/" + "x" * 5000 + "\x00\n", key_id="iiq_not-an-id"))
        log.record(**denial(status="not a number"))  # dropped and counted, not raised
        wait_for(lambda: log.written == 1)
    finally:
        log.close()
    (entry, summary) = entries(engine)
    assert len(entry.target or "") == 255 and "\x00" not in (entry.target or "")
    assert entry.actor is None  # not a key id: nothing of it is kept
    assert log.dropped == 1
    assert (summary.action, summary.detail) == (DROPPED, {"count": 1, "total": 1})


def test_a_flood_is_bounded_and_the_rest_counted(engine: Engine) -> None:
    log = DenialLog(
        engine,
        database=Dependency("database", backend="sqlite"),
        queue_size=20,
        batch_size=10,
        max_per_s=100.0,
    )
    started = time.perf_counter()
    for n in range(1000):  # before the writer runs: the queue takes 20
        log.record(**denial(n))
    assert time.perf_counter() - started < 1.0  # never blocks
    assert log.dropped == 980
    log.start()
    wait_for(lambda: log.written == 20)
    log.close()
    found = entries(engine)
    assert sum(e.action == DENIED for e in found) == 20
    dropped = [e.detail for e in found if e.action == DROPPED]
    assert dropped == [{"count": 980, "total": 980}]


def test_the_write_rate_is_capped(engine: Engine) -> None:
    log = DenialLog(
        engine,
        database=Dependency("database", backend="sqlite"),
        queue_size=1000,
        batch_size=10,
        max_per_s=50.0,
    )
    log.start()
    try:
        for n in range(60):
            log.record(**denial(n))
        time.sleep(0.5)
        assert log.written <= 40  # 50 rows/s: about 25 in half a second, not 60
    finally:
        log.close()


def test_a_database_outage_keeps_the_batch_and_retries(engine: Engine) -> None:
    database = Dependency("database", backend="sqlite")
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE audit_log RENAME TO audit_log_away"))
    log = DenialLog(engine, database=database, flush_interval_s=0.05)
    log.start()
    try:
        log.record(**denial(1))
        time.sleep(0.3)
        assert log.written == 0 and log.dropped == 0
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE audit_log_away RENAME TO audit_log"))
        wait_for(lambda: log.written == 1)
    finally:
        log.close()
    assert [e.request_id for e in entries(engine)] == ["server-1"]


@pytest.mark.parametrize(
    ("header", "key_id"),
    [
        (f"Bearer iiq_{KEY_ID}_{'ab' * 24}", KEY_ID),
        (f"bearer   iiq_{KEY_ID}_short", KEY_ID),  # the id of a mangled key is still useful
        (f"Basic iiq_{KEY_ID}_{'ab' * 24}", None),
        (f"Bearer iiq_{KEY_ID.upper()}_{'ab' * 24}", None),
        (f"Bearer iiq_{KEY_ID}0_{'ab' * 24}", None),
        ("Bearer hunter2", None),
        ("", None),
        (None, None),
    ],
)
def test_presented_key_id_never_keeps_the_secret(header: str | None, key_id: str | None) -> None:
    assert presented_key_id(header) == key_id
