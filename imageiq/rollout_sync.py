"""Each replica's share of the closed loop, every ``rollout_interval_s``:

- applies the running canaries (:mod:`imageiq.rollout`) of the model names it serves: the
  challenger is imported from the model repository when its store lacks it, served beside
  the champion, and given its share of the requests that pin no version;
- judges them on the shared figures and ends one its policy says to end (a conditional
  update: one replica acts for all);
- stops routing to a canary that ended, and stops serving a rolled-back challenger;
- refreshes the closed-loop gauges from the database (labelled images per class, retrain
  runs by outcome, canary share and agreement).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from datetime import datetime
from typing import Any, Literal

import anyio
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from imageiq import rollout
from imageiq.db.engine import is_transient
from imageiq.db.schema import Evaluation, Label
from imageiq.errors import ImageIQError
from imageiq.health import Dependency
from imageiq.metrics import metrics
from imageiq.model_repo import ModelRepository
from imageiq.pool import Canary, ModelPool
from imageiq.redisconn import RedisLink, RedisUnavailable

log = logging.getLogger("imageiq.rollout")
_ERRORS_TTL_S = 30 * 24 * 3600


class RolloutSync:
    def __init__(
        self,
        pool: ModelPool,
        engine: Engine,
        *,
        database: Dependency,
        repo: ModelRepository,
        redis: RedisLink | None,
    ) -> None:
        self.pool, self._engine, self._database = pool, engine, database
        self._repo, self._redis = repo, redis
        self._actor = f"replica:{socket.gethostname()}"[:64]
        self._errors: Counter[str] = Counter()  # tag -> server errors not yet pushed
        self._pushed: dict[tuple[int, str], int] = {}  # local totals when Redis is absent
        self._failed: dict[str, str] = {}  # challenger tag -> why it cannot be served here

    def note_error(self, tag: str) -> None:
        """A server error answering with ``tag`` (counted while a canary of its name runs)."""
        name = tag.split(":", 1)[0]
        if name in self.pool.canaries:
            self._errors[tag] += 1

    async def run(self, interval_s: float) -> None:
        if interval_s <= 0:
            return
        while True:
            try:
                await self.check()
            except Exception:  # the loop must outlive any one bad rollout
                log.exception("applying canary rollouts failed")
            await asyncio.sleep(interval_s)

    async def check(self) -> list[str]:
        """One round; returns what it did, for tests and logs (``canary name:v``,
        ``rollback name:v``, ``promote name:v``, ``ended name:v``)."""
        try:
            rows = await anyio.to_thread.run_sync(rollout.running, self._engine)
        except SQLAlchemyError as e:
            if not is_transient(e):
                raise
            self._database.failed(e)
            return []
        served_names = {m.model.name for m in self.pool.models.values()}
        done: list[str] = []
        live = {r.model_name: r for r in rows if r.model_name in served_names}
        for name, canary in list(self.pool.canaries.items()):
            if name not in live or live[name].id != canary.rollout_id:
                done += await self._stop(name, canary)
        for r in live.values():
            done += await self._apply(r)
        await anyio.to_thread.run_sync(self._refresh_gauges)
        return done

    async def _apply(self, r: rollout.RolloutInfo) -> list[str]:
        done = []
        if r.challenger not in self.pool.models:
            if r.challenger in self._failed:
                return []
            try:
                await anyio.to_thread.run_sync(self._repo.ensure_local, r.challenger)
            except ImageIQError as e:
                self._failed[r.challenger] = e.message
                log.error("canary %s cannot be served here: %s", r.challenger, e.message)
                return []
            if not await self.pool.serve_beside(r.challenger):
                return []  # loading failed or another reload ran: the next round retries
        if r.model_name not in self.pool.canaries:
            log.info("canary: %.0f%% of %s to %s", r.share * 100, r.model_name, r.challenger)
            done.append(f"canary {r.challenger}")
        self.pool.canaries[r.model_name] = Canary(r.id, r.challenger, r.share)
        metrics().canary_share.labels(r.model_name, r.challenger_version).set(r.share)
        errors = await anyio.to_thread.run_sync(self._error_counts, r)
        stats = await anyio.to_thread.run_sync(
            lambda: rollout.version_stats(self._engine, r, errors_by_version=errors)
        )
        for version, s in stats.items():
            if s.agreement is not None:
                metrics().canary_agreement.labels(r.model_name, version).set(s.agreement)
        verdict = rollout.judge(stats[r.champion_version], stats[r.challenger_version], r.policy)
        figures: dict[str, Any] = {
            "versions": {v: vars(s) | {"error_rate": s.error_rate} for v, s in stats.items()},
            "verdict": verdict.action,
            "reasons": verdict.reasons,
            "at": datetime.now().astimezone().isoformat(),
        }
        if verdict.action == "wait":
            await anyio.to_thread.run_sync(rollout.save_stats, self._engine, r.id, figures)
            return done
        state: Literal["promoted", "rolled_back"] = (
            "rolled_back" if verdict.action == "rollback" else "promoted"
        )
        won = await anyio.to_thread.run_sync(
            lambda: rollout.end(
                self._engine,
                r,
                state=state,
                actor=self._actor,
                reason="; ".join(verdict.reasons),
                stats=figures,
            )
        )
        if won:
            log.warning("canary %s %s: %s", r.challenger, state, "; ".join(verdict.reasons))
            if state == "rolled_back":
                metrics().canary_rollbacks.labels(r.model_name).inc()
            done.append(f"{verdict.action} {r.challenger}")
        return done

    async def _stop(self, name: str, canary: Canary) -> list[str]:
        """The canary ended (here or elsewhere): stop routing to it; a rolled-back
        challenger is no longer served (a promoted one is, by the activation)."""
        del self.pool.canaries[name]
        version = canary.challenger.split(":", 1)[1]
        metrics().canary_share.labels(name, version).set(0)
        ended = await anyio.to_thread.run_sync(rollout.get, self._engine, canary.rollout_id)
        if ended is not None and ended.state == "rolled_back":
            await self.pool.stop_serving(canary.challenger)
        log.info("canary of %s ended (%s)", canary.challenger, ended.state if ended else "gone")
        return [f"ended {canary.challenger}"]

    def _error_counts(self, r: rollout.RolloutInfo) -> dict[str, int]:
        """Server errors per version of this rollout, all replicas' when Redis is there."""
        local = {
            v: self._errors.pop(f"{r.model_name}:{v}", 0)
            for v in (r.champion_version, r.challenger_version)
        }
        key = f"imageiq:rollout:{r.id}:errors"
        if self._redis is not None:
            try:

                def push(client: Any) -> dict[Any, Any]:
                    pipe = client.pipeline()
                    for version, n in local.items():
                        if n:
                            pipe.hincrby(key, version, n)
                    pipe.expire(key, _ERRORS_TTL_S)
                    pipe.hgetall(key)
                    return dict(pipe.execute()[-1])

                raw = self._redis.call(push)
                return {_text(k): int(v) for k, v in raw.items()}
            except RedisUnavailable:
                pass  # counted here until Redis is back
        for version, n in local.items():
            self._pushed[(r.id, version)] = self._pushed.get((r.id, version), 0) + n
        return {v: self._pushed.get((r.id, v), 0) for v in local}

    def _refresh_gauges(self) -> None:
        try:
            per_class = labelled_per_class(self._engine)
            runs = retrain_runs(self._engine)
        except SQLAlchemyError as e:
            if not is_transient(e):
                raise
            self._database.failed(e)
            return
        m = metrics()
        for label, n in per_class.items():
            m.labelled_images.labels(label).set(n)
        for outcome, (n, last) in runs.items():
            m.retrain_runs.labels(outcome).set(n)
            if last is not None:
                m.retrain_last_run.labels(outcome).set(last.timestamp())


def labelled_per_class(engine: Engine) -> dict[str, int]:
    """Stored images per effective human label: the latest label given by an admin, else
    the latest given by a user (training.db_source documents the full precedence)."""
    rank = (
        func.row_number()
        .over(
            partition_by=Label.image_sha256,
            order_by=[
                (Label.source == "admin").desc(),
                Label.created_at.desc(),
                Label.id.desc(),
            ],
        )
        .label("rank")
    )
    inner = (
        select(Label.label, rank)
        .where(Label.source.in_(rollout.HUMAN_SOURCES), Label.label.is_not(None))
        .subquery()
    )
    with Session(engine) as session:
        rows = session.execute(
            select(inner.c.label, func.count()).where(inner.c.rank == 1).group_by(inner.c.label)
        ).all()
    return {str(label): int(n) for label, n in rows}


def retrain_runs(engine: Engine) -> dict[str, tuple[int, datetime | None]]:
    with Session(engine) as session:
        rows = session.execute(
            select(Evaluation.outcome, func.count(), func.max(Evaluation.finished_at)).group_by(
                Evaluation.outcome
            )
        ).all()
    return {str(o): (int(n), last) for o, n, last in rows}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
