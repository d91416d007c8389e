from pathlib import Path

import pytest
from rich.console import Console

from imageiq.demo import DEMO_RECIPE
from imageiq.inference import Classifier
from imageiq.registry import get_model
from tests.conftest import train_args
from training.data import fingerprint, scan_image_folder
from training.train import main


def test_smoke_on_tiny_generated_data(shapes_dir: Path) -> None:
    console = Console(record=True, width=120)
    args = train_args(
        data=shapes_dir,
        arch="resnet18",
        image_size=32,
        epochs=6,
        batch_size=16,
        patience=0,
        model_name="smoke",
    )
    result = main(args, max_image_pixels=10**8, console=console)
    out = console.export_text()
    assert "held-out top-1 accuracy" in out and result.model.tag in out
    # 15 held-out images of 3 classes: chance is 1/3.
    assert result.metrics["val_top1"] >= 0.6

    card = get_model(result.model.tag).card
    assert card.architecture == "resnet18" and card.labels == ["bar", "disc", "square"]
    assert card.dataset_fingerprint == fingerprint(scan_image_folder(shapes_dir))
    assert card.preprocessing.crop_size == 32
    assert card.training_config["epochs"] == 6 and len(card.training_config["history"]) == 6
    assert card.metrics["val_top1"] == result.metrics["val_top1"]


def test_same_seed_same_metrics(shapes_dir: Path) -> None:
    def run() -> dict[str, float]:
        args = train_args(
            data=shapes_dir,
            arch="baseline_cnn",  # mobilenet_v3_small stays at chance in one epoch here
            image_size=32,
            epochs=2,
            batch_size=16,
            model_name="seeded",
        )
        metrics = main(args, max_image_pixels=10**8, console=Console(quiet=True)).metrics
        return {k: v for k, v in metrics.items() if k != "train_seconds"}

    assert run() == run()


def test_pretrained_backbone_keeps_its_weights_preset(digits_dir: Path, tmp_path: Path) -> None:
    """--weights-file (the imagenet checkpoint, fetched by hand): the eval transform is the
    weights' own preset (resize 256 / crop 224 for ResNet-18) scaled to --image-size. The
    stand-in checkpoint holds random weights, so the data must be learnable from scratch at
    the fine-tuning learning rate (the shapes stay at chance, which training refuses)."""
    import torch
    from torchvision import models

    checkpoint = tmp_path / "resnet18-f37072fd.pth"
    torch.save(models.resnet18(weights=None).state_dict(), checkpoint)
    args = train_args(
        data=digits_dir,
        arch="resnet18",
        image_size=32,
        epochs=2,
        batch_size=32,
        weights_file=str(checkpoint),
        model_name="pretrained",
    )
    card = get_model(main(args, max_image_pixels=10**8, console=Console(quiet=True)).model.tag).card
    preset = models.ResNet18_Weights.DEFAULT.transforms()
    assert card.preprocessing.crop_size == 32
    assert card.preprocessing.resize_size == round(32 * preset.resize_size[0] / preset.crop_size[0])
    assert card.preprocessing.mean == tuple(preset.mean)
    assert card.training_config["weights_file"] == str(checkpoint)


@pytest.mark.parametrize(
    "bad",
    [
        ["--epochs", "0"],
        ["--image-size", "0"],
        ["--batch-size", "1"],
        ["--val-fraction", "1"],
        ["--lr", "-1"],
        ["--workers", "-2"],
    ],
)
def test_bad_arguments_exit_2(bad: list[str], shapes_dir: Path) -> None:
    from imageiq_cli.main import main as cli_main

    with pytest.raises(SystemExit) as e:
        cli_main(["train", "--data", str(shapes_dir), *bad])
    assert e.value.code == 2


@pytest.mark.slow
def test_demo_recipe_reaches_97_percent(digits_dir: Path) -> None:
    """The model `make serve` trains on first start (about 40 s on 2 cores)."""
    args = train_args(data=digits_dir, model_name="demo-recipe", **DEMO_RECIPE)
    result = main(args, max_image_pixels=10**8, console=Console(quiet=True))
    assert result.metrics["val_top1"] >= 0.97
    classifier = Classifier.load(result.model.tag)
    assert classifier.labels == [str(d) for d in range(10)]
