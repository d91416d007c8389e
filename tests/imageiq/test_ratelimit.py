"""Per-key GCRA rate limits, in memory and against a real redis-server, including an
outage: the server killed mid-test (the limiter decides in-process), then a new one on the
same port (shared limits again)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY

from imageiq.ratelimit import PREFIX, RateLimiter, build_limiter
from imageiq.redisconn import RedisLink, connect
from imageiq.settings import Settings
from tests.backends import REDIS_COOLDOWN_S, RedisServer

COOLDOWN_S = REDIS_COOLDOWN_S


def refusals() -> float:
    return REGISTRY.get_sample_value("imageiq_rate_limited_total") or 0.0


@pytest.fixture(params=["memory", "redis"])
def make_limiter(request: pytest.FixtureRequest) -> Callable[[], RateLimiter]:
    def make() -> RateLimiter:
        redis = request.getfixturevalue("link") if request.param == "redis" else None
        limiter = build_limiter(Settings(), redis)
        assert limiter.backend == request.param
        return limiter

    return make


def test_zero_per_minute_is_unlimited(make_limiter: Callable[[], RateLimiter]) -> None:
    limiter, before = make_limiter(), refusals()
    decisions = [limiter.hit("k", per_minute=0, burst=1) for _ in range(100)]
    assert all(d.allowed and d.limit == 0 for d in decisions)
    assert refusals() == before


def test_burst_then_refusal(make_limiter: Callable[[], RateLimiter]) -> None:
    limiter, before = make_limiter(), refusals()
    decisions = [limiter.hit("k", per_minute=60, burst=5) for _ in range(5)]
    assert all(d.allowed and d.limit == 5 and d.retry_after_s == 0 for d in decisions)
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0]
    assert 4.5 < decisions[-1].reset_after_s <= 5.0  # five intervals of 1 s to drain

    refused = limiter.hit("k", per_minute=60, burst=5)
    assert not refused.allowed and refused.remaining == 0
    assert 0.5 < refused.retry_after_s <= 1.0  # one interval, less the time spent so far
    assert refusals() - before == 1


def test_recovery_after_waiting(make_limiter: Callable[[], RateLimiter]) -> None:
    limiter = make_limiter()
    assert all(limiter.hit("k", per_minute=300, burst=2).allowed for _ in range(2))
    refused = limiter.hit("k", per_minute=300, burst=2)
    assert not refused.allowed and 0.1 < refused.retry_after_s <= 0.2
    time.sleep(refused.retry_after_s + 0.02)
    assert limiter.hit("k", per_minute=300, burst=2).allowed
    assert not limiter.hit("k", per_minute=300, burst=2).allowed
    time.sleep(0.45)  # two intervals: the bucket is full again
    assert [limiter.hit("k", per_minute=300, burst=2).allowed for _ in range(3)] == [
        True,
        True,
        False,
    ]


def test_keys_are_limited_separately(make_limiter: Callable[[], RateLimiter]) -> None:
    limiter = make_limiter()
    assert all(limiter.hit("a", per_minute=1, burst=3).allowed for _ in range(3))
    assert not limiter.hit("a", per_minute=1, burst=3).allowed
    assert limiter.hit("b", per_minute=1, burst=3).allowed
    assert limiter.hit("b", per_minute=1, burst=3).remaining == 1


def test_settings_give_the_default_limits() -> None:
    limiter = build_limiter(Settings(rate_limit_per_minute=60, rate_limit_burst=3), None)
    assert [limiter.hit("k").allowed for _ in range(4)] == [True, True, True, False]
    assert limiter.hit("k", per_minute=0).allowed  # a key's own limit overrides


def test_answers_from_memory_unless_a_limit_is_counted_in_redis(link: RedisLink) -> None:
    """The service counts on its event loop exactly the hits that need no network call."""
    local, shared = RateLimiter(None, per_minute=60), RateLimiter(link, per_minute=60)
    assert local.answers_from_memory() and local.answers_from_memory(600)
    assert shared.answers_from_memory(0)  # unlimited: nothing to count
    assert not shared.answers_from_memory() and not shared.answers_from_memory(600)
    assert RateLimiter(link, per_minute=0).answers_from_memory()


def test_replicas_share_the_limit_through_redis(link: RedisLink) -> None:
    one, two = RateLimiter(link), RateLimiter(link)
    assert one.hit("k", per_minute=60, burst=2).allowed
    assert two.hit("k", per_minute=60, burst=2).allowed
    assert not one.hit("k", per_minute=60, burst=2).allowed
    assert link.client.keys(PREFIX + "*") == [(PREFIX + "k").encode()]
    assert 0 < link.client.pttl(PREFIX + "k") <= 2000  # gone once the bucket is full


def test_redis_outage_falls_back_in_process() -> None:
    server = RedisServer()
    server.start()
    again = RedisServer()
    again.port = server.port
    link = connect(server.url, cooldown_s=COOLDOWN_S)
    try:
        limiter = RateLimiter(link)
        assert limiter.dependency is link.dependency and limiter.backend == "redis"
        assert limiter.hit("k", per_minute=60, burst=3).allowed

        server.stop()
        started = time.monotonic()
        decisions = [limiter.hit("k", per_minute=60, burst=3) for _ in range(20)]
        assert time.monotonic() - started < 2.0
        # A fresh in-process budget: three, then refusals with a sensible Retry-After.
        assert [d.allowed for d in decisions] == [True] * 3 + [False] * 17
        assert all(0.5 < d.retry_after_s <= 1.0 for d in decisions[3:])
        assert link.dependency.describe()["state"] == "down" and not link.dependency.up

        again.start()
        time.sleep(COOLDOWN_S)
        shared = limiter.hit("fresh", per_minute=60, burst=3)
        assert shared.allowed and shared.remaining == 2
        assert link.dependency.up and link.dependency.describe()["state"] == "up"
        assert link.client.exists(PREFIX + "fresh") == 1  # decided in Redis again
    finally:
        link.close()
        server.stop()
        again.stop()
