"""The eval transform, defined once and saved with every model.

A :class:`PreprocessConfig` is stored in the model's metadata; training evaluation, offline
prediction and the server all rebuild :class:`EvalTransform` from it. The transform is split
in two so the server can batch the second half: ``to_uint8`` (colour, resize, crop; one image)
and ``normalize`` (scale and standardise; a whole batch). ``__call__`` is the two composed.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torchvision.models import WeightsEnum
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from imageiq.errors import UnsupportedImageFormat
from imageiq.images import DecodedImage, pixels_to_decode, read_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Interpolation = Literal["nearest", "bilinear", "bicubic"]


class PreprocessConfig(BaseModel):
    """Parameters of the eval transform (the way torchvision's weights carry theirs)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    resize_size: int = Field(ge=1, le=8192, description="Shorter side after resizing.")
    crop_size: int = Field(ge=1, le=8192, description="Side of the centre crop fed to the model.")
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: Interpolation = "bilinear"
    # Transparent pixels are composited on this colour.
    background: tuple[int, int, int] = (255, 255, 255)
    # The longer side is capped at resize_size * max_aspect_ratio (then the crop pads), so an
    # extreme panorama cannot blow up memory.
    max_aspect_ratio: float = Field(16.0, ge=1.0)

    @model_validator(mode="after")
    def _check(self) -> PreprocessConfig:
        if self.crop_size > self.resize_size:
            raise ValueError(f"crop_size {self.crop_size} > resize_size {self.resize_size}")
        if min(self.std) <= 0:
            raise ValueError("std must be positive")
        return self

    @classmethod
    def for_weights(
        cls, weights: WeightsEnum, *, crop_size: int, resize_size: int | None = None
    ) -> PreprocessConfig:
        """torchvision's own eval preset for ``weights``, scaled to ``crop_size``."""
        preset = weights.transforms()
        if resize_size is None:
            ratio = preset.resize_size[0] / preset.crop_size[0]
            resize_size = max(crop_size, round(crop_size * ratio))
        return cls(
            resize_size=resize_size,
            crop_size=crop_size,
            mean=tuple(preset.mean),
            std=tuple(preset.std),
            interpolation=preset.interpolation.value,
        )


class EvalTransform:
    """PIL image -> normalised float tensor [3, crop, crop], per :class:`PreprocessConfig`."""

    def __init__(self, config: PreprocessConfig) -> None:
        self.config = config
        self._interpolation = InterpolationMode(config.interpolation)
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._array_stats: tuple[np.ndarray, np.ndarray] | None = None

    def decode(self, data: bytes, *, max_pixels: int, draft: bool = True) -> DecodedImage:
        """Untrusted bytes -> image, as the server decodes an upload and training reads its
        held-out images: with ``draft``, a large JPEG is decoded at the smallest reduced
        scale that still covers ``resize_size`` (Pillow's draft mode)."""
        draft_size = self.config.resize_size if draft else None
        return read_image(data, max_pixels=max_pixels, draft_size=draft_size)

    def pixels_to_decode(self, data: bytes, *, draft: bool = True) -> int:
        """The pixels :meth:`decode` will hold, from the header alone (0 if unreadable)."""
        return pixels_to_decode(data, draft_size=self.config.resize_size if draft else None)

    def to_uint8(self, image: Image.Image) -> torch.Tensor:
        """One image -> uint8 tensor [3, crop, crop] (colour, resize, centre crop)."""
        rgb = to_rgb(image, self.config.background)
        resized = F.resize(
            rgb,
            list(self.resized_size(*rgb.size)),
            interpolation=self._interpolation,
            antialias=True,
        )
        cropped = np.asarray(F.center_crop(resized, [self.config.crop_size]), dtype=np.uint8)
        # HWC -> CHW in numpy: a torch copy here would start an OpenMP team on the request
        # thread, whose spinning workers slow the inference thread's (measured: ~35%).
        return torch.from_numpy(np.ascontiguousarray(cropped.transpose(2, 0, 1)))

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) after resizing: shorter side to ``resize_size`` (as torchvision's
        Resize), longer side capped by ``max_aspect_ratio``, neither below 1 pixel."""
        short, long = min(width, height), max(width, height)
        new_short, new_long = self.config.resize_size, int(self.config.resize_size * long / short)
        cap = math.ceil(self.config.resize_size * self.config.max_aspect_ratio)
        if new_long > cap:
            new_short, new_long = max(1, int(cap * new_short / new_long)), cap
        return (new_short, new_long) if height <= width else (new_long, new_short)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 batch [N, 3, H, W] (on any device) -> standardised float32."""
        mean, std = self._device_stats(batch.device)
        return (batch.to(torch.float32) / 255.0 - mean) / std

    def normalize_array(self, batch: np.ndarray) -> np.ndarray:
        """``normalize`` in NumPy, on the calling thread alone: for ONNX Runtime, whose
        caller must not wake torch's OpenMP team (its threads spin after each parallel
        region, on the cores ORT's own threads need)."""
        if self._array_stats is None:
            mean = np.asarray(self.config.mean, dtype=np.float32).reshape(1, 3, 1, 1)
            std = np.asarray(self.config.std, dtype=np.float32).reshape(1, 3, 1, 1)
            self._array_stats = (1 / (255 * std), -mean / std)
        scale, shift = self._array_stats
        out = np.multiply(batch, scale, dtype=np.float32)
        out += shift
        return out

    def denormalize_array(self, batch: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`normalize`: standardised float [N, 3, H, W] -> the uint8
        pixels it came from, each rounded to the nearest grey level (a float input moves by
        at most half a level). ``ValueError`` when a value is not a pixel standardised with
        this transform's mean and std (outside 0..255 by more than half a level)."""
        mean = np.asarray(self.config.mean, dtype=np.float64).reshape(1, 3, 1, 1)
        std = np.asarray(self.config.std, dtype=np.float64).reshape(1, 3, 1, 1)
        pixels = (batch.astype(np.float64) * std + mean) * 255.0
        if not np.isfinite(pixels).all():
            raise ValueError("the tensor holds NaN or infinite values")
        low, high = float(pixels.min(initial=0.0)), float(pixels.max(initial=0.0))
        if low < -0.5 or high > 255.5:
            raise ValueError(
                f"its values are pixels {low:.1f}..{high:.1f} once the model's mean "
                f"{list(self.config.mean)} and std {list(self.config.std)} are undone, "
                "outside 0..255: standardise (x / 255 - mean) / std, as torchvision's "
                "transforms do"
            )
        return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.normalize(self.to_uint8(image).unsqueeze(0))[0]

    def _device_stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._stats:
            mean = torch.tensor(self.config.mean, dtype=torch.float32).view(1, 3, 1, 1)
            std = torch.tensor(self.config.std, dtype=torch.float32).view(1, 3, 1, 1)
            self._stats[device] = (mean.to(device), std.to(device))
        return self._stats[device]


def to_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; alpha composited on ``background``.

    Written to keep few full-size copies: at the pixel limit every copy is hundreds of MB.
    """
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        image = _to_8bit_gray(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    try:
        if has_alpha:
            rgba = image.convert("RGBA")
            canvas = Image.new("RGB", rgba.size, background)
            canvas.paste(rgba, mask=rgba)  # the alpha band is the mask
            return canvas
        return image if image.mode == "RGB" else image.convert("RGB")
    except ValueError as e:  # e.g. LAB, which Pillow cannot convert without a profile
        raise UnsupportedImageFormat(f"Unsupported colour mode {image.mode}: {e}") from e


def _to_8bit_gray(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float grayscale -> 8-bit, by the range the mode implies."""
    if image.mode == "F":  # floats: 0..1 when they fit, else 0..255; one working copy
        scaled = np.array(image, dtype=np.float32)
        np.nan_to_num(scaled, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        if scaled.size and float(scaled.max()) <= 1.0:
            scaled *= 255.0
        np.clip(scaled, 0, 255, out=scaled)
        return Image.fromarray(np.rint(scaled, out=scaled).astype(np.uint8))
    arr = np.asarray(image)
    if image.mode == "I" and (arr.size == 0 or int(arr.max()) <= 255):
        out = np.clip(arr, 0, 255).astype(np.uint8)
    else:  # 16-bit data: keep the high byte
        out = (np.clip(arr, 0, 65535).astype(np.uint16) >> 8).astype(np.uint8)
    return Image.fromarray(out)  # 2-D uint8 -> mode "L"
