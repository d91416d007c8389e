"""The prediction cache, in memory and against a real redis-server, including an outage:
the server killed (and frozen) mid-test, then a new one on the same port."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import REGISTRY

from imageiq.cache import INDEX_PREFIX, PredictionCache, build_cache, cache_key
from imageiq.errors import CacheUnavailable
from imageiq.redisconn import RedisLink, connect
from imageiq.settings import Settings
from tests.backends import REDIS_COOLDOWN_S, RedisServer

COOLDOWN_S = REDIS_COOLDOWN_S
SHA_A, SHA_B = "a" * 64, "b" * 64


def key(sha256: str = SHA_A, *, version: str = "v1", top_k: int = 5) -> str:
    return cache_key(sha256=sha256, model_name="digits", model_version=version, top_k=top_k)


def counted(result: str) -> float:
    return REGISTRY.get_sample_value("imageiq_cache_requests_total", {"result": result}) or 0.0


def stored_keys(link: RedisLink) -> set[str]:
    return {k.decode() if isinstance(k, bytes) else k for k in link.client.keys("imageiq:*")}


@pytest.fixture(params=["memory", "redis"])
def make_cache(request: pytest.FixtureRequest) -> Callable[..., PredictionCache]:
    def make(*, ttl_s: int = 60, max_entries: int = 100) -> PredictionCache:
        settings = Settings(cache_ttl_s=ttl_s, cache_max_entries=max_entries)
        redis = request.getfixturevalue("link") if request.param == "redis" else None
        cache = build_cache(settings, redis)
        assert cache.backend == request.param
        return cache

    return make


@pytest.fixture
def own_redis() -> Iterator[list[RedisServer]]:
    """Servers a test may stop and replace; whatever is still running is stopped after."""
    servers = [RedisServer()]
    servers[0].start()
    yield servers
    for server in servers:
        if server.proc is not None:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


def test_key_names_everything_that_changes_the_answer() -> None:
    assert key().startswith("imageiq:pred:" + SHA_A)
    assert len({key(), key(SHA_B), key(version="v2"), key(top_k=3)}) == 4


def test_hit_and_miss_are_counted(make_cache: Callable[..., PredictionCache]) -> None:
    cache = make_cache()
    hits, misses = counted("hit"), counted("miss")
    assert cache.get(key()) is None
    value = {"predictions": [{"label": "7", "score": 0.9}]}
    cache.put(key(), value, sha256=SHA_A)
    got = cache.get(key())
    assert got == value
    assert got is not None
    got["predictions"].clear()  # the caller's copy, not the cached one
    assert cache.get(key()) == value
    assert cache.get(key(top_k=1)) is None
    assert (counted("hit") - hits, counted("miss") - misses) == (2, 2)


def test_entries_expire(make_cache: Callable[..., PredictionCache]) -> None:
    cache = make_cache(ttl_s=1)
    cache.put(key(), {"x": 1}, sha256=SHA_A)
    assert cache.get(key()) == {"x": 1}
    time.sleep(1.3)
    assert cache.get(key()) is None


def test_forget_drops_every_entry_of_the_image(
    make_cache: Callable[..., PredictionCache],
) -> None:
    cache = make_cache()
    for k in (key(), key(version="v2"), key(top_k=1)):
        cache.put(k, {"k": k}, sha256=SHA_A)
    cache.put(key(), {"x": 1}, sha256=SHA_A)  # the same key again counts once
    cache.put(key(SHA_B), {"b": 1}, sha256=SHA_B)
    assert cache.forget(SHA_A) == 3
    assert all(cache.get(k) is None for k in (key(), key(version="v2"), key(top_k=1)))
    assert cache.get(key(SHA_B)) == {"b": 1}
    assert cache.forget(SHA_A) == 0


def test_forget_in_redis_leaves_no_key_behind(link: RedisLink) -> None:
    cache = build_cache(Settings(cache_ttl_s=60), link)
    for k in (key(), key(version="v2")):
        cache.put(k, {"k": k}, sha256=SHA_A)
    cache.put(key(SHA_B), {"b": 1}, sha256=SHA_B)
    every = {key(), key(version="v2"), key(SHA_B), INDEX_PREFIX + SHA_A, INDEX_PREFIX + SHA_B}
    assert stored_keys(link) == every
    assert 0 < link.client.ttl(key()) <= 60 and 0 < link.client.ttl(INDEX_PREFIX + SHA_A) <= 60
    assert cache.forget(SHA_A) == 2
    assert stored_keys(link) == {
        key(SHA_B),
        INDEX_PREFIX + SHA_B,
    }


def test_memory_cache_is_bounded() -> None:
    cache = build_cache(Settings(cache_ttl_s=60, cache_max_entries=3), None)
    for i in range(10):
        sha = f"{i:064x}"
        cache.put(key(sha), {"i": i}, sha256=sha)
    assert [cache.get(key(f"{i:064x}")) for i in range(10)][-3:] == [{"i": 7}, {"i": 8}, {"i": 9}]
    assert cache.get(key(f"{0:064x}")) is None
    assert sum(cache.forget(f"{i:064x}") for i in range(10)) == 3


def test_off_cache_keeps_and_counts_nothing() -> None:
    cache = build_cache(Settings(cache_ttl_s=0), None)
    before = (counted("hit"), counted("miss"), counted("error"))
    cache.put(key(), {"x": 1}, sha256=SHA_A)
    assert cache.backend == "off" and cache.dependency is None
    assert cache.get(key()) is None and cache.forget(SHA_A) == 0
    assert (counted("hit"), counted("miss"), counted("error")) == before


def fast_misses(cache: PredictionCache) -> float:
    errors, started = counted("error"), time.monotonic()
    for _ in range(20):
        assert cache.get(key()) is None
        cache.put(key(), {"x": 1}, sha256=SHA_A)  # silently dropped
    assert counted("error") - errors == 20
    return time.monotonic() - started


def test_redis_outage_and_recovery(
    own_redis: list[RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="imageiq.health")
    link = connect(own_redis[0].url, cooldown_s=COOLDOWN_S)
    cache = build_cache(Settings(cache_ttl_s=60), link)
    assert cache.dependency is link.dependency
    cache.put(key(), {"x": 1}, sha256=SHA_A)
    assert cache.get(key()) == {"x": 1}

    own_redis[0].stop()
    assert fast_misses(cache) < 2.0
    assert link.dependency.describe()["state"] == "down" and not link.dependency.up
    assert link.ping() is False
    time.sleep(COOLDOWN_S)  # forget probes again rather than skip: it still fails
    with pytest.raises(CacheUnavailable) as raised:
        cache.forget(SHA_A)
    assert raised.value.status == 503 and raised.value.code == "cache_unavailable"

    again = RedisServer()
    again.port = own_redis[0].port
    own_redis.append(again)
    again.start()
    time.sleep(COOLDOWN_S)
    assert cache.get(key()) is None  # a new, empty server
    assert link.dependency.up and link.dependency.describe()["state"] == "up"
    cache.put(key(), {"x": 2}, sha256=SHA_A)
    assert cache.get(key()) == {"x": 2}
    assert cache.forget(SHA_A) == 1
    # Logged once per change of state, not once per request.
    said = [r.getMessage() for r in caplog.records]
    assert [m.split(" is ")[1][:4] for m in said if m.startswith("redis")] == ["down", "back"]
    link.close()


def test_a_frozen_redis_costs_one_timeout_per_cool_down(own_redis: list[RedisServer]) -> None:
    """A server that accepts connections but never answers (stopped, overloaded, a
    half-open network path): the short timeout and the cool-down bound the damage."""
    server = own_redis[0]
    assert server.proc is not None
    link = connect(server.url, cooldown_s=COOLDOWN_S)
    cache = build_cache(Settings(cache_ttl_s=60), link)
    cache.put(key(), {"x": 1}, sha256=SHA_A)
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        assert fast_misses(cache) < 2.0
        assert not link.dependency.up
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    time.sleep(COOLDOWN_S)
    assert cache.get(key()) == {"x": 1}
    assert link.dependency.up
    link.close()
