"""``imageiq batch``: the workers' pipeline on one machine, over a folder, to JSONL or CSV."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from imageiq.registry import RegisteredModel
from imageiq_cli.main import main


def test_batch_classifies_a_folder_like_a_job(
    digits_model: RegisteredModel, digits_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    for i, path in enumerate(sorted(digits_dir.rglob("*.png"))[:20]):
        (folder / str(i % 3)).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / str(i % 3) / f"{i:02d}.png")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out.jsonl"
    assert (
        main(["batch", "--model", digits_model.tag, "--data", str(folder), "--out", str(out)]) == 1
    )
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 21 and [line["position"] for line in lines] == list(range(21))
    failed = [line for line in lines if line["state"] == "failed"]
    assert [line["ref"].endswith("notes.txt") for line in failed] == [True]
    assert failed[0]["error"]["code"] == "unsupported_image_format"
    done = [line for line in lines if line["state"] == "done"]
    assert all(line["label"] in digits_model.card.labels for line in done)
    assert all(len(line["predictions"]) <= 5 for line in done)

    table = tmp_path / "out.csv"
    (folder / "notes.txt").unlink()
    assert (
        main(
            [
                "batch",
                "--model",
                digits_model.tag,
                "--data",
                str(folder),
                "--out",
                str(table),
                "--top-k",
                "2",
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 20 and {r["state"] for r in rows} == {"done"}
    assert [r["label"] for r in rows] == [line["label"] for line in done]
