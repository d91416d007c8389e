"""The hostile-client script (load-tests/hostile.py), short version, against the real
service on PostgreSQL, Redis and S3 (moto), configured with small budgets so that every
attack meets its limit: each property of the hardening review must hold."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from imageiq.registry import RegisteredModel
from tests.backends import Stack
from tests.bentos.test_security import new_key
from tests.conftest import ROOT, Server, running_server

MiB = 1024 * 1024
BYTES_BUDGET = 256 * MiB
PIXELS_BUDGET = 16_000_000  # x 16 bytes a pixel (imageiq.admission.BYTES_PER_PIXEL)
# What the service may grow by under attack: its two budgets, and a quarter more for what
# they do not count (allocator slack, thread stacks, the answers).
MAX_RSS_GROWTH = int((BYTES_BUDGET + PIXELS_BUDGET * 16) * 1.25)
PER_KEY = 4
BODY_TIMEOUT_S = 3
BURST = 4
PER_MINUTE = 60


@pytest.fixture(scope="module")
def hostile_server(
    stack: Stack, digits_model: RegisteredModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    env = {
        **stack.env(),
        "IMAGEIQ_MODELS": digits_model.tag,
        "IMAGEIQ_MAX_IN_FLIGHT_BYTES": str(BYTES_BUDGET),
        "IMAGEIQ_MAX_IN_FLIGHT_PIXELS": str(PIXELS_BUDGET),
        "IMAGEIQ_MAX_IN_FLIGHT_PER_KEY": str(PER_KEY),
        "IMAGEIQ_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "IMAGEIQ_RATE_LIMIT_BURST": str(BURST),
        "IMAGEIQ_AUTH_FAILURES_BURST": "10",
        "IMAGEIQ_AUTH_FAILURES_PER_MINUTE": "6",
        "IMAGEIQ_CACHE_TTL_S": "0",
    }
    with running_server(digits_model, log, env) as server:
        yield server


@pytest.mark.slow
def test_every_hostile_attack_is_refused_as_documented(
    hostile_server: Server, stack: Stack, tmp_path: Path
) -> None:
    limited, _ = new_key(stack, ["classify"], rate_limit=PER_MINUTE)
    others = [new_key(stack, ["classify"])[0] for _ in range(5)]
    pids = ",".join(str(p) for p in hostile_server.worker_pids())
    command = [
        sys.executable,
        str(ROOT / "load-tests" / "hostile.py"),
        *("--url", hostile_server.url, "--short", "--pids", pids),
        *("--max-rss-growth", str(MAX_RSS_GROWTH), "--extra-keys", ",".join(others)),
        *("--limited-key", limited, "--burst", str(BURST), "--per-minute", str(PER_MINUTE)),
        *("--per-key", str(PER_KEY), "--body-timeout", str(BODY_TIMEOUT_S)),
    ]
    env = {**os.environ, "IMAGEIQ_API_KEY": hostile_server.key}
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    print(run.stdout)  # the verdicts and their counts (RSS peak vs limit, answers)
    assert run.returncode == 0, (
        f"{run.stdout}\n{run.stderr[-3000:]}\n{hostile_server.log.read_text()[-4000:]}"
    )
    assert "properties held" in run.stdout
