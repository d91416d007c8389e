"""The service on real PostgreSQL, Redis and S3 (moto), all on 127.0.0.1 and started here:
stored images, the prediction cache, feedback, the reader endpoints, deletion, stats and
model activation, checked through HTTP and then in the database, Redis and the bucket."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

from imageiq.db.engine import parse_url
from imageiq.db.schema import AuditEntry, Image, Label, Model, Prediction
from imageiq.registry import RegisteredModel
from tests.backends import Stack, wait_for
from tests.conftest import Server

pytestmark = pytest.mark.slow


def digit(digits_dir: Path, label: int, i: int = 0) -> bytes:
    return sorted((digits_dir / str(label)).iterdir())[i].read_bytes()


def classify(server: Server, data: bytes, **fields: str) -> dict:
    resp = server.post("/v1/classify", files={"image": ("d.png", data)}, data=fields)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_stored_image_is_in_the_bucket_and_postgres_once(
    served: Server, stack: Stack, digits_dir: Path
) -> None:
    data = digit(digits_dir, 4)
    first = classify(served, data, store="true")
    again = classify(served, data, store="true")  # a retried upload
    sha = first["image"]["sha256"]
    assert first["image"]["id"] == again["image"]["id"] == sha
    assert first["image"]["stored"] is True and again["image"]["stored"] is True
    assert f"images/{sha}" in stack.s3.object_keys()
    stored = stack.s3.client().get_object(Bucket=stack.s3.bucket, Key=f"images/{sha}")
    assert stored["Body"].read() == data and stored["ContentType"] == "image/png"
    assert stack.count(Image, Image.sha256 == sha) == 1
    wait_for(lambda: stack.count(Prediction, Prediction.image_sha256 == sha) == 2, what="rows")
    # Without store=true nothing is kept but the prediction.
    other = classify(served, digit(digits_dir, 5))
    assert "id" not in other["image"]
    assert stack.count(Image, Image.sha256 == other["image"]["sha256"]) == 0


def test_repeated_image_is_served_from_redis(
    served: Server, stack: Stack, digits_dir: Path
) -> None:
    data = digit(digits_dir, 6, 3)
    hits = lambda: _metric(served, 'imageiq_cache_requests_total{result="hit"}')  # noqa: E731
    before = hits()
    miss = classify(served, data, top_k="3")
    hit = classify(served, data, top_k="3")
    assert miss["cached"] is False and miss["batch_size"] >= 1
    assert hit["cached"] is True and hit["batch_size"] == 0
    assert hit["predictions"] == miss["predictions"] and hit["image"] == miss["image"]
    assert hits() == before + 1
    keys = redis.Redis.from_url(stack.redis.url).keys(f"imageiq:pred:{miss['image']['sha256']}*")
    assert len(keys) == 1
    # Other params are another entry; min_confidence filters the cached entry.
    assert classify(served, data, top_k="4")["cached"] is False
    filtered = classify(served, data, top_k="3", min_confidence="0.5")
    assert filtered["cached"] is True and len(filtered["predictions"]) == 1


def test_feedback_then_filters_and_paging(served: Server, stack: Stack, digits_dir: Path) -> None:
    ids = [classify(served, digit(digits_dir, 7, i), store="true")["image"]["id"] for i in range(3)]
    resp = served.post(f"/v1/images/{ids[0]}/labels", json={"label": "1"})
    assert resp.status_code == 201, resp.text
    assert resp.json()["label"] == "1" and resp.json()["source"] == "user"
    resp = served.post(f"/v1/images/{ids[1]}/labels", json={"label": "seven", "new_label": True})
    assert resp.status_code == 201, resp.text
    assert stack.count(Label, Label.image_sha256 == ids[0]) == 1

    def listed(**query: str) -> list[str]:
        resp = served.get("/v1/images", params=query)
        assert resp.status_code == 200, resp.text
        return [item["id"] for item in resp.json()["items"]]

    wait_for(lambda: set(ids) <= set(listed(predicted_label="7", limit="100")), what="listing")
    assert listed(label="1") == [ids[0]]
    assert listed(label="seven") == [ids[1]]
    version = served.model.version
    assert set(ids) <= set(listed(model=f"{served.model.name}:{version}", limit="100"))
    assert set(ids) <= set(listed(model_version=version, min_confidence="0.5", limit="100"))
    assert listed(predicted_label="7", max_confidence="0.0") == []
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    assert listed(created_after=future) == []
    assert set(ids) <= set(listed(created_before=future, limit="100"))
    page = served.get("/v1/images", params={"limit": "2"}).json()
    assert len(page["items"]) == 2 and page["next_offset"] == 2 and page["total"] >= 3
    detail = served.get(f"/v1/images/{ids[0]}").json()
    assert detail["labels"][0]["label"] == "1" and detail["predictions"][0]["label"] == "7"
    content = served.get(f"/v1/images/{ids[0]}/content")
    assert content.status_code == 200 and content.content == digit(digits_dir, 7, 0)
    # Feedback is checked: labels and attribute values the models know, existing images.
    assert served.post(f"/v1/images/{ids[0]}/labels", json={"label": "71"}).status_code == 422
    bad = served.post(f"/v1/images/{ids[0]}/labels", json={"attributes": {"shiny": "maybe"}})
    assert bad.status_code == 422
    good = served.post(f"/v1/images/{ids[0]}/labels", json={"attributes": {"shiny": "yes"}})
    assert good.status_code == 201, good.text
    unknown = served.post(f"/v1/images/{'0' * 64}/labels", json={"label": "1"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "image_not_found"


def test_delete_forgets_object_rows_and_cache(
    served: Server, stack: Stack, digits_dir: Path
) -> None:
    data = digit(digits_dir, 2, 5)
    sha = classify(served, data, store="true")["image"]["id"]
    assert classify(served, data)["cached"] is True
    assert served.post(f"/v1/images/{sha}/labels", json={"label": "2"}).status_code == 201
    wait_for(lambda: stack.count(Prediction, Prediction.image_sha256 == sha) == 2, what="rows")
    resp = served.delete(f"/v1/admin/images/{sha}")
    assert resp.status_code == 200, resp.text
    deleted = resp.json()["deleted"]
    assert deleted["object"] == 1 and deleted["images"] == 1 and deleted["labels"] == 1
    assert deleted["predictions"] == 2 and deleted["cache_entries"] >= 1
    assert f"images/{sha}" not in stack.s3.object_keys()
    for table in (Image, Label, Prediction):
        column = Image.sha256 if table is Image else table.image_sha256  # type: ignore[attr-defined]
        assert stack.count(table, column == sha) == 0
    assert redis.Redis.from_url(stack.redis.url).keys(f"imageiq:*{sha}*") == []
    assert served.get(f"/v1/images/{sha}").status_code == 404
    assert served.delete(f"/v1/admin/images/{sha}").status_code == 404
    assert stack.count(AuditEntry, AuditEntry.action == "image.delete") >= 1
    assert classify(served, data)["cached"] is False  # classified afresh


def test_stats(served: Server, stack: Stack, digits_dir: Path) -> None:
    data = digit(digits_dir, 9, 2)
    classify(served, data)
    classify(served, data)
    wait_for(lambda: stack.count(Prediction, Prediction.label == "9") >= 2, what="rows")
    # Every record accepted so far written (earlier tests' too: the writer batches them for
    # a flush interval), so the table holds still while the stats are compared with it.
    wait_for(
        lambda: served.get("/v1/models").json()["dependencies"]["records_pending"] == 0,
        what="no record pending",
    )
    stats = served.get("/v1/stats").json()
    predictions = stats["predictions"]
    assert predictions["total"] == stack.count(Prediction)
    assert predictions["per_label"]["9"] >= 2
    assert predictions["per_model"][served.model.tag] >= 2
    today = datetime.now(timezone.utc).date().isoformat()
    assert predictions["per_day"][today] == predictions["total"]
    assert predictions["cached"] == stack.count(Prediction, Prediction.cached.is_(True))
    assert 0 < predictions["cache_hit_ratio"] < 1
    window = served.get("/v1/stats", params={"since": "2001-01-01", "until": "2001-01-02"})
    assert window.json()["predictions"]["total"] == 0


def test_activate_switches_version_without_restart_and_is_audited(
    served: Server, stack: Stack, newer_model: RegisteredModel, digits_model: RegisteredModel
) -> None:
    name = digits_model.name
    resp = served.post(f"/v1/admin/models/{name}/activate", json={"version": newer_model.version})
    assert resp.status_code == 200, resp.text
    assert resp.json()["previous"] == digits_model.tag
    models = served.get("/v1/models").json()
    assert models["active"] == newer_model.tag
    assert newer_model.tag in [m["name"] + ":" + m["version"] for m in models["models"]]
    with stack.session() as session:
        statuses = dict(
            session.execute(select(Model.version, Model.status).where(Model.name == name)).all()
        )
        audit = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "model.activate")
        ).all()
    assert statuses[newer_model.version] == "active" and statuses[digits_model.version] == "retired"
    assert audit[-1].target == newer_model.tag and audit[-1].actor
    missing = served.post(f"/v1/admin/models/{name}/activate", json={"version": "nosuchversion"})
    assert missing.status_code == 404
    back = served.post(f"/v1/admin/models/{name}/activate", json={"version": digits_model.version})
    assert back.status_code == 200, back.text
    assert served.get("/v1/models").json()["active"] == digits_model.tag


def test_models_reports_readiness_and_the_dependencies(served: Server) -> None:
    assert served.get("/readyz", auth=False).status_code == 200
    body = served.get("/v1/models").json()
    assert body["ready"] is True
    deps = body["dependencies"]
    assert deps["database"] == deps["database"] | {"backend": "postgresql", "state": "up"}
    assert deps["redis"]["state"] == "up" and deps["storage"]["backend"] == "s3"
    with Session(create_engine(parse_url(served.env["IMAGEIQ_DATABASE_URL"]))) as session:
        assert session.execute(text("select 1")).scalar() == 1


def _metric(server: Server, name: str) -> float:
    for line in server.get("/metrics", auth=False).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0
