"""Starting and ending a canary by hand (imageiq/rollout.py: start_by_hand, end_by_hand), the
code ``imageiq rollout`` and the admin API share, on both databases: the champion, the
challenger's checks and publishing, one canary per name, ending once, the audit entries."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from imageiq import catalog, errors, rollout
from imageiq.db.schema import AuditEntry
from imageiq.model_repo import ModelRepository
from imageiq.registry import RegisteredModel
from imageiq.rollout import RolloutPolicy
from imageiq.settings import Settings
from tests.imageiq.test_model_versions import tiny_model

NAME = "by-hand"


@pytest.fixture(scope="module")
def champion() -> RegisteredModel:
    return tiny_model(NAME)


@pytest.fixture(scope="module")
def challenger() -> RegisteredModel:
    return tiny_model(NAME)


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    return ModelRepository(Settings(data_dir=tmp_path / "data"))


def start(
    engine: Engine, repo: ModelRepository, version: str, *, serving: str | None = None
) -> rollout.RolloutInfo:
    return rollout.start_by_hand(
        engine,
        repo=repo,
        model_name=NAME,
        challenger_version=version,
        share=0.2,
        policy=RolloutPolicy(promote_after=100),
        actor="key1",
        serving=serving,
        request_id="req-1",
    )


def test_start_checks_then_publishes_and_audits(
    engine: Engine, repo: ModelRepository, champion: RegisteredModel, challenger: RegisteredModel
) -> None:
    with pytest.raises(rollout.NoChampion) as none:
        start(engine, repo, challenger.version)
    assert (none.value.status, none.value.code) == (409, "no_active_version")
    # Never activated: the version served for the name is the champion.
    with pytest.raises(errors.InvalidParameter) as same:
        start(engine, repo, champion.version, serving=champion.version)
    assert same.value.status == 422 and same.value.details["field"] == "version"
    with pytest.raises(errors.ModelNotFound):
        start(engine, repo, "nosuchversion", serving=champion.version)
    assert rollout.running(engine) == []
    assert repo.published(NAME) == {}
    started = start(engine, repo, challenger.version, serving=champion.version)
    assert (started.champion_version, started.challenger_version) == (
        champion.version,
        challenger.version,
    )
    assert started.state == "running" and started.share == 0.2 and started.started_by == "key1"
    assert started.policy.promote_after == 100
    assert set(repo.published(NAME)) == {challenger.version}  # every replica can import it
    with pytest.raises(rollout.RolloutConflict) as conflict:
        start(engine, repo, challenger.version, serving=champion.version)
    assert conflict.value.details == {"rollout": started.id}
    with engine.connect() as connection:
        entry = connection.execute(
            select(AuditEntry).where(AuditEntry.action == "rollout.start")
        ).one()
    assert (entry.actor, entry.target, entry.request_id) == ("key1", challenger.tag, "req-1")


def test_the_activated_version_is_the_champion(
    engine: Engine, repo: ModelRepository, champion: RegisteredModel, challenger: RegisteredModel
) -> None:
    catalog.activate_model(
        engine,
        name=NAME,
        version=challenger.version,
        metrics={},
        actor="t",
        request_id=None,
        previous=None,
    )
    assert rollout.active_version(engine, NAME) == challenger.version
    with pytest.raises(errors.InvalidParameter):  # whatever a replica serves
        start(engine, repo, challenger.version, serving=champion.version)
    started = start(engine, repo, champion.version)
    assert started.champion_version == challenger.version


def test_end_once_by_id(
    engine: Engine, repo: ModelRepository, champion: RegisteredModel, challenger: RegisteredModel
) -> None:
    with pytest.raises(rollout.RolloutNotFound) as missing:
        rollout.end_by_hand(engine, 12345, state="promoted", actor="k", reason="r")
    assert (missing.value.status, missing.value.code) == (404, "rollout_not_found")
    first = start(engine, repo, challenger.version, serving=champion.version)
    ended = rollout.end_by_hand(
        engine, first.id, state="rolled_back", actor="key2", reason="worse", request_id="req-2"
    )
    assert (ended.state, ended.ended_by, ended.reason) == ("rolled_back", "key2", "worse")
    assert ended.ended_at is not None
    for state in ("promoted", "rolled_back"):
        with pytest.raises(rollout.RolloutEnded) as late:
            rollout.end_by_hand(engine, first.id, state=state, actor="k", reason="late")
        assert late.value.status == 409 and late.value.details["state"] == "rolled_back"
    assert rollout.active_version(engine, NAME) is None  # a rollback activates nothing
    second = start(engine, repo, challenger.version, serving=champion.version)
    promoted = rollout.end_by_hand(engine, second.id, state="promoted", actor="key2", reason="ok")
    assert promoted.state == "promoted"
    assert rollout.active_version(engine, NAME) == challenger.version
    with engine.connect() as connection:
        entries = connection.execute(
            select(AuditEntry.action, AuditEntry.actor, AuditEntry.request_id)
            .where(AuditEntry.action.like("rollout.%"))
            .order_by(AuditEntry.id)
        ).all()
    assert [tuple(e) for e in entries] == [
        ("rollout.start", "key1", "req-1"),
        ("rollout.rollback", "key2", "req-2"),
        ("rollout.start", "key1", "req-1"),
        ("rollout.promote", "key2", None),
    ]
