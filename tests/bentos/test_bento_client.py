"""A BentoML user's standard client, ``bentoml.SyncHTTPClient``, against the running
service: its endpoints are BentoML API routes backed by /v1's core and guard."""

from __future__ import annotations

from pathlib import Path

import bentoml
import pytest
from bentoml.exceptions import BentoMLException

from tests.conftest import Server
from tests.imageiq.images_helpers import encode, photo

pytestmark = pytest.mark.slow


def test_sync_http_client_classifies_like_v1(
    served: Server, digits_dir: Path, tmp_path: Path
) -> None:
    first, second = sorted(digits_dir.glob("*/*.png"))[:2]
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("not an image")
    with bentoml.SyncHTTPClient(served.url, token=served.key, server_ready_timeout=60) as client:
        assert {"classify", "classify_batch"} <= set(client.endpoints)
        answer = client.classify(image=first, top_k=3)
        v1 = served.post(
            "/v1/classify", files={"image": ("a.png", first.read_bytes())}, data={"top_k": "3"}
        ).json()
        assert [p["label"] for p in answer["predictions"]] == [
            p["label"] for p in v1["predictions"]
        ]
        for got, want in zip(answer["predictions"], v1["predictions"], strict=True):
            assert got["score"] == pytest.approx(want["score"], abs=1e-5)
        assert answer["model"] == v1["model"] and answer["image"] == v1["image"]

        batch = client.classify_batch(images=[first, second, not_an_image], top_k=2)
        results = batch["results"]
        assert [r["index"] for r in results] == [0, 1, 2]
        assert results[0]["predictions"][0]["label"] == answer["predictions"][0]["label"]
        assert len(results[1]["predictions"]) == 2
        assert results[2]["error"]["code"] == "unsupported_image_format"
        assert results[2]["filename"] == "notes.txt"

        # The service's validation: the envelope with its status, not BentoML's 500.
        with pytest.raises(BentoMLException) as raised:
            client.classify(image=first, top_k=0)
        assert "top_k" in str(raised.value)

        # Real photos: the batch's body may be as large as /v1's batch (not a bare cap).
        photos = []
        for i in range(3):
            photo_path = tmp_path / f"photo{i}.png"
            photo_path.write_bytes(encode(photo(300, 300, seed=i), "PNG"))
            photos.append(photo_path)
        assert sum(p.stat().st_size for p in photos) > 200_000
        big = client.classify_batch(images=photos, top_k=1)
        assert [r["index"] for r in big["results"]] == [0, 1, 2]
        assert all("predictions" in r for r in big["results"]), big

    # The same door as /v1: no key, or a wrong one, is a 401 in the envelope.
    for headers in ({}, {"Authorization": "Bearer iiq_0000000000000000_" + "0" * 48}):
        resp = served.post(
            "/classify", files={"image": ("a.png", first.read_bytes())}, headers=headers, auth=False
        )
        assert resp.status_code == 401, resp.text
        assert resp.json()["error"]["code"] == "unauthorized"
    with (
        bentoml.SyncHTTPClient(served.url, token="iiq_bad", server_ready_timeout=60) as client,
        pytest.raises(BentoMLException),
    ):
        client.classify(image=first)
    # The metrics count the route as /v1's are counted.
    metrics = served.get("/metrics").text
    assert 'endpoint="/classify"' in metrics
