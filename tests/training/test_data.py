import shutil
from collections import Counter
from pathlib import Path

import pytest

from imageiq.errors import DatasetError
from training.data import fingerprint, scan_image_folder, stratified_split


def test_scan_finds_classes_in_name_order(shapes_dir: Path) -> None:
    index = scan_image_folder(shapes_dir)
    assert index.classes == ["bar", "disc", "square"]
    assert len(index.paths) == 72 and Counter(index.targets) == {0: 24, 1: 24, 2: 24}


def test_scan_needs_two_classes(tmp_path: Path, shapes_dir: Path) -> None:
    shutil.copytree(shapes_dir / "disc", tmp_path / "disc")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="at least 2 classes"):
        scan_image_folder(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        scan_image_folder(tmp_path / "nope")


def test_fingerprint_tracks_files_and_labels(tmp_path: Path, shapes_dir: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(shapes_dir, copy)
    assert fingerprint(scan_image_folder(copy)) == fingerprint(scan_image_folder(shapes_dir))
    moved = copy / "disc" / "disc_00.png"
    moved.rename(copy / "square" / "disc_00.png")  # same bytes, another label
    assert fingerprint(scan_image_folder(copy)) != fingerprint(scan_image_folder(shapes_dir))


def test_fingerprint_tracks_contents(tmp_path: Path, shapes_dir: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(shapes_dir, copy)
    a, b = copy / "disc" / "disc_00.png", copy / "disc" / "disc_01.png"
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)  # same names, same labels, swapped contents
    b.write_bytes(data_a)
    assert fingerprint(scan_image_folder(copy)) != fingerprint(scan_image_folder(shapes_dir))


def test_split_is_stratified_and_reproducible() -> None:
    targets = [0] * 50 + [1] * 30 + [2] * 20
    train, val = stratified_split(targets, val_fraction=0.2, seed=0)
    assert not set(train) & set(val) and len(train) + len(val) == 100
    assert Counter(targets[i] for i in val) == {0: 10, 1: 6, 2: 4}
    assert (train, val) == stratified_split(targets, val_fraction=0.2, seed=0)
    assert val != stratified_split(targets, val_fraction=0.2, seed=1)[1]


def test_split_refuses_classes_too_small_to_hold_out() -> None:
    with pytest.raises(DatasetError, match="at least 2 images"):
        stratified_split([0] * 10 + [1], val_fraction=0.2, seed=0)
