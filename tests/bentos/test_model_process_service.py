"""The service with IMAGEIQ_MODEL_PROCESS: two front workers and one model process, as the
GPU values run it. One server for the module."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imageiq.inference import Classifier
from imageiq.registry import RegisteredModel
from tests.conftest import Server, running_server
from tests.imageiq.images_helpers import encode, photo, predict_offline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fronts(
    digits_model: RegisteredModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("model-process") / "server.log"
    env = {
        "IMAGEIQ_MODELS": digits_model.tag,
        "IMAGEIQ_PRECISION": "fp32",
        "IMAGEIQ_CHANNELS_LAST": "false",
        "IMAGEIQ_MODEL_PROCESS": "true",
        "IMAGEIQ_FRONT_WORKERS": "2",
        "IMAGEIQ_MODEL_SLOTS": "4",
        "IMAGEIQ_CACHE_TTL_S": "0",
        "IMAGEIQ_TORCH_THREADS": "1",
    }
    with running_server(digits_model, log, env) as server:
        yield server


def model_process(server: Server) -> int:
    (pid,) = [
        pid
        for pid in server.worker_pids()
        if b"imageiq.model_process" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    return pid


def wait_ready(server: Server, want: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while server.get("/readyz", auth=False).status_code != want:
        assert time.monotonic() < deadline, f"/readyz never said {want}"
        time.sleep(0.1)


def test_two_fronts_and_one_model_process_answer_as_the_offline_reference(
    fronts: Server,
) -> None:
    """Every answer, from either front, matches the offline fp32 reference; the model
    process's batches reach /metrics beside the fronts' requests (multiprocess mode)."""
    pids = fronts.worker_pids()
    assert model_process(fronts) in pids
    images = [photo(seed=i) for i in range(8)]
    blobs = [encode(im, "JPEG", quality=92) for im in images]
    classifier = Classifier.load(fronts.model.tag)
    want = predict_offline(
        classifier, [classifier.decode(b, max_pixels=10**6).image for b in blobs], top_k=3
    )
    for _ in range(3):
        for blob, offline in zip(blobs, want, strict=True):
            r = fronts.post("/v1/classify", files={"image": ("x.jpg", blob)}, data={"top_k": "3"})
            assert r.status_code == 200, r.text
            got = r.json()["predictions"]
            assert [p["label"] for p in got] == [s.label for s in offline.labels]
            for p, s in zip(got, offline.labels, strict=True):
                assert p["score"] == pytest.approx(s.score, abs=1e-5)
    files = [("images", (f"{i}.jpg", b)) for i, b in enumerate(blobs)]  # more than its 4 slots
    r = fronts.post("/v1/classify/batch", files=files, data={"top_k": "3"})
    assert r.status_code == 200, r.text
    for result, offline in zip(r.json()["results"], want, strict=True):
        assert result["predictions"][0]["label"] == offline.labels[0].label
    metrics = fronts.get("/metrics", auth=False).text
    batches = re.search(r"^imageiq_batch_size_count\{[^}]*\} (\S+)$", metrics, re.M)
    assert batches is not None and float(batches.group(1)) >= 1
    requests = re.findall(
        r'^imageiq_requests_total\{[^}]*status="200"[^}]*\} (\S+)$', metrics, re.M
    )
    assert sum(float(v) for v in requests) >= 25
    models = fronts.get("/v1/models").json()
    assert models["ready"] and models["models"][0]["state"] == "ready"


def test_a_killed_model_process_is_restarted_and_readiness_follows_it(fronts: Server) -> None:
    blob = encode(photo(seed=42), "JPEG", quality=92)
    before = fronts.post("/v1/classify", files={"image": ("x.jpg", blob)})
    assert before.status_code == 200
    os.kill(model_process(fronts), signal.SIGKILL)
    wait_ready(fronts, 503, timeout=10)
    r = fronts.post("/v1/classify", files={"image": ("x.jpg", blob)})
    if r.status_code != 200:  # unless it is already back: retryable, never a 500
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"
    wait_ready(fronts, 200)
    after = fronts.post("/v1/classify", files={"image": ("x.jpg", blob)})
    assert after.status_code == 200
    assert after.json()["predictions"] == before.json()["predictions"]


def test_no_model_process_outlives_the_server(
    digits_model: RegisteredModel, tmp_path: Path
) -> None:
    env = {
        "IMAGEIQ_MODELS": digits_model.tag,
        "IMAGEIQ_MODEL_PROCESS": "true",
        "IMAGEIQ_FRONT_WORKERS": "1",
    }
    with running_server(digits_model, tmp_path / "server.log", env) as server:
        pid = model_process(server)
        socket_path = Path(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[4].decode())
        server.proc.send_signal(signal.SIGTERM)  # the arbiter alone, as Kubernetes does
        server.proc.wait(timeout=60)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, "the model process outlived the server"
        time.sleep(0.1)
    assert not socket_path.parent.exists()
