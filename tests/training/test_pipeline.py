"""The training pipeline's acceptance on real data: determinism, resume after a kill,
multi-head manifests served with their attributes, and the run directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from imageiq.inference import Classifier
from tests.conftest import ROOT, running_server, train_args
from tests.imageiq.images_helpers import encode, photo
from training.train import main

pytestmark = pytest.mark.slow

DIGITS = {"arch": "resnet18", "image_size": 16, "batch_size": 64, "seed": 0}


def quiet(args) -> dict[str, float]:
    metrics = main(args, max_image_pixels=10**8, console=Console(quiet=True)).metrics
    return {k: v for k, v in metrics.items() if k != "train_seconds"}


def test_same_seed_same_data_identical_metrics(digits_dir: Path, tmp_path: Path) -> None:
    """With the default augmentations on: every random draw comes from the seed."""
    first = quiet(train_args(data=digits_dir, epochs=2, run_dir=str(tmp_path), **DIGITS))
    second = quiet(train_args(data=digits_dir, epochs=2, run_dir=str(tmp_path), **DIGITS))
    assert first == second
    assert first["val_top1"] > 0.5


def test_resume_after_a_kill_mid_epoch(digits_dir: Path, tmp_path: Path) -> None:
    epochs = 4
    command = [
        sys.executable,
        "-c",
        "from imageiq_cli.main import run; run()",
        "train",
        "--data",
        str(digits_dir),
        "--epochs",
        str(epochs),
        "--run-dir",
        str(tmp_path / "killed"),
        "--model-name",
        "resumed",
        *(f"--{k.replace('_', '-')}={v}" for k, v in DIGITS.items()),
    ]
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        metrics_files: list[Path] = []
        while time.monotonic() < deadline:  # until epoch 2 is checkpointed
            metrics_files = list((tmp_path / "killed").glob("*/*/metrics.json"))
            if metrics_files and len(json.loads(metrics_files[0].read_text())) >= 2:
                break
            assert proc.poll() is None, "training ended before it could be killed"
            time.sleep(0.05)
        time.sleep(0.5)  # into epoch 3
        assert proc.poll() is None
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    run_dir = metrics_files[0].parent
    assert len(json.loads((run_dir / "metrics.json").read_text())) == 2

    resumed = quiet(train_args(data=None, resume=str(run_dir)))
    uninterrupted = quiet(
        train_args(data=digits_dir, epochs=epochs, run_dir=str(tmp_path / "whole"), **DIGITS)
    )
    assert abs(resumed["val_top1"] - uninterrupted["val_top1"]) <= 0.005
    history = json.loads((run_dir / "metrics.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]


def test_multi_head_manifest_per_head_accuracy_and_served_attributes(
    species_manifest: Path, tmp_path: Path
) -> None:
    args = train_args(
        data=species_manifest,
        arch="resnet18",
        image_size=32,
        epochs=12,
        batch_size=16,
        patience=0,
        hflip=True,
        crop_scale=0.8,
        run_dir=str(tmp_path),
        model_name="species-heads",
    )
    console = Console(record=True, width=150)
    result = main(args, max_image_pixels=10**8, console=console)
    out = console.export_text()
    assert "skipped 1 bad entries" in out and "missing.png" in out
    assert "held-out shiny accuracy" in out and "held-out shadow accuracy" in out
    metrics = result.metrics
    assert metrics["val_top1"] >= 0.8
    assert metrics["val_shiny_top1"] >= 0.8 and metrics["val_shadow_top1"] >= 0.7
    card = Classifier.load(result.model.tag).model.card
    assert card.heads == {"shadow": ["no", "yes"], "shiny": ["no", "yes"]}

    # the run directory
    run = result.run_dir
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["skipped"] == 1 and config["args"]["seed"] == 0
    assert "missing.png" in (run / "skipped.txt").read_text()
    assert len(json.loads((run / "metrics.json").read_text())) == 12
    assert (run / "metrics.csv").read_text().startswith("epoch,")
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "checkpoints" / "last.pt").is_file()

    # served: the attributes come back with each prediction
    with running_server(
        result.model, tmp_path / "server.log", {"IMAGEIQ_MODELS": result.model.tag}
    ) as server:
        image = (species_manifest.parent / "img_000.png").read_bytes()
        body = server.post("/v1/classify", files={"image": ("a.png", image)}).json()
        assert set(body["attributes"]) == {"shiny", "shadow"}
        assert body["predictions"][0]["label"] in {"bar", "disc", "square"}
        other = encode(photo(40, 40), "PNG")
        body = server.post("/v1/classify", files={"image": ("b.png", other)}).json()
        assert all(a["label"] in {"yes", "no"} for a in body["attributes"].values())
