"""Canary rollouts: a share of live requests on a challenger version, judged on live figures.

A rollout row (``rollouts``) says: of the requests for ``model_name`` that name no version,
``share`` go to ``challenger_version``, the rest to ``champion_version``. Every replica
applies it (:class:`imageiq.rollout_sync.RolloutSync`) and judges it on the same figures,
all from the shared stores, so whichever replica acts first acts for all:

- requests, mean top-1 confidence and p95 latency per version: the prediction log since the
  rollout started (cache hits left out);
- errors per version: server errors counted in Redis while the canary runs;
- agreement with feedback: of a version's canary predictions whose image got a human label
  (user or admin) afterwards, the share whose top-1 was that label.

:func:`judge` applies the rollout's :class:`RolloutPolicy`: once both versions have
``min_requests``, the challenger is rolled back when it is worse than the champion by more
than a margin on any figure (agreement only once both have ``min_feedback`` labelled
predictions); with ``promote_after`` it is promoted once it has served that many requests
without being worse. :func:`end` makes the change with a conditional update, so two replicas
judging at once end a rollout once; a promotion marks the challenger active, which every
replica then serves (:mod:`imageiq.activation`).

A person starts and ends one with :func:`start_by_hand` and :func:`end_by_hand`, the same
for ``imageiq rollout`` and ``POST /v1/admin/rollouts``; the running replicas pick the
change up within ``rollout_interval_s``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine, case, func, select, text, update
from sqlalchemy.orm import Session

from imageiq import errors
from imageiq.db.schema import AuditEntry, Label, Model, Prediction, Rollout, utcnow
from imageiq.review import champion_version

if TYPE_CHECKING:
    from imageiq.model_repo import ModelRepository

HUMAN_SOURCES = ("user", "admin")
_SAMPLE = 5000  # latest predictions per version the confidence and latency figures use


class RolloutPolicy(BaseModel):
    """When a canary is judged, and what counts as worse."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_requests: int = Field(50, ge=1, le=10_000_000)  # per version, before any verdict
    min_feedback: int = Field(20, ge=1, le=10_000_000)  # labelled predictions, for agreement
    agreement_margin: float = Field(0.05, ge=0.0, le=1.0)
    confidence_margin: float = Field(0.10, ge=0.0, le=1.0)
    error_margin: float = Field(0.02, ge=0.0, le=1.0)
    latency_factor: float = Field(2.0, ge=1.0, le=100.0)  # challenger p95 over champion's
    promote_after: int = Field(0, ge=0, le=100_000_000)  # challenger requests; 0: by hand


@dataclass(frozen=True)
class VersionStats:
    version: str
    requests: int
    mean_confidence: float | None
    p95_latency_ms: float | None
    errors: int
    feedback: int  # canary predictions of this version labelled by a human afterwards
    agreement: float | None  # the share of those whose top-1 was the label

    @property
    def error_rate(self) -> float:
        return self.errors / max(1, self.requests + self.errors)


@dataclass(frozen=True)
class Verdict:
    action: Literal["wait", "rollback", "promote"]
    reasons: list[str]


@dataclass(frozen=True)
class RolloutInfo:
    id: int
    model_name: str
    champion_version: str
    challenger_version: str
    share: float
    state: str
    policy: RolloutPolicy
    started_at: datetime
    started_by: str | None
    ended_at: datetime | None
    ended_by: str | None
    reason: str | None
    last_stats: dict[str, Any]
    evaluation_id: int | None

    @property
    def champion(self) -> str:
        return f"{self.model_name}:{self.champion_version}"

    @property
    def challenger(self) -> str:
        return f"{self.model_name}:{self.challenger_version}"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["policy"] = self.policy.model_dump()
        return out


class RolloutConflict(errors.ImageIQError):
    status, code = 409, "rollout_conflict"


class RolloutNotFound(errors.ImageIQError):
    status, code = 404, "rollout_not_found"


class RolloutEnded(errors.ImageIQError):
    """Promoting or rolling back a canary that already ended (by its policy, on another
    replica, or by a person)."""

    status, code = 409, "rollout_ended"


class NoChampion(errors.ImageIQError):
    """A canary needs a champion: a version of the name marked active, or served."""

    status, code = 409, "no_active_version"


