"""The one Redis connection the prediction cache and the rate limiter share.

Redis is an optimisation here, never a requirement: when it is slow or gone, a request
must not wait for it. So the client gets short timeouts and no retries (redis-py retries
three times with back-off by default, which would turn an outage into seconds of latency
per request), and every command goes through :meth:`RedisLink.call`, which skips Redis
altogether while its :class:`~imageiq.health.Dependency` is cooling down after a failure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from imageiq.health import Dependency

T = TypeVar("T")

# Seconds to connect and to wait for an answer: a local or in-cluster Redis answers in well
# under a millisecond, so anything slower is treated as down.
DEFAULT_TIMEOUT_S = 0.25


class RedisUnavailable(Exception):
    """Redis failed or is cooling down: the caller carries on without it.

    Internal: it never reaches a client. Callers turn it into a cache miss, an in-process
    rate-limit decision, or :class:`imageiq.errors.CacheUnavailable` where the caller asked
    for something only Redis can do.
    """


class RedisLink:
    """A Redis client and the health of the server behind it."""

    def __init__(self, client: redis.Redis, dependency: Dependency) -> None:
        self.client = client
        self.dependency = dependency

    def call(self, fn: Callable[[redis.Redis], T]) -> T:
        """``fn(client)``, recording the outcome in :attr:`dependency`.

        Raises :class:`RedisUnavailable` at once during the cool-down (no connection
        attempt), or when ``fn`` fails with a Redis or socket error. A server answering
        with an error (a ``ResponseError``) counts as a failure too: that is a bug on our
        side, and the dependency's log line and ``/readyz`` make it visible.
        """
        if not self.dependency.available():
            raise RedisUnavailable("redis is down: skipped until its cool-down ends")
        try:
            result = fn(self.client)
        except (redis.RedisError, OSError) as e:
            self.dependency.failed(e)
            raise RedisUnavailable(str(e)) from e
        self.dependency.succeeded()
        return result

    def ping(self) -> bool:
        """Whether Redis answers now (for start-up and ``/readyz``); never raises."""
        try:
            return bool(self.call(lambda r: r.ping()))
        except RedisUnavailable:
            return False

    def close(self) -> None:
        self.client.close()


def connect(
    url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, cooldown_s: float = 2.0
) -> RedisLink:
    """A :class:`RedisLink` to ``url``. Connects lazily: a server that is down at start-up
    is reported by the first command (or :meth:`RedisLink.ping`), not raised here."""
    client = redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )
    return RedisLink(client, Dependency("redis", backend="redis", cooldown_s=cooldown_s))
