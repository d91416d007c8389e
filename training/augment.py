"""The training transform: torchvision v2 augmentations in front of the model's own
preprocessing.

Only training sees these. Evaluation and serving use the eval transform stored with the
model (:class:`imageiq.preprocessing.EvalTransform`); the training transform ends with the
same colour handling, interpolation and normalisation, so the two differ only by the random
geometry and colour changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from imageiq.preprocessing import EvalTransform, PreprocessConfig, to_rgb


@dataclass(frozen=True)
class Augmentation:
    """``crop_scale`` 1.0, no flip and no jitter: no augmentation at all."""

    crop_scale: float = 0.35  # smallest area fraction of RandomResizedCrop
    hflip: bool = True
    color_jitter: float = 0.2  # brightness, contrast and saturation strength

    @property
    def enabled(self) -> bool:
        return self.crop_scale < 1.0 or self.hflip or self.color_jitter > 0


class TrainTransform:
    """PIL image -> normalised float tensor [3, crop, crop], randomly augmented."""

    def __init__(self, config: PreprocessConfig, augmentation: Augmentation) -> None:
        self.config = config
        self.eval = EvalTransform(config)
        steps: list[T.Transform] = []
        if augmentation.crop_scale < 1.0:
            steps.append(
                T.RandomResizedCrop(
                    config.crop_size,
                    scale=(augmentation.crop_scale, 1.0),
                    interpolation=InterpolationMode(config.interpolation),
                    antialias=True,
                )
            )
        if augmentation.hflip:
            steps.append(T.RandomHorizontalFlip())
        if augmentation.color_jitter > 0:
            s = augmentation.color_jitter
            steps.append(T.ColorJitter(brightness=s, contrast=s, saturation=s))
        self.random = T.Compose(steps) if steps else None
        self.crops_itself = augmentation.crop_scale < 1.0

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if self.random is None:
            return self.eval(image)
        rgb = to_rgb(image, self.config.background)
        if not self.crops_itself:  # the eval geometry, then colour changes only
            rgb = T.functional.to_pil_image(self.eval.to_uint8(rgb))
        augmented = self.random(rgb)
        tensor = T.functional.pil_to_tensor(augmented)
        return self.eval.normalize(tensor.unsqueeze(0))[0]
