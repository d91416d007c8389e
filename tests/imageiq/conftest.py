"""Fixtures of the core's tests: a real Redis server and a link to it, and an emptied,
migrated metadata database of each kind (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from imageiq.db.engine import make_engine, upgrade
from imageiq.redisconn import RedisLink, connect
from tests.backends import REDIS_COOLDOWN_S, PostgresServer, RedisServer, migrated

TABLES = (
    "images, predictions, labels, models, api_keys, audit_log, tombstones, golden_images, "
    "evaluations, rollouts"
)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def link(redis_server: RedisServer) -> Iterator[RedisLink]:
    link = connect(redis_server.url, cooldown_s=REDIS_COOLDOWN_S)
    link.client.flushdb()
    yield link
    link.close()


@pytest.fixture(scope="module")
def postgres_engine() -> Iterator[Engine]:
    server = PostgresServer()
    try:
        server.start()
        setup = make_engine(server.url)
        with setup.begin() as connection:
            connection.execute(text("ALTER DATABASE postgres SET timezone TO 'Pacific/Kiritimati'"))
        setup.dispose()
        engine = make_engine(server.url)
        upgrade(engine)
        yield engine
        engine.dispose()
    finally:
        server.destroy()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty database of each kind."""
    if request.param == "postgresql":
        engine: Engine = request.getfixturevalue("postgres_engine")
        with engine.begin() as connection:
            connection.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
        yield engine
        return
    with migrated(f"sqlite:///{tmp_path / 'imageiq.db'}") as engine:
        yield engine
