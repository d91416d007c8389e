"""Fixtures of the core's tests: a real Redis server and a link to it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from imageiq.redisconn import RedisLink, connect
from tests.backends import REDIS_COOLDOWN_S, RedisServer


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
