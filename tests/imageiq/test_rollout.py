"""Canary rollouts in the database (both kinds): starting one per name, the live figures per
version, the verdict of the policy, ending once, and the closed-loop gauges' queries; and the
pool routing a share of the requests to a challenger (no server)."""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, select

from imageiq import catalog, errors, rollout
from imageiq.db.schema import AuditEntry, Evaluation, Image, Model, Prediction, utcnow
from imageiq.pool import Canary, ModelPool
from imageiq.registry import RegisteredModel
from imageiq.rollout import RolloutPolicy, VersionStats, judge
from imageiq.rollout_sync import labelled_per_class, retrain_runs
from imageiq.runner import InferenceThread
from imageiq.settings import Settings

NAME = "species"


def _image(engine: Engine, n: int) -> str:
    digest = hashlib.sha256(f"rollout image {n}".encode()).hexdigest()
    catalog.insert_ignore(
        engine,
        Image,
        [
            {
                "sha256": digest,
                "storage_key": digest,
                "content_type": "image/png",
                "bytes": 1,
                "width": 1,
                "height": 1,
            }
        ],
    )
    return digest


def _predict(
    engine: Engine,
    image: str,
    version: str,
    *,
    label: str,
    score: float,
    latency_ms: float = 10.0,
    at: datetime | None = None,
    cached: bool = False,
) -> None:
    catalog.insert_ignore(
        engine,
        Prediction,
        [
            {
                "id": uuid.uuid4(),
                "image_sha256": image,
                "model_name": NAME,
                "model_version": version,
                "label": label,
                "score": score,
                "top_k": [{"label": label, "score": score}],
                "attributes": {},
                "latency_ms": latency_ms,
                "cached": cached,
                "created_at": at or utcnow(),
            }
        ],
    )


def _start(engine: Engine, **policy: object) -> rollout.RolloutInfo:
    return rollout.start(
        engine,
        model_name=NAME,
        champion_version="v1",
        challenger_version="v2",
        share=0.25,
        policy=RolloutPolicy.model_validate(policy),
        actor="test",
    )


def test_one_canary_per_name_and_it_ends_once(engine: Engine) -> None:
    catalog.record_models(engine, [(NAME, "v1", {}), (NAME, "v2", {})])
    catalog.activate_model(
        engine, name=NAME, version="v1", metrics={}, actor="t", request_id=None, previous=None
    )
    started = _start(engine)
    assert [r.id for r in rollout.running(engine)] == [started.id]
    with pytest.raises(rollout.RolloutConflict) as conflict:
        _start(engine)
    assert conflict.value.status == 409 and conflict.value.details == {"rollout": started.id}
    for share in (0.0, 1.0, -1.0, 2.0):
        with pytest.raises(errors.InvalidParameter):
            rollout.start(
                engine,
                model_name="other",
                champion_version="a",
                challenger_version="b",
                share=share,
                policy=RolloutPolicy(),
                actor=None,
            )
    # the promotion marks the challenger active and retires the champion, in one go
    assert rollout.end(engine, started, state="promoted", actor="t", reason="better")
    assert not rollout.end(engine, started, state="rolled_back", actor="t", reason="late")
    assert rollout.running(engine) == []
    ended = rollout.get(engine, started.id)
    assert ended is not None and ended.state == "promoted" and ended.reason == "better"
    with engine.connect() as connection:
        statuses = dict(connection.execute(select(Model.version, Model.status)).all())
        actions = connection.execute(select(AuditEntry.action)).scalars().all()
    assert statuses == {"v1": "retired", "v2": "active"}
    assert {"rollout.start", "rollout.promote"} <= set(actions)
    assert "rollout.rollback" not in actions
    # a new canary may start once the last one ended
    assert _start(engine).id != started.id


def test_version_figures_count_only_the_canary_period(engine: Engine) -> None:
    before = utcnow() - timedelta(hours=1)
    old = _image(engine, 0)
    _predict(engine, old, "v1", label="cat", score=0.1, at=before)  # before the canary
    started = _start(engine)
    images = [_image(engine, n) for n in range(1, 11)]
    for i, image in enumerate(images):
        _predict(engine, image, "v1", label="cat", score=0.9, latency_ms=10 + i)
        _predict(engine, image, "v2", label="dog", score=0.5, latency_ms=20 + i)
    _predict(engine, images[0], "v2", label="dog", score=0.01, cached=True)  # a cache hit
    # human feedback after the predictions: cats, so v1 agreed and v2 did not
    for image in images[:6]:
        catalog.add_label(engine, image, label="cat", attributes={}, source="user", created_by="k")
    catalog.add_label(engine, images[6], label="cat", attributes={}, source="model", created_by="m")
    stats = rollout.version_stats(engine, started, errors_by_version={"v2": 3})
    v1, v2 = stats["v1"], stats["v2"]
    assert (v1.requests, v2.requests) == (10, 10)
    assert v1.mean_confidence == pytest.approx(0.9) and v2.mean_confidence == pytest.approx(0.5)
    assert v1.p95_latency_ms == 19.0 and v2.p95_latency_ms == 29.0
    assert (v1.feedback, v1.agreement) == (6, 1.0)
    assert (v2.feedback, v2.agreement) == (6, 0.0)
    assert (v1.errors, v2.errors) == (0, 3) and v2.error_rate == pytest.approx(3 / 13)