# --- starting, reading and ending ------------------------------------------------------------
def start(
    engine: Engine,
    *,
    model_name: str,
    champion_version: str,
    challenger_version: str,
    share: float,
    policy: RolloutPolicy,
    actor: str | None,
    evaluation_id: int | None = None,
    request_id: str | None = None,
    client_request_id: str | None = None,
) -> RolloutInfo:
    """Start a canary; ``RolloutConflict`` when one already runs for the name. Audited."""
    if not 0.0 < share < 1.0:
        raise errors.InvalidParameter(f"A canary share is between 0 and 1 (exclusive): {share}.")
    if champion_version == challenger_version:
        raise RolloutConflict(f"{model_name}:{challenger_version} is the champion already.")
    with Session(engine, expire_on_commit=False) as session, session.begin():
        _lock(session, model_name)
        running = session.scalar(
            select(Rollout).where(Rollout.model_name == model_name, Rollout.state == "running")
        )
        if running is not None:
            raise RolloutConflict(
                f"A canary of {model_name}:{running.challenger_version} is running (rollout "
                f"{running.id}): promote or roll it back first.",
                details={"rollout": running.id},
            )
        row = Rollout(
            model_name=model_name,
            champion_version=champion_version,
            challenger_version=challenger_version,
            share=share,
            state="running",
            policy=policy.model_dump(),
            evaluation_id=evaluation_id,
            started_at=utcnow(),
            started_by=actor,
            last_stats={},
        )
        session.add(row)
        session.flush()
        session.add(
            AuditEntry(
                actor=actor,
                action="rollout.start",
                target=f"{model_name}:{challenger_version}",
                detail={
                    "rollout": row.id,
                    "champion": champion_version,
                    "share": share,
                    "policy": policy.model_dump(),
                },
                request_id=request_id,
                client_request_id=client_request_id,
            )
        )
    return _info(row)


def running(engine: Engine) -> list[RolloutInfo]:
    with Session(engine) as session:
        rows = session.scalars(select(Rollout).where(Rollout.state == "running")).all()
        return [_info(r) for r in rows]


def latest(engine: Engine, model_name: str, *, limit: int = 10) -> list[RolloutInfo]:
    with Session(engine) as session:
        rows = session.scalars(
            select(Rollout)
            .where(Rollout.model_name == model_name)
            .order_by(Rollout.started_at.desc(), Rollout.id.desc())
            .limit(limit)
        ).all()
        return [_info(r) for r in rows]


def get(engine: Engine, rollout_id: int) -> RolloutInfo | None:
    with Session(engine) as session:
        row = session.get(Rollout, rollout_id)
        return _info(row) if row is not None else None


def end(
    engine: Engine,
    rollout: RolloutInfo,
    *,
    state: Literal["promoted", "rolled_back"],
    actor: str | None,
    reason: str,
    stats: dict[str, Any] | None = None,
    request_id: str | None = None,
    client_request_id: str | None = None,
) -> bool:
    """End a running rollout, once: False when it had ended already (another replica, or a
    person, was first). A promotion marks the challenger active in the same transaction,
    retiring the champion; every replica then serves it. Audited."""
    with Session(engine) as session, session.begin():
        ended = session.execute(
            update(Rollout)
            .where(Rollout.id == rollout.id, Rollout.state == "running")
            .values(
                state=state,
                ended_at=utcnow(),
                ended_by=actor,
                reason=reason[:2000],
                last_stats=stats if stats is not None else rollout.last_stats,
            )
        )
        if not getattr(ended, "rowcount", 0):
            return False
        if state == "promoted":
            _mark_active(session, rollout.model_name, rollout.challenger_version)
        session.add(
            AuditEntry(
                actor=actor,
                action="rollout.promote" if state == "promoted" else "rollout.rollback",
                target=rollout.challenger,
                detail={"rollout": rollout.id, "champion": rollout.champion, "reason": reason},
                request_id=request_id,
                client_request_id=client_request_id,
            )
        )
    return True


def active_version(engine: Engine, model_name: str) -> str | None:
    """The version of ``model_name`` marked active (by an activation or a promotion)."""
    with Session(engine) as session:
        return champion_version(session, model_name)


