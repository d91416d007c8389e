"""``imageiq classify`` as a user runs it (``python -m imageiq_cli``, a subprocess) against the
real service (``served``: PostgreSQL, Redis, S3): folders, globs and a non-image, the three
output formats, the key from the environment or a file and never from an argument."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# The service's fixtures (``served`` and whatever it needs), as tests/bentos has them.
from tests.conftest import ROOT, Server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def photos(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 6 digits in two subfolders, a README that is skipped in folders, and
    elsewhere 3 loose digits for a glob and a text file pretending to be a PNG."""
    root = tmp_path_factory.mktemp("photos")
    for d in range(6):
        sub = root / "album" / ("even" if d % 2 == 0 else "odd")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"d{d}.png").write_bytes(sorted((digits_dir / str(d)).iterdir())[0].read_bytes())
    (root / "album" / "README.txt").write_text("not looked at: not an image extension")
    (root / "loose").mkdir()
    for d in (7, 8, 9):
        (root / "loose" / f"scan{d}.png").write_bytes(
            sorted((digits_dir / str(d)).iterdir())[0].read_bytes()
        )
    (root / "loose" / "fake.png").write_text("a text file with an image's name")
    return root


def cli(
    *args: str, key: str | None, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "IMAGEIQ_API_KEY"}
    if key is not None:
        environ["IMAGEIQ_API_KEY"] = key
    environ["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "imageiq_cli", "classify", *args],
        capture_output=True,
        text=True,
        env={**environ, **(env or {})},
        cwd=cwd or ROOT,
        timeout=300,
    )


def test_a_folder_a_glob_and_a_non_image(served: Server, photos: Path) -> None:
    run = cli(
        "--url",
        served.url,
        str(photos / "album"),
        str(photos / "loose" / "scan*.png"),  # quoted: the CLI expands it
        str(photos / "loose" / "fake.png"),
        "--format",
        "jsonl",
        "--top-k",
        "2",
        key=served.key,
    )
    assert run.returncode == 1, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    paths = [Path(line["path"]).name for line in lines]
    assert paths == [
        *("d0.png", "d2.png", "d4.png", "d1.png", "d3.png", "d5.png"),
        *("scan7.png", "scan8.png", "scan9.png", "fake.png"),
    ]
    for line in lines[:-1]:
        assert len(line["predictions"]) == 2 and "error" not in line
        assert line["model"]["version"] == served.model.version
    assert lines[-1]["error"]["code"] == "unsupported_image_format"
    assert lines[-1]["error"]["status"] == 415
    assert "fake.png" in run.stderr and "unsupported_image_format" in run.stderr
    # No TTY: no progress bar on stderr.
    assert "━" not in run.stderr


def test_table_and_csv_parse_and_all_good_exits_0(
    served: Server,
    photos: Path,
    tmp_path: Path,
) -> None:
    album = str(photos / "album")
    table = cli("--url", served.url, album, key=served.key)
    assert table.returncode == 0, table.stderr
    rows = [line.split() for line in table.stdout.splitlines() if line.strip()]
    assert rows[0][:3] == ["path", "label", "score"]
    assert len(rows) == 7 and all(row[1] in "0123456789" for row in rows[1:])
    assert all(0 <= float(row[2]) <= 1 for row in rows[1:])

    out = tmp_path / "results.csv"
    run = cli(
        "--url", served.url, album, "--format", "csv", "-o", str(out), "--quiet", key=served.key
    )
    assert run.returncode == 0 and run.stdout == ""
    read = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [Path(r["path"]).name for r in read] == [f"d{d}.png" for d in (0, 2, 4, 1, 3, 5)]
    for r in read:
        assert json.loads(r["predictions"])[0]["label"] == r["label"] and not r["error_code"]


def test_the_key_from_a_file_and_never_from_an_argument(
    served: Server,
    photos: Path,
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(served.key + "\n")
    one = str(photos / "album" / "even" / "d0.png")
    run = cli(
        "--url", served.url, "--api-key-file", str(key_file), one, "--format", "jsonl", key=None
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["predictions"]

    helps = cli("--help", key=None)
    assert "--api-key-file" in helps.stdout and "--api-key " not in helps.stdout
    for flag in ("--api-key", "--key", "--token"):
        refused = cli("--url", served.url, flag, served.key, one, key=None)
        assert refused.returncode == 2 and "unrecognized arguments" in refused.stderr


def test_usage_and_auth_errors_exit_2(served: Server, photos: Path) -> None:
    one = str(photos / "album" / "even" / "d0.png")
    no_key = cli("--url", served.url, one, key=None)
    assert no_key.returncode == 2 and "unauthorized" in no_key.stderr
    wrong = cli("--url", served.url, one, key="iiq_" + "0" * 16 + "_" + "0" * 48)
    assert wrong.returncode == 2 and "unauthorized" in wrong.stderr
    missing = cli("--url", served.url, str(photos / "nowhere" / "*.png"), key=served.key)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    bad_model = cli("--url", served.url, one, "--model", "nope", key=served.key)
    assert bad_model.returncode == 2 and "model_not_found" in bad_model.stderr
