"""Evaluation reports and calibration: the model's own held-out split, per-class metrics,
the confusion matrix, per-head metrics, and temperature scaling that lowers the ECE."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from imageiq.inference import Classifier
from imageiq_cli.main import main as cli_main
from tests.conftest import NO_AUGMENTATION, train_args
from training.calibration import expected_calibration_error, fit_temperature, temper
from training.train import main as train_main

pytestmark = pytest.mark.slow


def test_temperature_fits_an_overconfident_model() -> None:
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 4, 2000)
    logits = rng.normal(size=(2000, 4))
    logits[np.arange(2000), targets] += 1.0  # right more often than chance...
    probs = np.exp(4 * logits) / np.exp(4 * logits).sum(1, keepdims=True)  # ...but overconfident
    t = fit_temperature(probs, targets)
    assert 3.0 < t < 5.0
    assert expected_calibration_error(temper(probs, t), targets) < 0.5 * expected_calibration_error(
        probs, targets
    )
    assert (temper(probs, t).argmax(1) == probs.argmax(1)).all()  # the ranking never changes


def test_report_on_the_held_out_split_with_calibration(
    digits_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = train_args(
        data=digits_dir,
        arch="resnet18",
        image_size=16,
        epochs=3,
        batch_size=64,
        run_dir=str(tmp_path / "runs"),
        model_name="calibrated",
        **NO_AUGMENTATION,
    )
    result = train_main(args, max_image_pixels=10**8, console=Console(quiet=True))
    card = Classifier.load(result.model.tag).model.card
    assert card.temperature["label"] == result.metrics["temperature"] != 1.0
    assert result.metrics["val_ece_calibrated"] < result.metrics["val_ece"]

    report_dir = tmp_path / "report"
    code = cli_main(
        [
            "evaluate",
            "--model",
            result.model.tag,
            "--data",
            str(digits_dir),
            "--split",
            "val",
            "--report-dir",
            str(report_dir),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    assert "359 images" in flat and "report and plots in" in flat
    report = json.loads((report_dir / "report.json").read_text())
    label = report["heads"]["label"]
    assert label["images"] == 359
    # the served scores on the model's own split: the same top-1 as training measured
    assert label["metrics"]["top1"] == pytest.approx(result.metrics["val_top1"], abs=1e-9)
    calibration = label["calibration"]
    assert calibration["ece"] < calibration["ece_uncalibrated"]  # shown in the report
    assert calibration["ece"] == pytest.approx(result.metrics["val_ece_calibrated"], abs=1e-3)
    assert set(label["per_class"]) >= {str(d) for d in range(10)} | {"macro avg"}
    matrix = np.asarray(label["confusion_matrix"]["matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 359
    assert np.trace(matrix) / 359 == pytest.approx(label["metrics"]["top1"])
    for name in ("confusion_matrix_label.png", "reliability_label.png"):
        assert (report_dir / name).read_bytes()[:4] == b"\x89PNG"


def test_report_has_a_section_per_attribute_head(species_manifest: Path, tmp_path: Path) -> None:
    args = train_args(
        data=species_manifest,
        arch="resnet18",
        image_size=32,
        epochs=4,
        batch_size=16,
        run_dir=str(tmp_path / "runs"),
        model_name="species-report",
    )
    model = train_main(args, max_image_pixels=10**8, console=Console(quiet=True)).model
    report_dir = tmp_path / "report"
    code = cli_main(
        [
            "evaluate",
            "--model",
            model.tag,
            "--data",
            str(species_manifest),
            "--report-dir",
            str(report_dir),
        ]
    )
    assert code == 0
    heads = json.loads((report_dir / "report.json").read_text())["heads"]
    assert set(heads) == {"label", "shiny", "shadow"}
    assert heads["shiny"]["images"] < 180  # unknown values are not scored
    assert heads["shiny"]["confusion_matrix"]["labels"] == ["no", "yes"]
    assert (report_dir / "reliability_shadow.png").is_file()