def _stats(version: str, **values: object) -> VersionStats:
    base: dict[str, object] = {
        "version": version,
        "requests": 100,
        "mean_confidence": 0.8,
        "p95_latency_ms": 50.0,
        "errors": 0,
        "feedback": 40,
        "agreement": 0.9,
    }
    base.update(values)
    return VersionStats(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("challenger", "action", "words"),
    [
        ({"requests": 49}, "wait", "49 of 50"),
        ({}, "wait", "not worse"),
        ({"mean_confidence": 0.69}, "rollback", "mean confidence"),
        ({"mean_confidence": 0.71}, "wait", "not worse"),
        ({"errors": 3}, "rollback", "error rate"),
        ({"errors": 1}, "wait", "not worse"),
        ({"p95_latency_ms": 101.0}, "rollback", "p95 latency"),
        ({"agreement": 0.84}, "rollback", "agreement"),
        ({"agreement": 0.84, "feedback": 19}, "wait", "not worse"),  # too little feedback
        ({"agreement": 0.86}, "wait", "not worse"),
    ],
)
def test_the_policy_rolls_back_a_worse_challenger_only(
    challenger: dict[str, object], action: str, words: str
) -> None:
    verdict = judge(_stats("v1"), _stats("v2", **challenger), RolloutPolicy())
    assert verdict.action == action
    assert any(words in reason for reason in verdict.reasons), verdict.reasons


def test_the_policy_promotes_after_enough_requests_when_asked() -> None:
    policy = RolloutPolicy(promote_after=100)
    assert judge(_stats("v1"), _stats("v2", requests=99), policy).action == "wait"
    assert judge(_stats("v1"), _stats("v2"), policy).action == "promote"
    assert judge(_stats("v1"), _stats("v2", errors=50), policy).action == "rollback"


def test_the_gauges_queries(engine: Engine) -> None:
    images = [_image(engine, n) for n in range(4)]
    catalog.add_label(engine, images[0], label="cat", attributes={}, source="user", created_by="a")
    catalog.add_label(engine, images[0], label="dog", attributes={}, source="admin", created_by="b")
    catalog.add_label(engine, images[0], label="cat", attributes={}, source="user", created_by="a")
    catalog.add_label(engine, images[1], label="cat", attributes={}, source="user", created_by="a")
    catalog.add_label(engine, images[2], label="fox", attributes={}, source="model", created_by="m")
    catalog.add_label(
        engine, images[3], label=None, attributes={"shiny": "yes"}, source="user", created_by="a"
    )
    assert labelled_per_class(engine) == {"dog": 1, "cat": 1}
    now = datetime.now(timezone.utc)
    catalog.insert_ignore(
        engine,
        Evaluation,
        [
            {
                "model_name": NAME,
                "outcome": outcome,
                "reasons": [],
                "report": {},
                "dataset": {},
                "started_at": now - timedelta(minutes=n),
                "finished_at": now - timedelta(minutes=n),
            }
            for n, outcome in enumerate(["failed", "promoted", "failed", "rejected"])
        ],
    )
    runs = retrain_runs(engine)
    assert {k: n for k, (n, _) in runs.items()} == {"failed": 2, "promoted": 1, "rejected": 1}
    last = runs["failed"][1]
    assert last is not None and abs((last - now).total_seconds()) < 1


@pytest.mark.slow
def test_the_pool_sends_the_canary_share_to_the_challenger_unless_a_version_is_pinned(
    digits_model: RegisteredModel, newer_model: RegisteredModel
) -> None:
    import asyncio

    thread = InferenceThread(threads=1)
    try:
        settings = Settings(models=[digits_model.tag], active_model=digits_model.tag)
        pool = ModelPool(settings, thread=thread)

        async def scenario() -> Counter[str]:
            assert await pool.serve_beside(newer_model.tag)
            assert pool.active is not None and pool.active.tag == digits_model.tag
            pool.canaries[digits_model.name] = Canary(1, newer_model.tag, 0.3)
            seen: Counter[str] = Counter()
            for _ in range(2000):
                seen[pool.resolve(None).tag] += 1
                seen["named:" + pool.resolve(digits_model.name).tag] += 1
            # a pinned version is exactly that version
            assert all(pool.resolve(digits_model.tag).tag == digits_model.tag for _ in range(200))
            del pool.canaries[digits_model.name]
            assert await pool.stop_serving(newer_model.tag)
            assert list(pool.models) == [digits_model.tag]
            return seen

        for served in pool.models.values():
            assert served.runner.wait(timeout=120) == "ready"
        seen = asyncio.run(scenario())
    finally:
        thread.close()
    share = seen[newer_model.tag] / 2000
    assert 0.25 < share < 0.35, seen
    assert 0.25 < seen[f"named:{newer_model.tag}"] / 2000 < 0.35, seen
