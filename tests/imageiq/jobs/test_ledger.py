"""The ledger's writes are idempotent: a chunk that runs twice changes nothing the second
time, and a job ends once (on SQLite here; the service tests run it on PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imageiq import errors
from imageiq.jobs import ledger
from tests.backends import migrated


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Any]:
    with migrated(f"sqlite:///{tmp_path / 'jobs.db'}") as engine:
        yield engine


def _job(engine: Any, refs: list[str]) -> str:
    job_id = ledger.new_id()
    ledger.create(
        engine,
        ledger.NewJob(
            model_name="m",
            model_version="v1",
            top_k=3,
            min_confidence=0.0,
            source={"kind": "s3_prefix", "uri": "s3://b/p/"},
            chunk_size=2,
            created_by="key1",
        ),
        refs,
        job_id=job_id,
    )
    return job_id


def _answer(position: int, sha: str) -> ledger.ItemOutcome:
    result = {
        "label": "cat",
        "score": 0.9,
        "top_k": [{"label": "cat", "score": 0.9}],
        "attributes": {},
        "width": 4,
        "height": 4,
    }
    return ledger.ItemOutcome(position, sha, result)


def test_a_chunk_answered_twice_is_counted_once(engine: Any) -> None:
    job_id = _job(engine, ["s3://b/p/0", "s3://b/p/1", "s3://b/p/2", "s3://b/p/3"])
    assert ledger.pending_items(engine, job_id, 0, 2) == [(0, "s3://b/p/0"), (1, "s3://b/p/1")]
    ledger.start(engine, job_id)
    first = ledger.record(engine, job_id, [_answer(0, "a" * 64), _answer(1, "a" * 64)])
    assert (first.done, first.failed, first.skipped) == (2, 0, [])
    # The same chunk delivered again (a worker died before acknowledging it).
    again = ledger.record(
        engine,
        job_id,
        [_answer(0, "a" * 64), ledger.ItemOutcome(1, "b" * 64, None, "corrupt_image", "x")],
    )
    assert (again.done, again.failed, again.skipped) == (0, 0, [0, 1])
    assert ledger.pending_items(engine, job_id, 0, 2) == []
    view = ledger.view(engine, job_id)
    assert (view.total, view.done, view.failed, view.pending) == (4, 2, 0, 2)
    lines = list(ledger.iter_results(engine, job_id, page=3))
    assert [line["position"] for line in lines] == [0, 1, 2, 3]
    assert [line["state"] for line in lines] == ["done", "done", "pending", "pending"]
    assert lines[1]["predictions"] == [{"label": "cat", "score": 0.9}]


def test_a_job_ends_once(engine: Any) -> None:
    job_id = _job(engine, ["s3://b/p/0"])
    ledger.start(engine, job_id)
    ledger.record(engine, job_id, [ledger.ItemOutcome(0, "c" * 64, None, "corrupt_image", "bad")])
    assert ledger.pending_count(engine, job_id) == 0
    assert ledger.finish(engine, job_id, results={"csv": "file:/x.csv"})
    assert not ledger.finish(engine, job_id, results={})
    assert ledger.view(engine, job_id).results == {"csv": "file:/x.csv"}
    with pytest.raises(errors.JobFinished):
        ledger.cancel(engine, job_id)
    line = next(ledger.iter_results(engine, job_id))
    assert line["error"] == {"code": "corrupt_image", "message": "bad"}


def test_cancel_and_the_sweep_helpers(engine: Any) -> None:
    job_id = _job(engine, [f"s3://b/p/{i}" for i in range(5)])
    ledger.start(engine, job_id)
    ledger.record(engine, job_id, [_answer(2, "d" * 64)])
    assert ledger.stale_chunks(engine, job_id) == [0, 2, 4]
    assert [j for j, _ in ledger.running_jobs(engine)] == [job_id]
    assert ledger.active_totals(engine) == (1, 4)
    assert ledger.cancel(engine, job_id).state == "cancelled"
    assert ledger.active_totals(engine) == (0, 0)
    with pytest.raises(errors.JobNotFound):
        ledger.view(engine, "0" * 32)


def test_a_refused_job_is_dropped_whole(engine: Any) -> None:
    job_id = _job(engine, ["s3://b/p/0", "s3://b/p/1"])
    ledger.drop(engine, job_id)
    with pytest.raises(errors.JobNotFound):
        ledger.view(engine, job_id)
    assert list(ledger.iter_results(engine, job_id)) == []
