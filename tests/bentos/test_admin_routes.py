"""The web app's new endpoints through the running service on real PostgreSQL, Redis and S3
(the session's ``served`` server: the digits model, a newer version of it in the store, and
the species model): whoami, a model's versions and a version's evaluation, the retrain runs,
canary rollouts started, promoted and rolled back while the service keeps serving, the
images' source and attribute filters, and the stats' histogram and feedback agreement."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine, select

from imageiq.db.engine import make_engine
from imageiq.db.schema import AuditEntry, Prediction, Rollout
from imageiq.keys import create_key
from imageiq.registry import RegisteredModel
from tests.backends import Stack, wait_for
from tests.conftest import Server
from training.retrain import record

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(stack: Stack) -> Iterator[Engine]:
    engine = make_engine(stack.postgres.url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def keys(engine: Engine) -> dict[str, dict[str, str]]:
    """An Authorization header per scope."""
    headers = {}
    for scope in ("classify", "label"):
        key, _ = create_key(engine, name=f"admin-routes {scope}", scopes=[scope], pepper=b"")
        headers[scope] = {"Authorization": f"Bearer {key}"}
    return headers


def key_id(key: str) -> str:
    return key.split("_")[1]


def digit(digits_dir: Path, label: int, i: int) -> bytes:
    return sorted((digits_dir / str(label)).iterdir())[i].read_bytes()


def classify(served: Server, data: bytes, **fields: str) -> dict[str, Any]:
    resp = served.post("/v1/classify", files={"image": ("d.png", data)}, data=fields)
    assert resp.status_code == 200, resp.text
    return resp.json()


def error_code(resp: Any, status: int) -> str:
    assert resp.status_code == status, resp.text
    code: str = resp.json()["error"]["code"]
    assert resp.headers["X-Error-Code"] == code
    return code


def records_written(served: Server) -> None:
    wait_for(
        lambda: served.get("/v1/models").json()["dependencies"]["records_pending"] == 0,
        what="no record pending",
    )


# --- whoami ------------------------------------------------------------------------------------
def test_whoami_lists_the_effective_scopes(served: Server, keys: dict[str, dict[str, str]]) -> None:
    resp = served.get("/v1/auth/whoami")
    assert resp.status_code == 200, resp.text
    me = resp.json()
    ident = key_id(served.key)
    assert me == {
        "auth_enabled": True,
        "key": {"id": ident, "name": "tests", "prefix": f"iiq_{ident}_"},
        "scopes": ["classify", "label", "admin"],  # admin implies the other two
    }
    assert served.key.startswith(me["key"]["prefix"])
    for scope, headers in keys.items():
        found = served.get("/v1/auth/whoami", headers=headers).json()
        assert found["scopes"] == [scope] and found["key"]["name"] == f"admin-routes {scope}"
    assert error_code(served.get("/v1/auth/whoami", auth=False), 401) == "unauthorized"
    bad = {"Authorization": "Bearer iiq_0123456789abcdef_" + "0" * 48}
    assert error_code(served.get("/v1/auth/whoami", headers=bad), 401) == "unauthorized"


# --- model versions ------------------------------------------------------------------------------
def test_versions_of_a_model_name(
    served: Server,
    keys: dict[str, dict[str, str]],
    digits_model: RegisteredModel,
    newer_model: RegisteredModel,
    species_model: RegisteredModel,
) -> None:
    resp = served.get(f"/v1/models/{digits_model.name}/versions", headers=keys["classify"])
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["name"] == digits_model.name and body["active"] == digits_model.version
    listed = {v["version"]: v for v in body["versions"]}
    assert {digits_model.version, newer_model.version} <= set(listed)
    times = [v["created_at"] for v in body["versions"]]
    assert times == sorted(times, reverse=True)  # newest first
    old, new = listed[digits_model.version], listed[newer_model.version]
    assert old["active"] and old["served"] and old["in_store"]
    assert not new["active"] and not new["served"]
    assert (old["architecture"], new["architecture"]) == ("resnet18", "baseline_cnn")
    assert old["labels_count"] == 10 and old["metrics"]["val_top1"] > 0.5
    assert old["published"] in (True, False)  # the repository (S3) was listed
    species = served.get(f"/v1/models/{species_model.name}/versions").json()
    assert species["active"] == species_model.version
    assert species_model.version in [v["version"] for v in species["versions"]]


def test_a_version_with_its_evaluation(
    served: Server,
    keys: dict[str, dict[str, str]],
    digits_model: RegisteredModel,
    species_model: RegisteredModel,
) -> None:
    path = f"/v1/models/{digits_model.name}/versions/{digits_model.version}"
    resp = served.get(path, headers=keys["classify"])
    assert resp.status_code == 200, resp.text
    detail = resp.json()
    card = digits_model.card
    assert detail["version"] == digits_model.version and detail["active"] is True
    assert detail["labels"] == card.labels and detail["heads"] == {}
    assert detail["training_config"]["arch"] == "resnet18"
    evaluation = detail["evaluation"]
    held_out = card.training_config["n_val"]
    assert evaluation["labels"] == card.labels
    assert sum(map(sum, evaluation["confusion_matrix"])) == held_out
    assert [c["support"] for c in evaluation["per_class"]] == [
        sum(row) for row in evaluation["confusion_matrix"]
    ]
    reliability = evaluation["reliability"]
    assert len(reliability["bins"]) == 10 and 0 <= reliability["ece"] <= 1
    assert sum(b["count"] for b in reliability["bins"]) == held_out
    # Registered without one (not trained by `imageiq train`): null, the rest answers.
    species = served.get(f"/v1/models/{species_model.name}/versions/{species_model.version}")
    assert species.status_code == 200, species.text
    assert species.json()["evaluation"] is None
    assert species.json()["heads"] == {"shiny": ["no", "yes"], "shadow": ["no", "yes"]}


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/models/no-such-model/versions", 404, "model_not_found"),
        ("/v1/models/no-such-model/versions/abc", 404, "model_not_found"),
        ("/v1/models/{name}/versions/nosuchversion", 404, "model_not_found"),
        ("/v1/models/Bad%20Name/versions", 422, "invalid_parameter"),
        ("/v1/models/{name}/versions/Bad%20Version", 422, "invalid_parameter"),
        ("/v1/models/{name}/versions/" + "a" * 80, 422, "invalid_parameter"),
    ],
)
def test_unknown_or_bad_versions(
    served: Server, digits_model: RegisteredModel, path: str, status: int, code: str
) -> None:
    resp = served.get(path.format(name=digits_model.name))
    assert error_code(resp, status) == code


def test_versions_need_the_classify_scope(
    served: Server, keys: dict[str, dict[str, str]], digits_model: RegisteredModel
) -> None:
    resp = served.get(f"/v1/models/{digits_model.name}/versions", headers=keys["label"])
    assert error_code(resp, 403) == "insufficient_scope"
    resp = served.get(f"/v1/models/{digits_model.name}/versions", auth=False)
    assert error_code(resp, 401) == "unauthorized"


# --- evaluations ---------------------------------------------------------------------------------
def test_evaluations_newest_first_in_keyset_pages(
    served: Server, engine: Engine, keys: dict[str, dict[str, str]]
) -> None:
    name = "evaluated"
    started = datetime.now(timezone.utc) - timedelta(minutes=5)
    decision = SimpleNamespace(
        figures={"metric": "macro_f1", "champion": 0.81, "challenger": 0.86},
        reasons=["macro_f1 0.86 vs 0.81: better by more than the margin"],
    )
    report = {"comparison": {"sets": {"held_out": {"images": 40}}}, "decision": {"promote": True}}
    ids = [
        record(
            engine,
            name=name,
            champion=f"{name}:v{i}",
            challenger=f"{name}:v{i + 1}",
            outcome=outcome,
            started=started,
            actor="cli:tests",
            dataset={"images": 200},
            golden=None,
            decision=decision if outcome != "failed" else None,
            report=report if outcome != "failed" else None,
            error="training diverged" if outcome == "failed" else None,
        )
        for i, outcome in enumerate(("promoted", "rejected", "failed"))
    ]
    resp = served.get("/v1/admin/evaluations", params={"model": name, "limit": "2"})
    assert resp.status_code == 200, resp.text
    page = resp.json()
    assert [e["id"] for e in page["items"]] == ids[::-1][:2]
    assert page["limit"] == 2 and page["next_before"] == ids[1]
    failed, rejected = page["items"]
    assert failed["outcome"] == "failed" and failed["error"] == "training diverged"
    assert failed["scores"] == {"champion": None, "challenger": None} and failed["report"] == {}
    assert rejected["champion_version"] == "v1" and rejected["challenger_version"] == "v2"
    assert rejected["primary_metric"] == "macro_f1"
    assert rejected["scores"] == {"champion": 0.81, "challenger": 0.86}
    assert rejected["reasons"] == decision.reasons and rejected["report"] == report
    assert rejected["actor"] == "cli:tests" and rejected["dataset"] == {"images": 200}
    assert rejected["started_at"] <= rejected["finished_at"]
    rest = served.get(
        "/v1/admin/evaluations", params={"model": name, "before": str(page["next_before"])}
    ).json()
    assert [e["id"] for e in rest["items"]] == [ids[0]] and rest["next_before"] is None
    everything = served.get("/v1/admin/evaluations", params={"limit": "100"}).json()["items"]
    assert set(ids) <= {e["id"] for e in everything}
    assert served.get("/v1/admin/evaluations", params={"model": "nothing"}).json()["items"] == []
    resp = served.get("/v1/admin/evaluations", headers=keys["label"])
    assert error_code(resp, 403) == "insufficient_scope"
    for params in ({"limit": "0"}, {"limit": "101"}, {"model": "Bad Name"}, {"before": "x"}):
        assert error_code(served.get("/v1/admin/evaluations", params=params), 422) == (
            "invalid_parameter"
        )


# --- stored images: the new filters --------------------------------------------------------------
def test_images_by_label_source_and_attribute(
    served: Server, keys: dict[str, dict[str, str]], digits_dir: Path
) -> None:
    a, b, c = (
        classify(served, digit(digits_dir, 3, 120 + i), store="true")["image"]["id"]
        for i in range(3)
    )
    labeller = keys["label"]

    def label(image: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        resp = served.post(f"/v1/images/{image}/labels", json=body, headers=headers)
        assert resp.status_code == 201, resp.text

    label(a, {"label": "3", "attributes": {"shiny": "yes"}}, labeller)
    label(b, {"label": "3", "attributes": {"shiny": "yes"}}, labeller)
    label(b, {"attributes": {"shiny": "no"}, "source": "admin"})  # an admin's correction
    label(c, {"label": "8", "source": "model"})

    def found(**params: str) -> set[str]:
        resp = served.get("/v1/images", params={"limit": "100", **params}, headers=labeller)
        assert resp.status_code == 200, resp.text
        return {i["id"] for i in resp.json()["items"]} & {a, b, c}

    assert found(source="user") == {a, b}
    assert found(source="admin") == {b}
    assert found(source="model") == {c}
    assert found(source="model", label="8") == {c}
    assert found(source="user", label="8") == set()
    assert found(attribute="shiny:yes") == {a}  # b's effective value is the admin's no
    assert found(attribute="shiny:no") == {b}
    assert found(attribute="shiny:no", source="user") == {b}
    assert found(attribute="shadow:yes") == set()
    for params in (
        {"source": "robot"},
        {"source": "USER"},
        {"attribute": "shiny"},
        {"attribute": ":yes"},
        {"attribute": "shiny:"},
        {"attribute": 'sh"iny:yes'},
        {"attribute": "sh\\iny:yes"},
        {"attribute": "shiny:y\x01es"},
        {"attribute": "a" * 65 + ":yes"},
        {"attribute": "shiny:" + "y" * 65},
    ):
        resp = served.get("/v1/images", params=params, headers=labeller)
        assert error_code(resp, 422) == "invalid_parameter", params
    details = served.get("/v1/images", params={"attribute": "shiny"}).json()["error"]["details"]
    assert details == {"field": "attribute", "expected": "name:value"}


# --- stats: confidence histogram and feedback agreement ------------------------------------------
def test_stats_histogram_and_feedback_per_model(served: Server, digits_dir: Path) -> None:
    answered = classify(served, digit(digits_dir, 8, 130), store="true")
    tag = f"{answered['model']['name']}:{answered['model']['version']}"
    top1 = answered["predictions"][0]["label"]
    records_written(served)
    resp = served.post(f"/v1/images/{answered['image']['id']}/labels", json={"label": top1})
    assert resp.status_code == 201, resp.text
    stats = served.get("/v1/stats").json()
    predictions = stats["predictions"]
    histogram = predictions["confidence_histogram"]
    assert [(b["lower"], b["upper"]) for b in histogram] == [
        (i / 10, (i + 1) / 10) for i in range(10)
    ]
    assert sum(b["count"] for b in histogram) == predictions["total"]
    score = answered["predictions"][0]["score"]
    assert histogram[min(9, int(score * 10))]["count"] >= 1
    feedback = stats["feedback"]["per_model"]
    assert set(feedback) == set(predictions["per_model"])
    mine = feedback[tag]
    assert 1 <= mine["agreed"] <= mine["labelled"]
    assert mine["agreement"] == pytest.approx(mine["agreed"] / mine["labelled"], abs=1e-4)
    for figures in feedback.values():
        if figures["labelled"]:
            assert 0 <= figures["agreement"] <= 1
        else:
            assert figures["agreement"] is None
    empty = served.get("/v1/stats", params={"since": "2001-01-01", "until": "2001-01-02"}).json()
    assert sum(b["count"] for b in empty["predictions"]["confidence_histogram"]) == 0
    assert empty["feedback"] == {"per_model": {}}


# --- rollouts ------------------------------------------------------------------------------------
def _versions(served: Server, name: str) -> dict[str, dict[str, Any]]:
    body = served.get(f"/v1/models/{name}/versions").json()
    return {v["version"]: v for v in body["versions"]}


def _restore(served: Server, engine: Engine, name: str, version: str) -> None:
    """No canary left running, and ``version`` active again, for the tests that follow."""
    with engine.connect() as connection:
        left = connection.scalars(
            select(Rollout.id).where(Rollout.model_name == name, Rollout.state == "running")
        ).all()
    for rollout_id in left:
        served.post(f"/v1/admin/rollouts/{rollout_id}/rollback")
    resp = served.post(f"/v1/admin/models/{name}/activate", json={"version": version})
    assert resp.status_code == 200, resp.text


def test_rollouts_start_list_promote_and_rollback(
    served: Server,
    engine: Engine,
    keys: dict[str, dict[str, str]],
    digits_model: RegisteredModel,
    newer_model: RegisteredModel,
    digits_dir: Path,
) -> None:
    name, champion, challenger = digits_model.name, digits_model.version, newer_model.version
    admin = key_id(served.key)
    try:
        _rollouts_through_the_api(
            served, engine, keys, name, champion, challenger, admin, digits_dir
        )
    finally:
        _restore(served, engine, name, champion)
    assert served.get("/v1/models").json()["active"] == digits_model.tag


def _rollouts_through_the_api(
    served: Server,
    engine: Engine,
    keys: dict[str, dict[str, str]],
    name: str,
    champion: str,
    challenger: str,
    admin: str,
    digits_dir: Path,
) -> None:
    before = served.get("/v1/admin/rollouts", params={"model": name}).json()
    assert before["model"] == name and before["running"] is None
    # Refusals first: nothing starts.
    for body, status, code in (
        ({"model": name, "version": challenger, "share": 0}, 422, "invalid_parameter"),
        ({"model": name, "version": challenger, "share": 1.5}, 422, "invalid_parameter"),
        ({"model": name, "version": challenger, "extra": 1}, 422, "invalid_parameter"),
        ({"model": name, "version": champion}, 422, "invalid_parameter"),  # the active one
        ({"model": name, "version": "nosuchversion"}, 404, "model_not_found"),
        ({"model": "no-such-model", "version": "v1"}, 409, "no_active_version"),
    ):
        assert error_code(served.post("/v1/admin/rollouts", json=body), status) == code, body
    resp = served.post(
        "/v1/admin/rollouts", json={"model": name, "version": challenger}, headers=keys["label"]
    )
    assert error_code(resp, 403) == "insufficient_scope"
    assert served.get("/v1/admin/rollouts", params={"model": name}).json()["running"] is None

    # A canary: half the requests that name no version go to the challenger.
    resp = served.post(
        "/v1/admin/rollouts", json={"model": name, "version": challenger, "share": 0.5}
    )
    assert resp.status_code == 201, resp.text
    canary = resp.json()
    assert canary["state"] == "running" and canary["share"] == 0.5
    assert (canary["champion_version"], canary["challenger_version"]) == (champion, challenger)
    assert canary["started_by"] == admin and canary["ended_at"] is None
    assert canary["last_stats"] is None and canary["policy"]["promote_after"] == 0
    again = served.post("/v1/admin/rollouts", json={"model": name, "version": challenger})
    assert error_code(again, 409) == "rollout_conflict"
    assert again.json()["error"]["details"] == {"rollout": canary["id"]}
    listed = served.get("/v1/admin/rollouts", params={"model": name}).json()
    assert listed["running"]["id"] == canary["id"] == listed["items"][0]["id"]

    # The service picks it up within its rollout interval, and keeps serving.
    wait_for(lambda: _versions(served, name)[challenger]["served"], 60, "the challenger served")
    assert _versions(served, name)[challenger]["published"] is True  # any replica may import
    versions = {
        classify(served, digit(digits_dir, 5, 100 + i))["model"]["version"] for i in range(20)
    }
    assert versions == {champion, challenger}
    wait_for(
        lambda: (
            served.get("/v1/admin/rollouts", params={"model": name}).json()["running"]["last_stats"]
            is not None
        ),
        60,
        "the canary's figures",
    )
    figures = served.get("/v1/admin/rollouts", params={"model": name}).json()["running"]
    stats = figures["last_stats"]
    assert stats["verdict"] == "wait" and stats["champion"] and stats["challenger"]
    assert set(stats["challenger"]) == {
        "requests",
        "errors",
        "error_rate",
        "mean_confidence",
        "p95_latency_ms",
        "labelled",
        "agreement",
    }

    # Rolled back: ends once; the challenger is no longer served.
    rollback = f"/v1/admin/rollouts/{canary['id']}/rollback"
    resp = served.post(rollback, json={"reason": "looks worse"})
    assert resp.status_code == 200, resp.text
    ended = resp.json()
    assert (ended["state"], ended["ended_by"], ended["reason"]) == (
        "rolled_back",
        admin,
        "looks worse",
    )
    for verb in ("rollback", "promote"):
        resp = served.post(f"/v1/admin/rollouts/{canary['id']}/{verb}")
        assert error_code(resp, 409) == "rollout_ended"
        assert resp.json()["error"]["details"]["state"] == "rolled_back"
    wait_for(
        lambda: not _versions(served, name)[challenger]["served"], 60, "the challenger retired"
    )
    for path, status, code in (
        ("/v1/admin/rollouts/999999/promote", 404, "rollout_not_found"),
        ("/v1/admin/rollouts/0/promote", 422, "invalid_parameter"),
        ("/v1/admin/rollouts/abc/rollback", 422, "invalid_parameter"),
        (f"/v1/admin/rollouts/{2**63}/rollback", 422, "invalid_parameter"),
    ):
        assert error_code(served.post(path), status) == code, path
    resp = served.post(rollback, json={"reason": "\x00"})
    assert error_code(resp, 422) == "invalid_parameter"

    # Promoted: the challenger becomes the active version, served to every request.
    second = served.post(
        "/v1/admin/rollouts", json={"model": name, "version": challenger, "share": 0.2}
    ).json()
    resp = served.post(f"/v1/admin/rollouts/{second['id']}/promote")
    assert resp.status_code == 200, resp.text
    assert resp.json()["state"] == "promoted" and resp.json()["reason"] == "promoted by hand"
    wait_for(
        lambda: served.get("/v1/models").json()["active"] == f"{name}:{challenger}",
        60,
        "the promotion applied",
    )
    body = served.get(f"/v1/models/{name}/versions").json()
    assert body["active"] == challenger
    assert classify(served, digit(digits_dir, 5, 130))["model"]["version"] == challenger
    history = served.get("/v1/admin/rollouts", params={"model": name, "limit": "2"}).json()
    assert history["running"] is None
    assert [(r["id"], r["state"]) for r in history["items"]] == [
        (second["id"], "promoted"),
        (canary["id"], "rolled_back"),
    ]

    # Every change audited with the key as actor and the request's id.
    with engine.connect() as connection:
        entries = connection.execute(
            select(AuditEntry.action, AuditEntry.actor, AuditEntry.target, AuditEntry.request_id)
            .where(AuditEntry.action.like("rollout.%"), AuditEntry.actor == admin)
            .order_by(AuditEntry.id)
        ).all()
    assert [(e.action, e.target) for e in entries][-4:] == [
        ("rollout.start", f"{name}:{challenger}"),
        ("rollout.rollback", f"{name}:{challenger}"),
        ("rollout.start", f"{name}:{challenger}"),
        ("rollout.promote", f"{name}:{challenger}"),
    ]
    assert all(e.request_id for e in entries)
    records_written(served)
    with engine.connect() as connection:
        by_challenger = connection.scalar(
            select(Prediction.id).where(Prediction.model_version == challenger).limit(1)
        )
    assert by_challenger is not None
