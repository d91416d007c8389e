"""The workers' sweep: chunks lost with the broker (a Redis restart without persistence) are
published again, once per stale period, on a real Redis server started by the test."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imageiq.jobs import ledger, tasks
from imageiq.settings import Settings
from tests.backends import RedisServer, migrated


@pytest.fixture
def redis_url() -> Iterator[str]:
    server = RedisServer()
    server.start()
    yield server.url
    server.stop()


def _queued(url: str, queue: str) -> list[list[Any]]:
    import redis

    client = redis.Redis.from_url(url)
    messages = [json.loads(m) for m in client.lrange(queue, 0, -1)]
    return sorted(json.loads(base64.b64decode(m["body"]))[0] for m in messages)


def test_the_sweep_publishes_a_stalled_jobs_pending_chunks_once(
    redis_url: str, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, redis_url=redis_url, jobs_chunk_size=2)
    with migrated(settings.database) as engine:
        app = tasks.make_app(settings)
        runtime = tasks.WorkerRuntime(settings, engine=engine, app=app)
        job_id = ledger.new_id()
        ledger.create(
            engine,
            ledger.NewJob(
                model_name="m",
                model_version="v",
                top_k=1,
                min_confidence=0.0,
                source={"kind": "image_ids", "count": 5},
                chunk_size=2,
            ),
            [f"store:images/{i}" for i in range(5)],
            job_id=job_id,
        )
        ledger.start(engine, job_id)
        ledger.record(engine, job_id, [ledger.ItemOutcome(2, "a" * 64, None, "corrupt_image", "x")])

        # Answered recently: not stale, nothing published.
        assert tasks.sweep(runtime, stale_after_s=3600, claim=lambda _: True) == 0
        # Stale, and the chunk holding item 2 still has item 3 pending.
        tasks._sweep_once(runtime, stale_after_s=0.01)
        assert _queued(redis_url, settings.jobs_queue) == [
            [job_id, 0, 2],
            [job_id, 2, 4],
            [job_id, 4, 5],
        ]
        # Claimed for the stale period: a second sweep publishes nothing more.
        tasks._sweep_once(runtime, stale_after_s=0.01)
        assert len(_queued(redis_url, settings.jobs_queue)) == 3
        # A cancelled job is never swept.
        ledger.cancel(engine, job_id)
        assert tasks.sweep(runtime, stale_after_s=0, claim=lambda _: True) == 0
        runtime.close()


def test_progress_webhooks_are_queued_at_most_every_30_s(redis_url: str, tmp_path: Path) -> None:
    import redis

    settings = Settings(data_dir=tmp_path, redis_url=redis_url)
    with migrated(settings.database) as engine:
        runtime = tasks.WorkerRuntime(settings, engine=engine, app=tasks.make_app(settings))
        for _ in range(3):
            tasks._progress_webhook(runtime, "j" * 32)
        tasks._progress_webhook(runtime, "k" * 32)
        client = redis.Redis.from_url(redis_url)
        messages = [json.loads(m) for m in client.lrange(settings.jobs_queue, 0, -1)]
        assert sorted(
            (m["headers"]["task"], json.loads(base64.b64decode(m["body"]))[0][:2]) for m in messages
        ) == [
            (tasks.WEBHOOK_TASK, ["j" * 32, "job.progress"]),
            (tasks.WEBHOOK_TASK, ["k" * 32, "job.progress"]),
        ]
        assert 0 < client.ttl(f"{settings.jobs_queue}:progress:{'j' * 32}") <= 30
