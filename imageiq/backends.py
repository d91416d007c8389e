"""The service's connections, opened together from the settings: the metadata database,
the object store, Redis (cache and rate limits) and the API keys, plus the recorder that
writes the prediction log and the denial log that audits refused attempts. The service
builds one at start-up and closes it at shutdown; the CLI builds the parts it needs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from imageiq.audit import DenialLog
from imageiq.cache import PredictionCache, build_cache
from imageiq.db.engine import check_migrated, describe, make_engine
from imageiq.errors import StorageUnavailable
from imageiq.health import Dependency
from imageiq.keys import KeyRing
from imageiq.ratelimit import RateLimiter, build_limiter
from imageiq.recorder import Recorder
from imageiq.redisconn import RedisLink, connect
from imageiq.settings import Settings
from imageiq.spool import Spool, instance_name
from imageiq.storage import ObjectStore, build_store

log = logging.getLogger("imageiq.backends")


def open_database(settings: Settings) -> Engine:
    return make_engine(settings.database, timeout_s=settings.database_timeout_s)


def open_redis(settings: Settings) -> RedisLink | None:
    return connect(settings.redis_url.get_secret_value()) if settings.redis_url else None


@dataclass
class Backends:
    settings: Settings
    engine: Engine
    database: Dependency
    store: ObjectStore
    redis: RedisLink | None
    cache: PredictionCache
    limiter: RateLimiter
    keys: KeyRing
    recorder: Recorder
    denials: DenialLog

    @classmethod
    def open(cls, settings: Settings) -> Backends:
        """Connect everything; refuses (raises) an unmigrated or unreachable database and
        a missing bucket, the mistakes a restart will not fix by itself. An object store
        that does not answer is an outage, not a mistake: the service starts without it
        (a pod replaced during an S3 outage must come up and replay what it adopts)."""
        engine = open_database(settings)
        check_migrated(engine)
        store = build_store(settings)
        try:
            store.check()
        except StorageUnavailable as e:
            log.warning("%s: serving; images are stored once it answers", e.message)
        redis = open_redis(settings)
        if redis is not None and not redis.ping():
            log.warning("Redis does not answer yet: serving uncached until it does")
        database = Dependency("database", backend=engine.dialect.name)
        recorder = Recorder(
            engine,
            store,
            database=database,
            spool=Spool(settings.data_dir / "spool", instance=instance_name()),
            max_bytes=settings.backlog_max_bytes,
            queue_size=settings.record_queue_size,
            batch_size=settings.record_batch_size,
            flush_interval_s=settings.record_flush_interval_s,
        )
        log.info(
            "metadata in %s, images in %s (%s), cache %s",
            describe(engine.url),
            store.where,
            store.backend,
            "redis" if redis else "in-process",
        )
        return cls(
            settings=settings,
            engine=engine,
            database=database,
            store=store,
            redis=redis,
            cache=build_cache(settings, redis),
            limiter=build_limiter(settings, redis),
            keys=KeyRing(
                engine,
                pepper=settings.pepper,
                ttl_s=settings.auth_cache_ttl_s,
                stale_grace_s=settings.auth_stale_grace_s,
                database=database,
            ),
            recorder=recorder,
            denials=DenialLog(engine, database=database),
        )

    def start(self) -> None:
        self.recorder.start()
        self.denials.start()

    def close(self) -> None:
        self.denials.close(timeout_s=5.0)
        self.recorder.close(timeout_s=10.0)
        if self.redis is not None:
            self.redis.close()
        self.engine.dispose()

    def describe(self) -> dict[str, Any]:
        """The dependencies' state, for /readyz and /v1/models."""
        states: dict[str, Any] = {
            "database": self.database.describe(),
            "storage": self.store.dependency.describe(),
        }
        redis = (
            self.redis.dependency.describe() if self.redis else {"backend": "memory", "state": "up"}
        )
        states["redis"] = redis
        states["records_pending"] = self.recorder.pending
        return states
