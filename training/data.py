"""Labelled images on disk: ImageFolder scanning, fingerprints, stratified splits, datasets."""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset

from imageiq.errors import DatasetError
from imageiq.images import decode_image
from imageiq.preprocessing import EvalTransform, PreprocessConfig

if TYPE_CHECKING:
    from training.sources import LabelledData

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


@dataclass(frozen=True)
class ImageFolderIndex:
    """``root/<class>/<image>`` files; classes sorted by name, as torchvision's ImageFolder."""

    root: Path
    classes: list[str]
    paths: list[Path]
    targets: list[int]


def scan_image_folder(root: str | Path) -> ImageFolderIndex:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"Data directory {root} does not exist.")
    classes, paths, targets = [], [], []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            f for f in class_dir.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            continue
        classes.append(class_dir.name)
        paths.extend(files)
        targets.extend([len(classes) - 1] * len(files))
    if len(classes) < 2:
        raise DatasetError(
            f"{root} must hold one sub-directory of images per class, at least 2 classes; "
            f"found {len(classes)} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})."
        )
    return ImageFolderIndex(root, classes, paths, targets)


def fingerprint(index: ImageFolderIndex) -> str:
    """sha256 over the sorted (relative path, label, sha256 of the bytes) rows: the same
    fingerprint means the same files with the same contents under the same labels."""
    digest = hashlib.sha256()
    rows = sorted(
        f"{p.relative_to(index.root).as_posix()}\t{index.classes[t]}\t{_file_sha256(p)}\n"
        for p, t in zip(index.paths, index.targets, strict=True)
    )
    for row in rows:
        digest.update(row.encode())
    return "sha256:" + digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stratified_split(
    targets: Sequence[int], *, val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Train and held-out indices with every class in the same proportion in both."""
    counts = Counter(targets)
    n_classes = len(counts)
    n_val = round(len(targets) * val_fraction)
    if min(counts.values()) < 2 or n_val < n_classes or len(targets) - n_val < n_classes:
        raise DatasetError(
            f"Cannot hold out {val_fraction:.0%} per class: {len(targets)} images over "
            f"{n_classes} classes, the smallest has {min(counts.values())}. "
            "Every class needs at least 2 images, and the held-out split one per class."
        )
    train, val = train_test_split(
        list(range(len(targets))), test_size=n_val, stratify=list(targets), random_state=seed
    )
    return sorted(train), sorted(val)


class LabelledDataset(Dataset[tuple[torch.Tensor, dict[str, int]]]):
    """Images of a :class:`training.sources.LabelledData` (local files or S3 objects), decoded
    the way the server decodes an upload, with a target per head: ``label`` and each
    attribute (``-100`` where the value is unknown)."""

    def __init__(
        self,
        data: LabelledData,
        indices: Sequence[int],
        transform: Callable[..., torch.Tensor],
        *,
        max_pixels: int,
        decode: Callable[[bytes], Image.Image] | None = None,
    ) -> None:
        self.data = data
        self.indices = list(indices)
        self.transform = transform
        self.max_pixels = max_pixels
        # bytes -> image; by default the full image, as the augmentations want it.
        self.decode = decode or functools.partial(decode_image, max_pixels=max_pixels)
        targets = {"label": data.targets, **{h: data.head_targets(h) for h in data.heads}}
        self.targets = {head: [values[i] for i in self.indices] for head, values in targets.items()}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, int]]:
        j = self.indices[i]
        try:
            image = self.decode(self.data.read(j))
        except Exception as e:
            raise DatasetError(f"Could not read {self.data.samples[j].uri}: {e}") from e
        return self.transform(image), {head: t[i] for head, t in self.targets.items()}


def held_out_dataset(
    data: LabelledData,
    indices: Sequence[int],
    preprocessing: PreprocessConfig,
    *,
    max_pixels: int,
    normalized: bool = True,
) -> LabelledDataset:
    """Held-out images read exactly as the server reads an upload: the model's own eval
    transform decodes them (drafting large JPEGs, as serving does by default) and prepares
    them; ``normalized``: standardised float tensors, else the uint8 ones the server batches."""
    transform = EvalTransform(preprocessing)
    return LabelledDataset(
        data,
        indices,
        transform if normalized else transform.to_uint8,
        max_pixels=max_pixels,
        decode=functools.partial(_decoded, transform, max_pixels=max_pixels),
    )


def _decoded(transform: EvalTransform, data: bytes, *, max_pixels: int) -> Image.Image:
    return transform.decode(data, max_pixels=max_pixels).image
