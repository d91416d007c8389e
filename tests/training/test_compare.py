"""The baseline CNN, ensembles and champion/challenger comparison, on the digits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from imageiq.inference import Classifier
from imageiq.registry import RegisteredModel
from imageiq_cli.main import main as cli_main
from tests.conftest import NO_AUGMENTATION, train_args
from training.train import main as train_main

pytestmark = pytest.mark.slow


def test_baseline_cnn_trains_from_scratch_and_has_no_pretrained_weights(
    digits_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = train_args(
        data=digits_dir,
        arch="baseline_cnn",
        image_size=16,
        epochs=3,
        batch_size=64,
        run_dir=str(tmp_path),
        model_name="baseline",
        **NO_AUGMENTATION,
    )
    result = train_main(args, max_image_pixels=10**8, console=Console(quiet=True))
    assert result.metrics["val_top1"] > 0.5  # learns: chance is 0.1
    classifier = Classifier.load(result.model.tag)
    assert classifier.model.card.architecture == "baseline_cnn"
    import torch

    probs = classifier.predict_proba(torch.zeros((2, 3, 16, 16), dtype=torch.uint8))["label"]
    assert probs.shape == (2, 10)
    code = cli_main(
        ["train", "--data", str(digits_dir), "--arch", "baseline_cnn", "--weights", "imagenet"]
    )
    assert code == 2 and "no pretrained weights" in capsys.readouterr().err


def test_ensemble_averages_the_members_probabilities(
    digits_model: RegisteredModel,
    newer_model: RegisteredModel,
    species_model: RegisteredModel,
    digits_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    report_dir = tmp_path / "ensemble"
    code = cli_main(
        [
            "evaluate",
            "--model",
            digits_model.tag,
            "--model",
            newer_model.tag,
            "--data",
            str(digits_dir),
            "--report-dir",
            str(report_dir),
        ]
    )
    assert code == 0
    report = json.loads((report_dir / "report.json").read_text())
    assert report["model"] == f"ensemble({digits_model.tag}, {newer_model.tag})"
    assert report["heads"]["label"]["images"] == 1797
    capsys.readouterr()
    code = cli_main(
        [
            "evaluate",
            "--model",
            digits_model.tag,
            "--model",
            species_model.tag,
            "--data",
            str(digits_dir),
        ]
    )
    assert code == 2 and "cannot be averaged" in " ".join(capsys.readouterr().err.split())


def test_models_compare_side_by_side(
    digits_model: RegisteredModel,
    newer_model: RegisteredModel,
    digits_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = cli_main(
        [
            "models",
            "compare",
            digits_model.tag,
            newer_model.tag,
            "--data",
            str(digits_dir),
            "--split",
            "val",
        ]
    )
    assert code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"A = {digits_model.tag}" in out and f"B = {newer_model.tag}" in out
    assert "label top1" in out and "label ECE" in out and "change" in out
    assert cli_main(["models", "compare", digits_model.tag, "--data", str(digits_dir)]) == 2
