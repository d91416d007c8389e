"""GET /v1/review through the running service on real PostgreSQL, Redis and S3 (the session's
``served`` server): the queue holds images stored with store=true, a label key reads it, a
classify key may not, feedback through POST /v1/images/{id}/labels takes an image out, and bad
parameters are refused in the error envelope."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from imageiq.db.engine import make_engine
from imageiq.db.schema import Prediction
from imageiq.keys import create_key
from tests.backends import Stack, wait_for
from tests.conftest import Server

pytestmark = pytest.mark.slow


def new_key(stack: Stack, scopes: list[str]) -> dict[str, str]:
    engine = make_engine(stack.postgres.url)
    try:
        key, _ = create_key(engine, name="review", scopes=scopes, pepper=b"")
    finally:
        engine.dispose()
    return {"Authorization": f"Bearer {key}"}


def whole_queue(served: Server, headers: dict[str, str], **query: str) -> list[dict[str, Any]]:
    """Every item of the queue, page after page (two per page, to cross pages)."""
    items: list[dict[str, Any]] = []
    params = {"limit": "2", **query}
    while True:
        resp = served.get("/v1/review", params=params, headers=headers)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        items += page["items"]
        assert page["total"] >= len(items)
        if page["next_cursor"] is None:
            return items
        params = {**params, "cursor": page["next_cursor"]}


def test_review_queue_lists_stored_images_until_labelled(
    served: Server, stack: Stack, digits_dir: Path
) -> None:
    labeller = new_key(stack, ["label"])
    files = sorted((digits_dir / "1").iterdir())
    ids = []
    for path in files[30:33]:
        resp = served.post(
            "/v1/classify", files={"image": ("d.png", path.read_bytes())}, data={"store": "true"}
        )
        assert resp.status_code == 200, resp.text
        ids.append(resp.json()["image"]["id"])
    unstored = served.post(
        "/v1/classify", files={"image": ("d.png", files[34].read_bytes())}
    ).json()["image"]["sha256"]

    def queued(**query: str) -> list[dict[str, Any]]:
        return whole_queue(served, labeller, **query)

    wait_for(lambda: set(ids) <= {i["id"] for i in queued()}, what="the images queued")
    wait_for(
        lambda: stack.count(Prediction, Prediction.image_sha256 == unstored) == 1,
        what="the unstored image's prediction written",
    )
    items = queued()
    assert unstored not in {i["id"] for i in items}
    values = [i["value"] for i in items]
    assert values == sorted(values)  # least confident first, across pages
    mine = [i for i in items if i["id"] in ids]
    for item in mine:
        prediction = item["prediction"]
        assert prediction["model"]["name"] == served.model.name
        assert item["value"] == prediction["score"] == prediction["predictions"][0]["score"]
        assert item["challenger"] is None
    margins = queued(strategy="margin")
    assert set(ids) <= {i["id"] for i in margins}
    assert [i["value"] for i in margins] == sorted(i["value"] for i in margins)
    resp = served.get("/v1/review", params={"strategy": "disagreement"}, headers=labeller)
    assert resp.status_code == 200 and resp.json()["strategy"] == "disagreement"
    first = served.get("/v1/review", params={"limit": "1"}, headers=labeller).json()
    assert first["model"] == served.model.name and first["limit"] == 1
    assert first["total"] == len(items)
    # Feedback takes an image out; the others stay.
    resp = served.post(f"/v1/images/{ids[0]}/labels", json={"label": "1"}, headers=labeller)
    assert resp.status_code == 201, resp.text
    after = {i["id"] for i in queued()}
    assert ids[0] not in after and set(ids[1:]) <= after
    assert served.get("/v1/review", headers=labeller).json()["total"] == len(items) - 1
    # Filters: the predicted label, the storage time.
    predicted = mine[1]["prediction"]["label"]
    assert ids[1] in {i["id"] for i in queued(label=predicted)}
    assert all(i["prediction"]["label"] == predicted for i in queued(label=predicted))
    assert queued(created_after="2999-01-01") == []
    assert queued(model="species") == []


def test_review_needs_the_label_scope(served: Server, stack: Stack) -> None:
    resp = served.get("/v1/review", headers=new_key(stack, ["classify"]))
    assert resp.status_code == 403, resp.text
    assert resp.json()["error"]["code"] == "insufficient_scope"
    assert served.get("/v1/review", auth=False).status_code == 401
    assert served.get("/v1/review").status_code == 200  # an admin key


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"strategy": "random"}, 422, "invalid_parameter"),
        ({"limit": "0"}, 422, "invalid_parameter"),
        ({"limit": "101"}, 422, "invalid_parameter"),
        ({"model": "Not A Name"}, 422, "invalid_parameter"),
        ({"created_after": "yesterday"}, 422, "invalid_parameter"),
        ({"label": "a\x00b"}, 422, "invalid_parameter"),
        ({"cursor": "not-a-cursor"}, 400, "invalid_cursor"),
        ({"cursor": "A" * 2000}, 400, "invalid_cursor"),
    ],
)
def test_bad_parameters_are_refused(
    served: Server, params: dict[str, str], status: int, code: str
) -> None:
    resp = served.get("/v1/review", params=params)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code == resp.headers["X-Error-Code"] and error["request_id"]


def test_a_cursor_belongs_to_its_query(served: Server, stack: Stack, digits_dir: Path) -> None:
    for path in sorted((digits_dir / "1").iterdir())[35:37]:
        files = {"image": ("d.png", path.read_bytes())}
        assert served.post("/v1/classify", files=files, data={"store": "true"}).status_code == 200
    wait_for(
        lambda: served.get("/v1/review", params={"limit": "1"}).json()["next_cursor"] is not None,
        what="two images queued",
    )
    cursor = served.get("/v1/review", params={"limit": "1"}).json()["next_cursor"]
    assert served.get("/v1/review", params={"limit": "1", "cursor": cursor}).status_code == 200
    resp = served.get("/v1/review", params={"strategy": "margin", "cursor": cursor})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_cursor"
    assert "another query" in resp.json()["error"]["message"]