def start_by_hand(
    engine: Engine,
    *,
    repo: ModelRepository,
    model_name: str,
    challenger_version: str,
    share: float,
    policy: RolloutPolicy,
    actor: str | None,
    serving: str | None = None,
    request_id: str | None = None,
    client_request_id: str | None = None,
) -> RolloutInfo:
    """A canary of ``model_name:challenger_version`` against the champion: the version
    marked active, else ``serving`` (the version a replica serves for the name, when none
    was ever activated). The challenger comes from the local store or the model repository
    (``ModelNotFound`` when neither has it) and is published, so every replica can import
    it. ``NoChampion`` without a champion, ``InvalidParameter`` when the challenger is the
    champion, ``RolloutConflict`` when a canary of the name runs."""
    champion = active_version(engine, model_name) or serving
    if champion is None:
        raise NoChampion(
            f"No version of {model_name} is active or served: activate one before a canary.",
            details={"model": model_name},
        )
    if challenger_version == champion:
        raise errors.InvalidParameter(
            f"{model_name}:{challenger_version} is the active version already.",
            details={"field": "version", "active": champion},
        )
    busy = [r for r in running(engine) if r.model_name == model_name]
    if busy:  # checked again under the lock by start(); this spares the publishing
        raise RolloutConflict(
            f"A canary of {busy[0].challenger} is running (rollout {busy[0].id}): promote or "
            "roll it back first.",
            details={"rollout": busy[0].id},
        )
    repo.publish(repo.ensure_local(f"{model_name}:{challenger_version}").tag)
    return start(
        engine,
        model_name=model_name,
        champion_version=champion,
        challenger_version=challenger_version,
        share=share,
        policy=policy,
        actor=actor,
        request_id=request_id,
        client_request_id=client_request_id,
    )


def end_by_hand(
    engine: Engine,
    rollout_id: int,
    *,
    state: Literal["promoted", "rolled_back"],
    actor: str | None,
    reason: str,
    request_id: str | None = None,
    client_request_id: str | None = None,
) -> RolloutInfo:
    """Promote or roll back a running canary (:func:`end`) and return it as it ended;
    ``RolloutNotFound``, or ``RolloutEnded`` when it had ended already."""
    found = get(engine, rollout_id)
    if found is None:
        raise RolloutNotFound(f"No rollout {rollout_id}.", details={"rollout": rollout_id})
    if found.state == "running" and end(
        engine,
        found,
        state=state,
        actor=actor,
        reason=reason,
        request_id=request_id,
        client_request_id=client_request_id,
    ):
        return get(engine, rollout_id) or found
    now = get(engine, rollout_id) or found
    raise RolloutEnded(
        f"Rollout {rollout_id} ({found.challenger}) already ended: {now.state}.",
        details={"rollout": rollout_id, "state": now.state},
    )


def save_stats(engine: Engine, rollout_id: int, stats: dict[str, Any]) -> None:
    with Session(engine) as session, session.begin():
        session.execute(
            update(Rollout)
            .where(Rollout.id == rollout_id, Rollout.state == "running")
            .values(last_stats=stats)
        )


# --- judging -----------------------------------------------------------------------------------
def version_stats(
    engine: Engine, rollout: RolloutInfo, *, errors_by_version: dict[str, int]
) -> dict[str, VersionStats]:
    """Each version's live figures since the rollout started (see the module's docstring)."""
    out = {}
    with Session(engine) as session:
        for version in (rollout.champion_version, rollout.challenger_version):
            since = (
                Prediction.model_name == rollout.model_name,
                Prediction.model_version == version,
                Prediction.created_at >= rollout.started_at,
                Prediction.cached.is_(False),
            )
            requests = session.scalar(select(func.count()).where(*since)) or 0
            sample = session.execute(
                select(Prediction.score, Prediction.latency_ms)
                .where(*since)
                .order_by(Prediction.created_at.desc())
                .limit(_SAMPLE)
            ).all()
            scores = [float(s) for s, _ in sample]
            latencies = sorted(float(t) for _, t in sample)
            feedback, agreed = _agreement(session, since)
            out[version] = VersionStats(
                version=version,
                requests=int(requests),
                mean_confidence=sum(scores) / len(scores) if scores else None,
                p95_latency_ms=latencies[
                    min(len(latencies) - 1, math.ceil(0.95 * len(latencies)) - 1)
                ]
                if latencies
                else None,
                errors=int(errors_by_version.get(version, 0)),
                feedback=feedback,
                agreement=agreed / feedback if feedback else None,
            )
    return out


