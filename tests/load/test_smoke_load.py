"""The load test, for real: locust headless with the smoke stages against a served
classifier, through the runner ``make load`` uses (locust patches the interpreter with
gevent, so it runs as a subprocess and is never imported here); and its gate and checks,
fed wrong answers, to show they fail."""

from __future__ import annotations

import csv
import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from imageiq.registry import RegisteredModel
from tests.conftest import ROOT, Server, running_server

LOAD_TESTS = ROOT / "load-tests"
PERSONAS = ("app", "repeat", "bulk", "bad")
MAX_IMAGE_BYTES = 1024 * 1024  # the byte-limit case then uploads 1 MiB, not 20


def load_module(name: str) -> ModuleType:
    if str(LOAD_TESTS) not in sys.path:
        sys.path.insert(0, str(LOAD_TESTS))
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def load_server(
    digits_model: RegisteredModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The service as it runs by default (cache on), with a smaller image byte limit."""
    log = tmp_path_factory.mktemp("load-server") / "server.log"
    env = {"IMAGEIQ_MODELS": digits_model.tag, "IMAGEIQ_MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES)}
    with running_server(digits_model, log, env) as server:
        yield server


def run_smoke(server: Server, out: Path, *, key: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        str(LOAD_TESTS / "run_load.py"),
        *("--url", server.url, "--stages", "smoke", "--out", str(out)),
        *("--", "--max-image-bytes", str(MAX_IMAGE_BYTES), "--only-summary"),
    ]
    env = {**os.environ, "IMAGEIQ_API_KEY": key}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def stats(out: Path) -> dict[str, dict[str, str]]:
    with (out / "stats_stats.csv").open() as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


@pytest.mark.slow
def test_smoke_load_passes_the_gate(load_server: Server, tmp_path: Path) -> None:
    run = run_smoke(load_server, tmp_path, key=load_server.key)
    log = (tmp_path / "locust.log").read_text()
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}\n{log[-3000:]}"
    rows = stats(tmp_path)
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    for persona in PERSONAS:
        sent = [int(r["Request Count"]) for n, r in rows.items() if n.startswith(f"[{persona}] ")]
        assert sent and sum(sent) > 0, f"{persona} sent nothing: {sorted(rows)}"
    # The misbehaving client went through every bad request, each refused as documented.
    data = load_module("load_data")
    sample = data.digit_samples()[0]
    cases = data.bad_requests(sample, max_batch_images=32, max_image_bytes=MAX_IMAGE_BYTES)
    for case in cases:
        row = rows.get(f"[bad] {case.method} {case.path}: {case.name}")
        assert row and int(row["Request Count"]) > 0, f"never sent: {case.name}"
    assert (tmp_path / "report.html").stat().st_size > 0
    assert "gate passed" in log


@pytest.mark.slow
def test_gate_fails_the_run_when_requests_fail(load_server: Server, tmp_path: Path) -> None:
    """With a key the service does not know, every valid request is a 401: the gate stops
    the run and exits 1."""
    run = run_smoke(load_server, tmp_path, key="iiq_0123456789abcdef_unknown")
    assert run.returncode == 1, run.stdout[-3000:]
    assert int(stats(tmp_path)["Aggregated"]["Failure Count"]) > 0
    log = (tmp_path / "locust.log").read_text()
    assert "failure gate" in log and "gate failed" in log


def test_gate() -> None:
    gate = load_module("load_checks").gate_problems
    everyone = dict.fromkeys(PERSONAS, 10)
    assert gate(requests=40, failures=0, max_fail_ratio=0.0, per_persona=everyone) == []
    assert gate(requests=40, failures=1, max_fail_ratio=0.0, per_persona=everyone)
    assert gate(requests=40, failures=1, max_fail_ratio=0.05, per_persona=everyone) == []
    assert gate(requests=40, failures=3, max_fail_ratio=0.05, per_persona=everyone)
    assert gate(requests=0, failures=0, max_fail_ratio=1.0, per_persona=everyone)
    idle = {**everyone, "bulk": 0}
    (problem,) = gate(requests=30, failures=0, max_fail_ratio=0.0, per_persona=idle)
    assert "bulk" in problem
    assert gate(requests=40, failures=0, max_fail_ratio=0.0, per_persona=everyone, exceptions=1)


def test_checks_refuse_wrong_answers() -> None:
    checks, data = load_module("load_checks"), load_module("load_data")
    sample = data.digit_samples()[3]
    labels = [str(i) for i in range(10)]
    good: dict[str, Any] = {
        "model": {"name": "imageiq-classifier", "version": "v1"},
        "predictions": [{"label": "3", "score": 0.9}, {"label": "8", "score": 0.05}],
        "attributes": {},
        "image": {
            "sha256": sample.sha256,
            "format": sample.format,
            "width": sample.width,
            "height": sample.height,
            "bytes": len(sample.data),
        },
        "batch_size": 2,
        "cached": False,
        "timing_ms": {"total": 1.0},
    }
    asked = checks.Asked(top_k=2)
    assert checks.prediction_problem(good, sample, asked, labels=labels) is None
    wrong = [
        {**good, "model": {}},
        {**good, "predictions": good["predictions"][::-1]},  # not best first
        {**good, "predictions": [{"label": "3", "score": 1.2}, {"label": "8", "score": 0.0}]},
        {**good, "predictions": [{"label": "x", "score": 0.9}, {"label": "8", "score": 0.05}]},
        {**good, "predictions": good["predictions"][:1]},  # fewer than top_k
        {**good, "image": {**good["image"], "sha256": "0" * 64}},
        {**good, "cached": True},  # a hit that ran a batch
    ]
    for body in wrong:
        assert checks.prediction_problem(body, sample, asked, labels=labels), body
    floor = checks.Asked(top_k=2, min_confidence=0.5)
    assert checks.prediction_problem(good, sample, floor, labels=labels)
    assert checks.cache_problem(False, seen_before=True, expect="yes")
    assert checks.cache_problem(True, seen_before=True, expect="no")
    assert checks.cache_problem(False, seen_before=True, expect="any") is None
    refusal = {"error": {"code": "corrupt_image", "request_id": "r1"}}
    headers = {"X-Error-Code": "corrupt_image"}
    expected = (422, "corrupt_image")
    assert checks.error_problem(422, refusal, headers, expected=expected) is None
    assert checks.error_problem(500, refusal, headers, expected=expected)
    assert checks.error_problem(200, good, {}, expected=expected)


def test_smoke_stages_fit_in_a_minute() -> None:
    data = load_module("load_data")
    assert sum(stage.seconds for stage in data.STAGES["smoke"]) <= 60
    scaled = data.scaled(data.STAGES["default"], peak_users=4, min_users=4)
    assert [s.users for s in scaled] == [4, 4, 4, 4]
    assert max(s.users for s in data.scaled(data.STAGES["smoke"], peak_users=40, min_users=4)) == 40


def test_fresh_bytes_are_the_same_picture() -> None:
    """What the app and the bulk personas send: new bytes (no cache hit), same pixels."""
    import io

    from PIL import Image

    data = load_module("load_data")
    for sample in data.digit_samples()[:3]:  # a PNG, a JPEG and a WebP
        new = data.fresh(sample, b"0123456789abcdef")
        assert new.sha256 != sample.sha256
        with Image.open(io.BytesIO(sample.data)) as a, Image.open(io.BytesIO(new.data)) as b:
            assert (b.format, b.size) == (sample.format, (sample.width, sample.height))
            assert a.tobytes() == b.tobytes()
