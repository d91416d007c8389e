"""Registry of torchvision architectures, rebuilt as a shared backbone plus named heads.

Every ImageIQ model is an :class:`ImageIQNet`: the torchvision network with its final linear
layer replaced by ``Identity`` (the backbone), a main ``label`` head for the N classes, and an
optional head per attribute (e.g. ``shiny: [no, yes]``). ``forward`` returns logits per head.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torchvision import models
from torchvision.models import WeightsEnum

from imageiq.errors import (
    ConfigurationError,
    UnknownArchitecture,
    WeightsFileMismatch,
    WeightsUnavailable,
)

MAIN_HEAD = "label"
HEAD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")

WeightsSource = Literal["none", "imagenet", "file"]


class BaselineCNN(nn.Module):
    """A small CNN trained from scratch: the floor every transfer-learned model must beat.

    Three blocks of two 3x3 conv + BatchNorm + ReLU (32, 64, 128 channels) with max-pooling,
    global average pooling and a linear layer (replaced by the heads like any backbone's).
    """

    def __init__(self, *, weights: None = None, num_classes: int = 1000) -> None:
        super().__init__()
        if weights is not None:
            raise ConfigurationError("baseline_cnn has no pretrained weights.")
        layers: list[nn.Module] = []
        channels = 3
        for width in (32, 64, 128):
            for _ in range(2):
                layers += [
                    nn.Conv2d(channels, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                channels = width
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@dataclass(frozen=True)
class ArchSpec:
    builder: Callable[..., nn.Module]
    imagenet_weights: WeightsEnum | None
    # Dotted path of the final nn.Linear that the heads replace.
    final_layer: str
    family: str


ARCHITECTURES: dict[str, ArchSpec] = {
    "resnet18": ArchSpec(models.resnet18, models.ResNet18_Weights.DEFAULT, "fc", "resnet"),
    "resnet50": ArchSpec(models.resnet50, models.ResNet50_Weights.DEFAULT, "fc", "resnet"),
    "efficientnet_b0": ArchSpec(
        models.efficientnet_b0,
        models.EfficientNet_B0_Weights.DEFAULT,
        "classifier.1",
        "efficientnet",
    ),
    "mobilenet_v3_small": ArchSpec(
        models.mobilenet_v3_small,
        models.MobileNet_V3_Small_Weights.DEFAULT,
        "classifier.3",
        "mobilenet",
    ),
    "baseline_cnn": ArchSpec(BaselineCNN, None, "fc", "baseline"),
}


def get_spec(arch: str) -> ArchSpec:
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        valid = ", ".join(sorted(ARCHITECTURES))
        raise UnknownArchitecture(
            f"Invalid architecture {arch!r}. Only {valid} are supported."
        ) from None


class ImageIQNet(nn.Module):
    """A backbone that yields pooled features and one linear head per output."""

    def __init__(self, *, backbone: nn.Module, feature_dim: int, heads: Mapping[str, int]) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, n) for name, n in heads.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        return {name: head(features) for name, head in self.heads.items()}


def build_model(
    *,
    arch: str,
    num_classes: int,
    heads: Mapping[str, int] | None = None,
    weights: WeightsSource = "none",
    weights_file: str | Path | None = None,
) -> ImageIQNet:
    """Build ``arch`` with a ``label`` head of ``num_classes`` plus the attribute ``heads``.

    ``weights``: ``none`` (random init), ``imagenet`` (torchvision's weights API; downloads
    unless cached) or ``file`` (a local state dict at ``weights_file``).
    """
    spec = get_spec(arch)
    all_heads = _validate_heads(num_classes, heads or {})
    if weights == "imagenet":
        net = _build_imagenet(arch, spec)
    elif weights == "file":
        if weights_file is None:
            raise ConfigurationError("weights='file' needs a weights_file path.")
        net = spec.builder(weights=None)
    elif weights == "none":
        net = spec.builder(weights=None)
    else:
        raise ConfigurationError(
            f"Invalid weights {weights!r}. Only none, imagenet and file are supported."
        )
    feature_dim = _detach_final_layer(net, spec.final_layer)
    if weights == "file":
        assert weights_file is not None
        load_backbone_weights(net, Path(weights_file), arch=arch, final_layer=spec.final_layer)
    return ImageIQNet(backbone=net, feature_dim=feature_dim, heads=all_heads)


def _validate_heads(num_classes: int, heads: Mapping[str, int]) -> dict[str, int]:
    if num_classes < 2:
        raise ConfigurationError(f"A classifier needs at least 2 classes, got {num_classes}.")
    out = {MAIN_HEAD: num_classes}
    for name, n in heads.items():
        if name == MAIN_HEAD or not HEAD_NAME.match(name):
            raise ConfigurationError(
                f"Invalid head name {name!r}: use lowercase letters, digits and '_' "
                f"(at most 32), and not {MAIN_HEAD!r}."
            )
        if n < 2:
            raise ConfigurationError(f"Head {name!r} needs at least 2 values, got {n}.")
        out[name] = n
    return out


def _build_imagenet(arch: str, spec: ArchSpec) -> nn.Module:
    w = spec.imagenet_weights
    if w is None:
        raise ConfigurationError(f"{arch} has no pretrained weights; train it with --weights none.")
    try:
        return spec.builder(weights=w)
    except (OSError, RuntimeError, ValueError) as e:
        # URLError is an OSError; a truncated or hash-mismatched download is a RuntimeError.
        raise WeightsUnavailable(
            f"Could not load ImageNet weights {w} for {arch} from {w.url}: {e}. "
            "Download that file where you have internet and pass it with "
            "--weights-file PATH (a state dict), or train with --weights none."
        ) from e


def _detach_final_layer(net: nn.Module, path: str) -> int:
    """Replace the final Linear at ``path`` with Identity; return its input width."""
    final = net.get_submodule(path)
    if not isinstance(final, nn.Linear):
        raise TypeError(f"{path} is {type(final).__name__}, expected Linear")
    parent_path, _, name = path.rpartition(".")
    # Sequential children are registered under "0", "1", ...: setattr replaces them too.
    setattr(net.get_submodule(parent_path), name, nn.Identity())
    return final.in_features


def _unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    # torchvision's reference scripts save {"model": ..., "optimizer": ...}; Lightning and
    # others use {"state_dict": ...}.
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsFileMismatch("The weights file does not hold a state dict of tensors.")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    if any(k.startswith("backbone.") for k in state):  # an ImageIQNet state dict
        state = {
            k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")
        }
    return state


def load_backbone_weights(net: nn.Module, path: Path, *, arch: str, final_layer: str) -> None:
    """Load a local state dict into a backbone whose final layer is already detached.

    Accepts torchvision checkpoints (the file ``--weights imagenet`` would download) and
    ImageIQ model weights; the old classifier is dropped, every backbone tensor must match.
    """
    if not path.is_file():
        raise WeightsFileMismatch(f"Weights file {path} does not exist.")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a non-checkpoint file
        raise WeightsFileMismatch(f"Could not read weights file {path}: {e}") from e
    state = {
        k: v for k, v in _unwrap_state_dict(raw).items() if not k.startswith(final_layer + ".")
    }
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        k for k in set(state) & set(expected) if state[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong_shape:
        raise WeightsFileMismatch(
            f"Weights file {path} does not match architecture {arch}: "
            f"{len(missing)} missing, {len(unexpected)} unexpected and {len(wrong_shape)} "
            f"mis-shaped tensors (first: {(missing + unexpected + wrong_shape)[:3]})."
        )
    net.load_state_dict(state)
