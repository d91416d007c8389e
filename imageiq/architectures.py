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


# Grad-CAM (imageiq.explain) explains the output of a convolutional block: the deepest one
# whose output keeps at least this many cells a side at the model's input size. At the usual
# sizes (112 px and up) that is the last block, the one feeding the global pool (a ResNet's
# layer4: 7x7 at 224 px); a model trained on tiny inputs (16 px: layer4 is 1x1, one number,
# the same map for every image) gets an earlier, finer block.
MIN_EXPLAIN_CELLS = 4


def _resnet_blocks(backbone: nn.Module) -> list[str]:
    return ["layer1", "layer2", "layer3", "layer4"]


def _feature_blocks(backbone: nn.Module) -> list[str]:
    """EfficientNet and MobileNet: every child of ``features`` is a block."""
    return [f"features.{i}" for i, _ in enumerate(backbone.get_submodule("features").children())]


def _baseline_blocks(backbone: nn.Module) -> list[str]:
    """BaselineCNN's blocks end at their max-pooling (the layers before it are single convs,
    BatchNorms and in-place ReLUs, whose outputs the next layer overwrites)."""
    features = backbone.get_submodule("features").children()
    return [f"features.{i}" for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]


# Per family: the backbone's convolutional blocks, in order (paths inside the backbone).
CONV_BLOCKS: dict[str, Callable[[nn.Module], list[str]]] = {
    "resnet": _resnet_blocks,
    "efficientnet": _feature_blocks,
    "mobilenet": _feature_blocks,
    "baseline": _baseline_blocks,
}


def explain_layer(net: ImageIQNet, *, arch: str, input_size: int) -> tuple[str, nn.Module]:
    """The block Grad-CAM explains in ``net`` (an ``arch``) at ``input_size`` pixels: its
    dotted path in ``net`` and the module (see :data:`MIN_EXPLAIN_CELLS`). One forward pass
    of zeros measures each block's output; the weights and the mode are left as they were."""
    spec = get_spec(arch)
    paths = CONV_BLOCKS[spec.family](net.backbone)
    sides: dict[str, int] = {}
    hooks = [
        net.backbone.get_submodule(path).register_forward_hook(
            lambda _m, _i, out, path=path: sides.__setitem__(path, min(out.shape[-2:]))
        )
        for path in paths
    ]
    training = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, 3, input_size, input_size))
    finally:
        net.train(training)
        for hook in hooks:
            hook.remove()
    fine = [p for p in paths if sides[p] >= MIN_EXPLAIN_CELLS]
    # None that fine (an input under 8 px): the finest block, the deepest of those.
    chosen = fine[-1] if fine else max(reversed(paths), key=lambda p: sides[p])
    return f"backbone.{chosen}", net.backbone.get_submodule(chosen)
