"""The prediction cache: the same image, model version and top-k give the same answer, so a
repeated request skips decoding and inference.

Entries are keyed by the image's SHA-256 (not its bytes) and the exact model version, so a
new version never serves an old version's answer. Redis, when configured, shares the cache
between replicas; otherwise each replica keeps its own in memory. A cache is an
optimisation, so a Redis outage turns look-ups into misses (counted as ``error``) and
writes into no-ops, and only :meth:`forget` (deleting an image's data, which must not
silently leave copies behind) reports it, as ``503 cache_unavailable``.
"""

from __future__ import annotations

import contextlib
import json
import threading
from typing import Any, Literal, Protocol

from cachetools import TTLCache

from imageiq.errors import CacheUnavailable
from imageiq.health import Dependency
from imageiq.metrics import metrics
from imageiq.redisconn import RedisLink, RedisUnavailable
from imageiq.settings import Settings

PREFIX = "imageiq:pred:"
# A set per image of its cached keys, so forgetting an image finds them without a SCAN.
INDEX_PREFIX = "imageiq:img:"


def cache_key(
    *, sha256: str, model_name: str, model_version: str, top_k: int, full: bool = False
) -> str:
    """The key of one prediction; it starts with the image hash, easy to find by eye.
    ``full``: an entry that also keeps every head's whole distribution (the v2 protocol's)."""
    return f"{PREFIX}{sha256}:{model_name}:{model_version}:k{top_k}{':p' if full else ''}"


class PredictionCache(Protocol):
    backend: Literal["redis", "memory", "off"]
    dependency: Dependency | None

    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, value: dict[str, Any], *, sha256: str) -> None: ...

    def forget(self, sha256: str) -> int: ...


def _encode(value: dict[str, Any]) -> str:
    # Stored as JSON in every backend: a caller mutating what it put or got cannot change
    # the cached copy, and the memory cache behaves exactly as Redis does.
    return json.dumps(value, separators=(",", ":"))


def _count(result: Literal["hit", "miss", "error"]) -> None:
    metrics().cache.labels(result).inc()


class NoCache:
    """``cache_ttl_s: 0``: nothing is kept, and no look-up is counted (there are none)."""

    backend: Literal["redis", "memory", "off"] = "off"
    dependency: Dependency | None = None

    def get(self, key: str) -> dict[str, Any] | None:
        return None

    def put(self, key: str, value: dict[str, Any], *, sha256: str) -> None:
        return None

    def forget(self, sha256: str) -> int:
        return 0


class MemoryCache:
    """Per-replica cache, bounded in entries and age (LRU among live entries)."""

    backend: Literal["redis", "memory", "off"] = "memory"
    dependency: Dependency | None = None

    def __init__(self, *, ttl_s: float, max_entries: int) -> None:
        self._lock = threading.Lock()  # TTLCache is not thread-safe
        self._cache: TTLCache[str, tuple[str, str]] = TTLCache(maxsize=max_entries, ttl=ttl_s)
        # sha256 -> keys put for it. Entries that expired or were evicted stay in here
        # until the index holds twice as many keys as the cache can: then it is rebuilt
        # from the live entries (each remembers its image), so it stays bounded.
        self._index: dict[str, set[str]] = {}
        self._indexed = 0

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            item = self._cache.get(key)
        _count("miss" if item is None else "hit")
        return None if item is None else dict(json.loads(item[1]))

    def put(self, key: str, value: dict[str, Any], *, sha256: str) -> None:
        text = _encode(value)
        with self._lock:
            self._cache[key] = (sha256, text)
            keys = self._index.setdefault(sha256, set())
            if key not in keys:
                keys.add(key)
                self._indexed += 1
            if self._indexed > 2 * self._cache.maxsize:
                self._reindex()

    def forget(self, sha256: str) -> int:
        with self._lock:
            keys = self._index.pop(sha256, set())
            self._indexed -= len(keys)
            return sum(self._cache.pop(k, None) is not None for k in keys)

    def _reindex(self) -> None:
        self._cache.expire()
        self._index = {}
        for key, (sha256, _) in self._cache.items():
            self._index.setdefault(sha256, set()).add(key)
        self._indexed = len(self._cache)


class RedisCache:
    """Cache shared by every replica. Each entry expires on its own (``EX``); an image's
    index set lives as long as its newest entry."""

    backend: Literal["redis", "memory", "off"] = "redis"

    def __init__(self, link: RedisLink, *, ttl_s: int) -> None:
        self.link = link
        self.dependency: Dependency | None = link.dependency
        self.ttl_s = ttl_s

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            raw = self.link.call(lambda r: r.get(key))
        except RedisUnavailable:
            _count("error")
            return None
        try:
            value = None if raw is None else json.loads(raw)
        except ValueError:  # not ours, or truncated: recompute rather than fail
            value = None
        _count("hit" if isinstance(value, dict) else "miss")
        return value if isinstance(value, dict) else None

    def put(self, key: str, value: dict[str, Any], *, sha256: str) -> None:
        text, index = _encode(value), INDEX_PREFIX + sha256

        def write(r: Any) -> None:
            with r.pipeline(transaction=True) as pipe:
                pipe.set(key, text, ex=self.ttl_s)
                pipe.sadd(index, key)
                pipe.expire(index, self.ttl_s)
                pipe.execute()

        # Down: the answer is already on its way to the client; the next one recomputes.
        with contextlib.suppress(RedisUnavailable):
            self.link.call(write)

    def forget(self, sha256: str) -> int:
        """Deletes every cached prediction of the image; how many there were.

        The index is read and deleted in one transaction, so an entry put meanwhile lands
        in a fresh index rather than being lost between the two.
        """
        index = INDEX_PREFIX + sha256

        def drop(r: Any) -> int:
            with r.pipeline(transaction=True) as pipe:
                pipe.smembers(index)
                pipe.delete(index)
                members, _ = pipe.execute()
            return int(r.delete(*members)) if members else 0

        try:
            return self.link.call(drop)
        except RedisUnavailable as e:
            raise CacheUnavailable(
                "the prediction cache is unavailable: cached predictions of this image "
                "could not be deleted; try again shortly",
                retry_after=self.link.dependency.cooldown_s,
            ) from e


def build_cache(settings: Settings, redis: RedisLink | None) -> PredictionCache:
    """The cache ``settings`` ask for: off, shared through ``redis``, or in memory."""
    if settings.cache_ttl_s == 0:
        return NoCache()
    if redis is not None:
        return RedisCache(redis, ttl_s=settings.cache_ttl_s)
    return MemoryCache(ttl_s=settings.cache_ttl_s, max_entries=settings.cache_max_entries)
