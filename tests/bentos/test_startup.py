"""Start-up with the database not ready, and the demo's authentication-off mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imageiq.registry import RegisteredModel
from tests.backends import free_port
from tests.conftest import ROOT, TEST_HOME, running_server

pytestmark = pytest.mark.slow


def serve_until_exit(env: dict[str, str], log: Path) -> tuple[int, str]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "bentoml", "serve", "bentos.service:ImageClassifier"),
                *("--host", "127.0.0.1", "--port", str(free_port())),
            ],
            cwd=ROOT,
            env={**os.environ, "BENTOML_HOME": str(TEST_HOME), **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        code = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        pytest.fail(f"serve kept running on a database it cannot use:\n{log.read_text()[-2000:]}")
    return code, log.read_text()


def test_serve_stops_on_an_unmigrated_database(
    digits_model: RegisteredModel, tmp_path: Path
) -> None:
    env = {"IMAGEIQ_MODELS": digits_model.tag, "IMAGEIQ_DATA_DIR": str(tmp_path / "data")}
    code, log = serve_until_exit(env, tmp_path / "server.log")
    assert code != 0
    assert "has no ImageIQ schema: run `imageiq db upgrade` first" in log


def test_serve_stops_on_an_unreachable_database(
    digits_model: RegisteredModel, tmp_path: Path
) -> None:
    env = {
        "IMAGEIQ_MODELS": digits_model.tag,
        "IMAGEIQ_DATABASE_URL": f"postgresql://u:secret@127.0.0.1:{free_port()}/x",
    }
    code, log = serve_until_exit(env, tmp_path / "server.log")
    assert code != 0
    assert "cannot reach the database at postgresql+psycopg://u:***@127.0.0.1" in log
    assert "secret" not in log


def test_auth_off_serves_without_keys_and_says_so(
    digits_model: RegisteredModel, digits_dir: Path, tmp_path: Path
) -> None:
    env = {"IMAGEIQ_MODELS": digits_model.tag, "IMAGEIQ_AUTH_ENABLED": "false"}
    with running_server(digits_model, tmp_path / "server.log", env) as server:
        image = (digits_dir / "1" / "digit_0001.png").read_bytes()
        resp = server.post("/v1/classify", files={"image": ("1.png", image)}, auth=False)
        assert resp.status_code == 200, resp.text
        assert server.get("/v1/stats", auth=False).status_code == 200
        assert server.log.read_text().count("AUTHENTICATION IS OFF") >= 3


_STARTUP_PROBE = """
import json, sys
import bentos.service
service = bentos.service.ImageClassifier.inner()  # the class BentoML instantiates per worker
for served in service.pool.models.values():
    served.runner.wait(timeout=120)
assert service.pool.ready, service.pool.errors
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


@pytest.mark.parametrize("s3", [False, True], ids=["local-store", "s3"])
def test_starting_the_service_imports_neither_training_nor_the_cli(
    s3: bool, digits_model: RegisteredModel, tmp_path: Path
) -> None:
    """The service runs the core only (the import contracts say so of the code; this says
    so of a started service, lazy imports included), and boto3 only when S3 is configured."""
    from tests.backends import MotoServer
    from tests.conftest import prepare_database

    env = {"IMAGEIQ_MODELS": digits_model.tag, "IMAGEIQ_DATA_DIR": str(tmp_path / "data")}
    moto = MotoServer()
    if s3:
        moto.start()
        env |= {"IMAGEIQ_S3_BUCKET": moto.bucket, "IMAGEIQ_S3_ENDPOINT_URL": moto.url}
        env |= MotoServer.env
    try:
        prepare_database(env)
        out = subprocess.run(
            [sys.executable, "-c", _STARTUP_PROBE],
            cwd=ROOT,
            env={**os.environ, "BENTOML_HOME": str(TEST_HOME), **env},
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        moto.stop()
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert {"bentos", "imageiq", "torch"} <= loaded
    assert not loaded & {"training", "imageiq_cli", "moto"}
    assert ("boto3" in loaded) is s3
