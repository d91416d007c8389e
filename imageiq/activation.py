"""Model activations reach every replica: each polls the ``models`` table and serves the
version marked active for each model name it serves.

``POST /v1/admin/models/{name}/activate`` switches the replica that answers it at once and
marks the version active in the database; the others follow within ``reload_interval_s``,
and a replica that starts later serves the activated version too (imported from the model
repository, :mod:`imageiq.model_repo`, when its own store lacks it). An activation therefore
wins over ``IMAGEIQ_MODELS`` and the config file for that model name, until the next one.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

import anyio
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from imageiq.db.engine import is_transient
from imageiq.db.schema import Model
from imageiq.errors import ImageIQError
from imageiq.health import Dependency
from imageiq.model_repo import ModelRepository
from imageiq.pool import ModelPool

log = logging.getLogger("imageiq.activation")


class ActivationSync:
    def __init__(
        self, pool: ModelPool, engine: Engine, *, database: Dependency, repo: ModelRepository
    ) -> None:
        self.pool, self._engine, self._database, self._repo = pool, engine, database, repo
        self._seen: dict[str, tuple[str, datetime | None]] = {}

    async def run(self, interval_s: float) -> None:
        if interval_s <= 0:
            return
        while True:
            try:
                await self.check()
            except Exception:  # the loop must outlive any one bad activation
                log.exception("applying model activations failed")
            await asyncio.sleep(interval_s)

    async def check(self) -> list[str]:
        """Apply activations not seen yet; returns the tags switched to."""
        try:
            rows = await anyio.to_thread.run_sync(self._active_rows)
        except SQLAlchemyError as e:
            if not is_transient(e):
                raise
            self._database.failed(e)
            return []
        switched = []
        for name, version, updated_at in rows:
            if self._seen.get(name) == (version, updated_at):
                continue
            served = [m for m in self.pool.models.values() if m.model.name == name]
            if not served or any(m.model.version == version for m in served):
                self._seen[name] = (version, updated_at)
                continue
            try:
                # Not in this replica's store: imported from the model repository.
                model = await anyio.to_thread.run_sync(self._repo.ensure_local, f"{name}:{version}")
                tag = model.tag
            except ImageIQError as e:  # in neither: retrying will not help
                log.error("activated model %s:%s cannot be served here: %s", name, version, e)
                self._seen[name] = (version, updated_at)
                continue
            log.info("model %s was activated: switching to it", tag)
            if await self.pool.activate(tag):  # else (busy, or failed to load): next round
                self._seen[name] = (version, updated_at)
                switched.append(tag)
        return switched

    def _active_rows(self) -> list[tuple[str, str, datetime | None]]:
        with Session(self._engine) as session:
            rows = session.execute(
                select(Model.name, Model.version, Model.updated_at).where(Model.status == "active")
            ).all()
        return [(r[0], r[1], r[2]) for r in rows]
