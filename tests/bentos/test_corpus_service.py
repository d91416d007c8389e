"""Real-world images and hostile inputs through the running service: every corpus image is
classified (200), every hostile input gets its 4xx and stable code, and the service stays
up with bounded memory (RSS of its processes measured before and after)."""

from __future__ import annotations

import base64
import re

import pytest

from tests.bentos.test_service import assert_error, classify
from tests.conftest import Server
from tests.imageiq.images_helpers import corpus, hostile_inputs

pytestmark = pytest.mark.slow

MiB = 1024 * 1024


def test_corpus_classifies_and_hostile_inputs_get_4xx_with_bounded_memory(
    server: Server,
) -> None:
    images, hostile = corpus(), hostile_inputs()
    assert len(images) >= 25 and len(hostile) >= 10
    warm = classify(server, {"image": ("w.jpg", images["large-1000x750.jpg"])})
    assert warm.status_code == 200
    before = server.rss_bytes()

    for _ in range(3):  # repeated: a leak shows up as growth per round
        for name, data in images.items():
            resp = classify(server, {"image": (name, data, "application/octet-stream")})
            assert resp.status_code == 200, (name, resp.text)
            body = resp.json()
            assert body["image"]["bytes"] == len(data)
            assert body["image"]["width"] * body["image"]["height"] <= 1_000_000
        for name, (data, status, code) in hostile.items():
            assert_error(classify(server, {"image": (name, data)}), status, code)
            b64 = {"image_b64": base64.b64encode(data).decode()}
            assert_error(server.post("/v1/classify", json=b64), status, code)
        # over the byte limit, as a file and as base64
        big = b"\xff\xd8\xff" + b"\0" * (300 * 1024)
        assert_error(classify(server, {"image": ("big.jpg", big)}), 413, "payload_too_large")
        b64 = {"image_b64": base64.b64encode(big).decode()}
        assert_error(server.post("/v1/classify", json=b64), 413, "payload_too_large")

    after = server.rss_bytes()
    growth = after - before
    print(f"service RSS: {before / MiB:.0f} MiB before, {after / MiB:.0f} MiB after")
    assert growth < 100 * MiB, f"RSS grew by {growth / MiB:.0f} MiB"
    assert server.get("/livez").status_code == 200
    assert server.get("/readyz").status_code == 200
    text = server.get("/metrics").text
    assert not re.search(r'^imageiq_requests_total\{[^}]*status="5', text, re.M)
    # the log has a line per request, but never the image bytes
    log = server.log.read_text(errors="replace")
    assert log.count('"logger": "imageiq.access"') >= 3 * (len(images) + 2 * len(hostile))
    sample = base64.b64encode(images["large-1000x750.jpg"]).decode()
    assert sample[100:160] not in log


def test_the_corpus_in_one_batch_request_per_chunk(server: Server) -> None:
    """The same corpus through /v1/classify/batch, eight at a time, with a hostile input
    in every chunk: the good ones succeed, the bad one fails alone."""
    images = list(corpus().items())
    hostile = list(hostile_inputs().items())
    for start in range(0, len(images), 7):
        chunk = images[start : start + 7]
        bad_name, (bad, status, code) = hostile[(start // 7) % len(hostile)]
        files = [("images", (n, d)) for n, d in chunk] + [("images", (bad_name, bad))]
        resp = server.post("/v1/classify/batch", files=files, timeout=60)
        assert resp.status_code == 200, resp.text
        results = resp.json()["results"]
        assert all("error" not in r for r in results[:-1]), results
        assert (results[-1]["error"]["status"], results[-1]["error"]["code"]) == (status, code)
