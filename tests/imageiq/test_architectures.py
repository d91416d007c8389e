import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torchvision import models

from imageiq.architectures import ARCHITECTURES, ImageIQNet, build_model, get_spec
from imageiq.errors import (
    ConfigurationError,
    UnknownArchitecture,
    WeightsFileMismatch,
    WeightsUnavailable,
)


@pytest.mark.parametrize("arch", ["resnet50", "efficientnet_b0", "resnet18", "mobilenet_v3_small"])
def test_builds_every_architecture_with_heads(arch: str) -> None:
    net = build_model(arch=arch, num_classes=7, heads={"shiny": 2, "shadow": 3})
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "label": (2, 7),
        "shiny": (2, 2),
        "shadow": (2, 3),
    }


def test_unknown_architecture_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownArchitecture) as e:
        build_model(arch="vgg16", num_classes=3)
    for name in ARCHITECTURES:
        assert name in str(e.value)


@pytest.mark.parametrize("heads", [{"label": 2}, {"Bad Name": 2}, {"ok": 1}])
def test_bad_heads_are_refused(heads: dict[str, int]) -> None:
    with pytest.raises(ConfigurationError):
        build_model(arch="resnet18", num_classes=3, heads=heads)


def _backbone_equal(net: ImageIQNet, reference: torch.nn.Module, skip: str) -> bool:
    ref = {k: v for k, v in reference.state_dict().items() if not k.startswith(skip + ".")}
    got = net.backbone.state_dict()
    return set(ref) == set(got) and all(torch.equal(ref[k], got[k]) for k in ref)


def test_weights_file_torchvision_checkpoint(tmp_path: Path) -> None:
    reference = models.resnet18(weights=None)  # a 1000-class torchvision state dict
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    net = build_model(arch="resnet18", num_classes=4, weights="file", weights_file=path)
    assert _backbone_equal(net, reference, "fc")
    assert net.heads["label"].out_features == 4


def test_weights_file_wrapped_and_imageiq_formats(tmp_path: Path) -> None:
    reference = models.mobilenet_v3_small(weights=None)
    wrapped = tmp_path / "ref.pth"  # torchvision reference scripts' checkpoint layout
    torch.save({"model": reference.state_dict(), "epoch": 3}, wrapped)
    net = build_model(
        arch="mobilenet_v3_small", num_classes=3, weights="file", weights_file=wrapped
    )
    assert _backbone_equal(net, reference, "classifier.3")

    own = tmp_path / "own.pt"  # an ImageIQ model's weights, other classes: backbone reused
    torch.save(net.state_dict(), own)
    again = build_model(arch="mobilenet_v3_small", num_classes=9, weights="file", weights_file=own)
    assert _backbone_equal(again, reference, "classifier.3")


def test_weights_file_of_another_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r50.pth"
    torch.save(models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(WeightsFileMismatch, match="does not match architecture resnet18"):
        build_model(arch="resnet18", num_classes=3, weights="file", weights_file=path)


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_unreadable_or_missing_weights_file(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "w.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(WeightsFileMismatch):
        build_model(arch="resnet18", num_classes=3, weights="file", weights_file=path)


@pytest.fixture
def hub_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty torch.hub cache for one test."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    yield tmp_path
    torch.hub.set_dir(previous)


def test_imagenet_weights_come_from_torchvision_weights_api(hub_dir: Path) -> None:
    """Seed torch.hub's cache with a checkpoint at the URL's file name: torchvision's real
    loading code reads it from there (no network), exactly as after a download."""
    reference = models.resnet18(weights=None)
    url = get_spec("resnet18").imagenet_weights.url
    (hub_dir / "checkpoints").mkdir()
    torch.save(reference.state_dict(), hub_dir / "checkpoints" / Path(url).name)
    net = build_model(arch="resnet18", num_classes=5, weights="imagenet")
    assert _backbone_equal(net, reference, "fc")


def test_imagenet_download_failure_names_weights_file(
    hub_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(*args: object, **kwargs: object) -> None:  # the fault: no network
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    with pytest.raises(WeightsUnavailable) as e:
        build_model(arch="efficientnet_b0", num_classes=3, weights="imagenet")
    assert "--weights-file" in str(e.value)
    assert get_spec("efficientnet_b0").imagenet_weights.url in str(e.value)
