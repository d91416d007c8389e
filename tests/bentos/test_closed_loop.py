"""The closed loop end to end, on real PostgreSQL, Redis, S3 (moto) and a running service:

serve v1 (digits 0-2) → store images through the API → label them through feedback,
including a new class (3) → freeze a golden set → ``imageiq retrain`` in a separate model
store (the CronJob pod's) trains v2 from the database, compares it with the champion,
promotes it → the service imports v2 from the model repository and serves it without a
restart, and answers the new class → a canary of a deliberately worse version (random
weights) is rolled back automatically by its policy once people's labels disagree with it.
Counts are printed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from imageiq.architectures import build_model
from imageiq.db.schema import Evaluation, Label, Model, Prediction, Rollout
from imageiq.registry import RegisteredModel, get_model, register_model
from tests.backends import Stack, wait_for
from tests.conftest import NO_AUGMENTATION, ROOT, Server, running_server, train_args

# Under a loaded 2-core machine the whole loop (two trainings, a server, ~600 requests)
# has taken 15 minutes; alone it takes about 6.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

NAME = "loop-digits"
PER_CLASS = 60  # stored and labelled through the API, per class


def _digit_files(digits_dir: Path, label: int) -> list[Path]:
    return sorted((digits_dir / str(label)).iterdir())


@pytest.fixture(scope="module")
def champion(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> RegisteredModel:
    """v1: digits 0-2 only, from images the service will not be sent."""
    from training.train import main as train_main

    subset = tmp_path_factory.mktemp("v1-data")
    for label in range(3):
        (subset / str(label)).mkdir()
        for path in _digit_files(digits_dir, label)[-40:]:
            shutil.copy(path, subset / str(label) / path.name)
    args = train_args(
        data=subset,
        arch="resnet18",
        image_size=32,
        epochs=8,
        model_name=NAME,
        run_dir=str(tmp_path_factory.mktemp("v1-runs")),
        **NO_AUGMENTATION,
    )
    return train_main(args, max_image_pixels=10_000_000).model


@pytest.fixture(scope="module")
def loop_stack() -> Iterator[Stack]:
    """A PostgreSQL, Redis and bucket of the loop's own: it labels the digits the other
    service tests send, and counts every label and prediction."""
    running = Stack()
    running.start()
    yield running
    running.stop()


def _cli(env: dict[str, str], *argv: str, timeout: float = 900) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "imageiq_cli", *argv],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"imageiq {' '.join(argv)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _served(server: Server) -> dict[str, bool]:
    body = server.get("/v1/models").json()
    return {f"{m['name']}:{m['version']}": m["active"] for m in body["models"]}


def test_labels_retrain_promote_serve_and_a_worse_canary_rolls_back(
    loop_stack: Stack,
    champion: RegisteredModel,
    digits_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    work = tmp_path_factory.mktemp("loop")
    env = {
        **loop_stack.env(),
        "IMAGEIQ_MODELS": champion.tag,
        "IMAGEIQ_RELOAD_INTERVAL_S": "1",
        "IMAGEIQ_ROLLOUT_INTERVAL_S": "1",
        "IMAGEIQ_CACHE_TTL_S": "0",
        "IMAGEIQ_MAX_BATCH_SIZE": "8",
    }
    with running_server(champion, work / "server.log", env) as server:
        cli_env = {
            k: v for k, v in server.env.items() if k.startswith("IMAGEIQ_") or k.startswith("AWS_")
        }
        # the CronJob pod: a model store of its own, so v2 reaches the service through the
        # model repository (the bucket), not a shared directory
        cli_env["BENTOML_HOME"] = str(work / "retrain-home")
        _cli(
            {**cli_env, "BENTOML_HOME": os.environ["BENTOML_HOME"]},
            "models",
            "publish",
            champion.tag,
        )
        resp = server.post(f"/v1/admin/models/{NAME}/activate", json={"version": champion.version})
        assert resp.status_code == 200, resp.text

        # --- images and feedback through the API, class 3 new --------------------------------
        stored: dict[int, list[str]] = {}
        for label in range(4):
            for path in _digit_files(digits_dir, label)[:PER_CLASS]:
                resp = server.post(
                    "/v1/classify",
                    files={"image": (path.name, path.read_bytes(), "image/png")},
                    data={"store": "true"},
                )
                assert resp.status_code == 200, resp.text
                image = resp.json()["image"]["id"]
                stored.setdefault(label, []).append(image)
                feedback = {"label": str(label), **({"new_label": True} if label == 3 else {})}
                resp = server.post(f"/v1/images/{image}/labels", json=feedback)
                assert resp.status_code in (200, 201), resp.text
        refused = server.post(f"/v1/images/{stored[0][0]}/labels", json={"label": "99"})
        assert (
            refused.status_code == 422 and refused.json()["error"]["code"]
        )  # unknown w/o new_label
        wait_for(
            lambda: loop_stack.count(Label) >= 4 * PER_CLASS, timeout=30, what="the labels written"
        )

        # --- golden set, retrain, promotion ---------------------------------------------------
        out = _cli(cli_env, "golden", "freeze", "--name", "default", "--per-class", "8")
        assert "32 images in 4 classes" in out, out
        started = time.monotonic()
        out = _cli(
            cli_env,
            "retrain",
            "--model-name",
            NAME,
            "--arch",
            "resnet18",
            "--image-size",
            "32",
            "--epochs",
            "10",
            "--crop-scale",
            "1",
            "--no-hflip",
            "--color-jitter",
            "0",
            "--rollout",
            "activate",
            "--run-dir",
            str(work / "runs"),
        )
        retrain_s = time.monotonic() - started
        assert "promoted" in out, out
        with loop_stack.session() as session:
            evaluation = session.scalars(select(Evaluation).order_by(Evaluation.id.desc())).first()
            assert evaluation is not None and evaluation.outcome == "promoted", out
            v2 = f"{NAME}:{evaluation.challenger_version}"
            assert evaluation.champion_version == champion.version
            assert evaluation.golden_set == "default" and evaluation.report
            assert (
                session.scalar(
                    select(Model.status).where(
                        Model.name == NAME, Model.version == evaluation.challenger_version
                    )
                )
                == "active"
            )
        report_md = next((work / "runs").rglob("comparison.md")).read_text()
        assert "golden" in report_md and "3" in report_md

        # --- the service serves v2 without a restart, and knows the new class -----------------
        wait_for(lambda: _served(server).get(v2) is True, timeout=120, what=f"{v2} served")
        assert champion.tag not in _served(server)
        three = _digit_files(digits_dir, 3)[-1]
        answer = server.post(
            "/v1/classify", files={"image": (three.name, three.read_bytes(), "image/png")}
        ).json()
        assert answer["model"]["version"] == evaluation.challenger_version
        assert answer["predictions"][0]["label"] == "3", answer

        # --- a canary of a deliberately worse version is rolled back ---------------------------
        good = get_model(v2)
        net = build_model(
            arch=good.card.architecture,
            num_classes=len(good.card.labels),
            heads={h: len(v) for h, v in good.card.heads.items()},
        )
        torch.manual_seed(1)
        card = good.card.model_copy(update={"dataset_snapshot": None})
        worse = register_model(net, card, name=NAME)  # random weights, v2's labels
        _cli(
            {**cli_env, "BENTOML_HOME": os.environ["BENTOML_HOME"]},
            "rollout",
            "start",
            worse.tag,
            "--share",
            "0.5",
            "--min-requests",
            "15",
            "--min-feedback",
            "15",
        )
        wait_for(lambda: worse.tag in _served(server), timeout=120, what="the canary served")
        answered: dict[str, int] = {}
        images = [p for label in range(4) for p in _digit_files(digits_dir, label)[-25:]]
        # stored and then labelled by people: the worse version's answers disagree with them
        # (its confidence alone need not be lower: it has v2's temperature)
        for path in images:
            resp = server.post(
                "/v1/classify",
                files={"image": (path.name, path.read_bytes(), "image/png")},
                data={"store": "true"},
            )
            assert resp.status_code == 200, resp.text
            version = resp.json()["model"]["version"]
            answered[version] = answered.get(version, 0) + 1
            label = path.parent.name
            image = resp.json()["image"]["id"]
            assert server.post(f"/v1/images/{image}/labels", json={"label": label}).status_code in (
                200,
                201,
            )

        def rolled_back() -> bool:
            with loop_stack.session() as session:
                state = session.scalar(select(Rollout.state).order_by(Rollout.id.desc()))
            return state == "rolled_back"

        wait_for(rolled_back, timeout=60, what="the automatic rollback")
        wait_for(lambda: worse.tag not in _served(server), timeout=60, what="the canary gone")
        with loop_stack.session() as session:
            ended = session.scalars(select(Rollout).order_by(Rollout.id.desc())).first()
            assert ended is not None and "agreement" in (ended.reason or ""), ended.reason
            predictions = loop_stack.count(Prediction)
        # after the rollback, every request goes to the champion
        for path in images[:10]:
            resp = server.post(
                "/v1/classify", files={"image": (path.name, path.read_bytes(), "image/png")}
            )
            assert resp.json()["model"]["version"] == evaluation.challenger_version
        metrics = server.get("/metrics").text
        assert f'imageiq_canary_rollbacks_total{{model_name="{NAME}"}} 1.0' in metrics
        print(
            f"\nclosed loop: {4 * PER_CLASS} images stored and labelled (class 3 new), "
            f"golden set 32; retrain {retrain_s:.0f} s -> {v2} promoted and served; canary of "
            f"{worse.tag}: {answered.get(worse.version, 0)} of {len(images)} requests, then "
            f"rolled back ({ended.reason}); {predictions} predictions recorded"
        )
