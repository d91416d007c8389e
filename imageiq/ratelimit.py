"""Per-API-key rate limits, with GCRA (the generic cell rate algorithm).

GCRA is a leaky bucket that stores one number per key, its theoretical arrival time (TAT):
when the key's bucket would be empty again if requests kept coming at the allowed pace.
A request is allowed while that lies at most ``burst`` request intervals in the future.
So a key may send ``burst`` requests at once, then one every ``60 / per_minute`` seconds,
and every refusal knows exactly when the next request would pass (``Retry-After``), with
no counters to reset and no window edges where twice the limit slips through.

With Redis the decision is one atomic Lua script, so every replica shares a key's budget.
The script reads the time from the Redis server (``TIME``), not from the replicas, whose
clocks may disagree. When Redis is down, each replica decides on its own (in memory, from
a fresh budget): a client may then get up to one budget per replica, which beats refusing
everyone or letting everyone through. A rate limiter never fails a request.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

from imageiq.health import Dependency
from imageiq.metrics import metrics
from imageiq.redisconn import RedisLink, RedisUnavailable
from imageiq.settings import Settings

PREFIX = "imageiq:rl:"

# KEYS[1]: the key's TAT, in microseconds of Redis server time.
# ARGV[1]: microseconds between two requests at the allowed pace; ARGV[2]: burst;
# ARGV[3]: the cost of this request (images), in requests.
# Returns {allowed, remaining, retry_after_us, reset_after_us}: integers, since Redis
# truncates Lua numbers; the TAT is written with %.0f because tostring() would round it.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local cost = interval * tonumber(ARGV[3])
local allow_at = tat + cost - interval * tonumber(ARGV[2])
if now < allow_at then
  return {0, 0, math.ceil(allow_at - now), math.ceil(tat - now)}
end
local new_tat = tat + cost
redis.call('SET', KEYS[1], string.format('%.0f', new_tat),
           'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((now - allow_at) / interval + 1e-6), 0, math.ceil(new_tat - now)}
"""


@dataclass(frozen=True)
class Decision:
    """One request's verdict, and what the ``RateLimit-*`` / ``Retry-After`` headers say.

    ``limit`` is the burst (the size of the bucket ``remaining`` counts down from); 0 means
    the key is unlimited. ``retry_after_s`` is 0 when allowed; ``reset_after_s`` is when
    the bucket is full again.
    """

    allowed: bool
    limit: int
    remaining: int
    retry_after_s: float
    reset_after_s: float
    cost: int = 1


UNLIMITED = Decision(allowed=True, limit=0, remaining=0, retry_after_s=0.0, reset_after_s=0.0)


class LocalGCRA:
    """GCRA in this process (monotonic clock), for one replica."""

    # Keys whose bucket is full again are dropped once there are this many (or, when most
    # keys are busy, twice as many as were left after the last pruning).
    PRUNE_AT = 10_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tat: dict[str, float] = {}
        self._prune_at = self.PRUNE_AT

    def decide(self, key_id: str, *, interval: float, burst: int, cost: int = 1) -> Decision:
        with self._lock:
            now = time.monotonic()
            tat = max(self._tat.get(key_id, now), now)
            allow_at = tat + interval * cost - interval * burst
            if now < allow_at:
                return Decision(
                    allowed=False,
                    limit=burst,
                    remaining=0,
                    retry_after_s=allow_at - now,
                    reset_after_s=tat - now,
                    cost=cost,
                )
            self._tat[key_id] = tat + interval * cost
            if len(self._tat) > self._prune_at:
                self._tat = {k: v for k, v in self._tat.items() if v > now}
                self._prune_at = max(self.PRUNE_AT, 2 * len(self._tat))
        remaining = math.floor((now - allow_at) / interval + 1e-9)
        return Decision(
            allowed=True,
            limit=burst,
            remaining=remaining,
            retry_after_s=0.0,
            reset_after_s=tat + interval * cost - now,
            cost=cost,
        )


class RateLimiter:
    """Decides whether an API key may make one more request now.

    ``backend`` is "redis" when the limits are shared through Redis (falling back to this
    process while it is down), "memory" when each replica keeps its own.
    """

    def __init__(
        self, redis: RedisLink | None = None, *, per_minute: int = 600, burst: int = 60
    ) -> None:
        # The limits of a key that has none of its own.
        self.per_minute, self.burst = per_minute, burst
        self._redis = redis
        self._local = LocalGCRA()
        self.backend: Literal["redis", "memory"] = "memory" if redis is None else "redis"
        self.dependency: Dependency | None = None if redis is None else redis.dependency
        self._script: Any = None if redis is None else redis.client.register_script(_GCRA)

    def hit(
        self,
        key_id: str,
        *,
        per_minute: int | None = None,
        burst: int | None = None,
        cost: int = 1,
    ) -> Decision:
        """Counts ``cost`` requests of ``key_id`` (the images of a batch: one each) against
        ``per_minute`` (0: unlimited), of which ``burst`` may come at once; None is the
        limiter's default. A refused hit counts nothing. Never raises: a backend problem
        decides in this process instead."""
        per_minute = self.per_minute if per_minute is None else per_minute
        if per_minute <= 0:
            return UNLIMITED
        burst = max(self.burst if burst is None else burst, 1)
        interval = 60.0 / per_minute
        decision = self._shared(key_id, interval=interval, burst=burst, cost=cost)
        if decision is None:
            decision = self._local.decide(key_id, interval=interval, burst=burst, cost=cost)
        if not decision.allowed:
            metrics().rate_limited.inc()
        return decision

    def answers_from_memory(self, per_minute: int | None = None) -> bool:
        """Whether :meth:`hit` decides without a network call: no limit, or no Redis."""
        per_minute = self.per_minute if per_minute is None else per_minute
        return per_minute <= 0 or self._redis is None

    def _shared(self, key_id: str, *, interval: float, burst: int, cost: int) -> Decision | None:
        if self._redis is None:
            return None
        keys, args = [PREFIX + key_id], [repr(interval * 1e6), burst, cost]
        try:
            allowed, remaining, retry_us, reset_us = self._redis.call(
                lambda r: self._script(keys=keys, args=args, client=r)
            )
        except RedisUnavailable:
            return None
        return Decision(
            allowed=bool(allowed),
            limit=burst,
            remaining=int(remaining),
            retry_after_s=retry_us / 1e6,
            reset_after_s=reset_us / 1e6,
            cost=cost,
        )


def build_limiter(settings: Settings, redis: RedisLink | None) -> RateLimiter:
    """The limiter for the service: shared through ``redis`` when there is one, with the
    configured limits for keys that have none of their own."""
    return RateLimiter(
        redis, per_minute=settings.rate_limit_per_minute, burst=settings.rate_limit_burst
    )