def judge(champion: VersionStats, challenger: VersionStats, policy: RolloutPolicy) -> Verdict:
    """Roll back, promote or wait (see the module's docstring)."""
    if min(champion.requests, challenger.requests) < policy.min_requests:
        return Verdict(
            "wait",
            [
                f"{min(champion.requests, challenger.requests)} of {policy.min_requests} "
                "requests per version so far"
            ],
        )
    worse: list[str] = []
    if challenger.error_rate > champion.error_rate + policy.error_margin:
        worse.append(
            f"error rate {challenger.error_rate:.2%} vs {champion.error_rate:.2%} "
            f"(margin {policy.error_margin:.2%})"
        )
    if (
        challenger.mean_confidence is not None
        and champion.mean_confidence is not None
        and challenger.mean_confidence < champion.mean_confidence - policy.confidence_margin
    ):
        worse.append(
            f"mean confidence {challenger.mean_confidence:.3f} vs {champion.mean_confidence:.3f} "
            f"(margin {policy.confidence_margin:.3f})"
        )
    if (
        challenger.p95_latency_ms is not None
        and champion.p95_latency_ms is not None
        and challenger.p95_latency_ms > champion.p95_latency_ms * policy.latency_factor
    ):
        worse.append(
            f"p95 latency {challenger.p95_latency_ms:.1f} ms vs {champion.p95_latency_ms:.1f} ms "
            f"(factor {policy.latency_factor:g})"
        )
    if (
        min(champion.feedback, challenger.feedback) >= policy.min_feedback
        and challenger.agreement is not None
        and champion.agreement is not None
        and challenger.agreement < champion.agreement - policy.agreement_margin
    ):
        worse.append(
            f"agreement with feedback {challenger.agreement:.2%} vs {champion.agreement:.2%} "
            f"over {challenger.feedback}/{champion.feedback} labelled predictions "
            f"(margin {policy.agreement_margin:.2%})"
        )
    if worse:
        return Verdict("rollback", [f"the challenger is worse: {w}" for w in worse])
    if policy.promote_after and challenger.requests >= policy.promote_after:
        return Verdict(
            "promote",
            [
                f"{challenger.requests} challenger requests (promote_after "
                f"{policy.promote_after}) and not worse on any figure"
            ],
        )
    return Verdict("wait", ["not worse so far"])


# --- helpers -----------------------------------------------------------------------------------
def agreement_by_version(session: Session, *where: Any) -> dict[str, tuple[int, int]]:
    """Per ``name:version``, of the predictions matching ``where``: (how many a human (user
    or admin) labelled after they were made, how many of those the top-1 agreed with). The
    latest such label of the image decides; counted in the database, on both kinds."""
    rank = func.row_number().over(
        partition_by=Prediction.id, order_by=(Label.created_at.desc(), Label.id.desc())
    )
    inner = (
        select(
            Prediction.model_name.label("name"),
            Prediction.model_version.label("version"),
            case((Prediction.label == Label.label, 1), else_=0).label("agreed"),
            rank.label("rank"),
        )
        .join(Label, Label.image_sha256 == Prediction.image_sha256)
        .where(
            *where,
            Label.source.in_(HUMAN_SOURCES),
            Label.label.is_not(None),
            Label.created_at >= Prediction.created_at,
        )
        .subquery()
    )
    rows = session.execute(
        select(inner.c.name, inner.c.version, func.count(), func.sum(inner.c.agreed))
        .where(inner.c.rank == 1)
        .group_by(inner.c.name, inner.c.version)
    ).all()
    return {f"{name}:{version}": (int(n), int(agreed or 0)) for name, version, n, agreed in rows}


def _agreement(session: Session, since: tuple[Any, ...]) -> tuple[int, int]:
    """(predictions labelled by a human after they were made, how many of them agreed)."""
    found = agreement_by_version(session, *since).values()
    return sum(n for n, _ in found), sum(agreed for _, agreed in found)


def _mark_active(session: Session, name: str, version: str) -> None:
    found = False
    for row in session.scalars(select(Model).where(Model.name == name)):
        if row.version == version:
            row.status, found = "active", True
        elif row.status == "active":
            row.status = "retired"
    if not found:
        session.add(Model(name=name, version=version, metrics={}, status="active"))


def _lock(session: Session, model_name: str) -> None:
    """Serialise rollout starts of one model name: an advisory lock on PostgreSQL (SQLite
    serialises writers anyway)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
            {"key": f"imageiq.rollout:{model_name}"},
        )


def _info(row: Rollout) -> RolloutInfo:
    return RolloutInfo(
        id=row.id,
        model_name=row.model_name,
        champion_version=row.champion_version,
        challenger_version=row.challenger_version,
        share=row.share,
        state=row.state,
        policy=RolloutPolicy.model_validate(row.policy or {}),
        started_at=row.started_at,
        started_by=row.started_by,
        ended_at=row.ended_at,
        ended_by=row.ended_by,
        reason=row.reason,
        last_stats=dict(row.last_stats or {}),
        evaluation_id=row.evaluation_id,
    )
