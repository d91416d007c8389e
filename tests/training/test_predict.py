"""`imageiq predict`: an unlabelled folder streamed to CSV through the serving path."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from imageiq.inference import Classifier
from imageiq.registry import RegisteredModel
from imageiq_cli.main import main as cli_main
from tests.imageiq.images_helpers import predict_offline

pytestmark = pytest.mark.slow


def test_predict_an_unlabelled_folder_to_csv(
    digits_model: RegisteredModel, digits_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "unlabelled"
    (folder / "nested").mkdir(parents=True)
    sources = sorted(digits_dir.rglob("*.png"))[:70]
    for i, path in enumerate(sources):  # flat, as a test folder without labels would be
        shutil.copy(path, (folder if i % 2 else folder / "nested") / f"{i:03d}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "predictions.csv"

    code = cli_main(
        [
            "predict",
            str(folder),
            "--model",
            digits_model.tag,
            "--out",
            str(out),
            "--top-k",
            "3",
            "--batch-size",
            "16",
        ]
    )
    assert code == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 71
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    broken = next(r for r in rows if r["path"].endswith("broken.png"))
    assert broken["error"].startswith("unsupported_image_format") and not broken["label_1"]
    classifier = Classifier.load(digits_model.tag)
    for row in rows[:10]:
        if row["error"]:
            continue
        decoded = classifier.decode(Path(row["path"]).read_bytes(), max_pixels=10**8)
        expected = predict_offline(classifier, [decoded.image], top_k=3)[0].labels
        assert [row[f"label_{k}"] for k in (1, 2, 3)] == [s.label for s in expected]
        assert abs(float(row["score_1"]) - expected[0].score) < 1e-5


def test_predict_refuses_what_is_not_a_folder_or_manifest(
    digits_model: RegisteredModel, tmp_path: Path
) -> None:
    code = cli_main(
        [
            "predict",
            str(tmp_path / "nothing"),
            "--model",
            digits_model.tag,
            "--out",
            str(tmp_path / "p.csv"),
        ]
    )
    assert code == 2
