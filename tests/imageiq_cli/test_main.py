from pathlib import Path

import pytest

from imageiq.registry import RegisteredModel
from imageiq_cli.main import main


def test_demo_data_writes_the_digits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo-data", str(tmp_path / "digits")]) == 0
    assert len(list((tmp_path / "digits").rglob("*.png"))) == 1797
    assert sorted(p.name for p in (tmp_path / "digits").iterdir()) == [str(d) for d in range(10)]
    assert "1797" in capsys.readouterr().out


def test_models_list_shows_registered_models(
    digits_model: RegisteredModel, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert digits_model.tag in out and "resnet18" in out


def test_demo_model_does_nothing_when_a_model_exists(
    digits_model: RegisteredModel, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo-model", "--data", "/nonexistent"]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_evaluate_scores_a_registered_model(
    digits_model: RegisteredModel,
    digits_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out_csv = tmp_path / "predictions.csv"
    assert (
        main(
            [
                "evaluate",
                "--model",
                digits_model.tag,
                "--data",
                str(digits_dir),
                "--predictions-out",
                str(out_csv),
            ]
        )
        == 0
    )
    assert "top-1" in capsys.readouterr().out
    rows = out_csv.read_text().splitlines()
    assert rows[0] == "path,label,predicted,score" and len(rows) == 1798


def test_unknown_architecture_exits_2_listing_valid_ones(
    shapes_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--data", str(shapes_dir), "--arch", "vgg16"]) == 2
    err = capsys.readouterr().err
    assert "unknown_architecture" in err and "resnet50" in err and "efficientnet_b0" in err


def test_invalid_settings_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IMAGEIQ_MAX_BATCH_SIZE", "0")
    assert main(["models", "list"]) == 2
    assert "IMAGEIQ_MAX_BATCH_SIZE" in capsys.readouterr().err
