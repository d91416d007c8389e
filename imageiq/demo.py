"""The demo data set: scikit-learn's handwritten digits (1,797 real 8x8 scans, shipped inside
scikit-learn, so nothing is downloaded) written as an ImageFolder of PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

# The recipe `imageiq demo-model` trains: fast on 2 CPU cores, >= 97% held-out top-1.
DEMO_RECIPE = {
    "arch": "resnet18",
    "image_size": 32,
    "epochs": 10,
    "batch_size": 64,
    "lr": 2e-3,
    "seed": 0,
    # Digits are not mirror-symmetric and fill their 8x8 frame: no flips, no random crops.
    "crop_scale": 1.0,
    "hflip": False,
    "color_jitter": 0.0,
}


def write_digits(dest: str | Path) -> dict[str, int]:
    """Write ``dest/<digit>/digit_<index>.png`` (8-bit grayscale); returns images per class."""
    dest = Path(dest)
    digits = load_digits()
    # Pixel values are ink counts 0..16; spread them over 0..255.
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    counts: dict[str, int] = {}
    for i, (image, target) in enumerate(zip(pixels, digits.target, strict=True)):
        label = str(int(target))
        (dest / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(dest / label / f"digit_{i:04d}.png")
        counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items()))
