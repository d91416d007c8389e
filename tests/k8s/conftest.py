"""A built bento, shared by the tests that need one (the Dockerfile checks and the pod run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from imageiq.registry import RegisteredModel
from tests.conftest import ROOT, TEST_HOME


@pytest.fixture(scope="session")
def bento(digits_model: RegisteredModel) -> Path:
    """`bentoml build` of bentofile.yaml packaging the digits model; the bento's directory."""
    env = {**os.environ, "BENTOML_HOME": str(TEST_HOME), "IMAGEIQ_MODELS": str(digits_model.tag)}
    bentoml = [sys.executable, "-m", "bentoml"]
    built = subprocess.run(
        [*bentoml, "build", "-f", "bentofile.yaml", "--output", "tag"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    where = subprocess.run(
        [*bentoml, "get", tag, "-o", "path"], env=env, capture_output=True, text=True, check=True
    )
    return Path(where.stdout.strip())
