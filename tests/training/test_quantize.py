"""`imageiq quantize` (training.quantize) and the int8 runtime that serves its versions."""

from pathlib import Path

import pytest
import torch

from imageiq.architectures import build_model
from imageiq.errors import ConfigurationError, DatasetError, ModelNotFound
from imageiq.images import decode_image
from imageiq.inference import Classifier
from imageiq.onnx_int8 import ONNX_FILE, RUNTIME, OnnxInt8Runtime, onnx_path
from imageiq.preprocessing import PreprocessConfig
from imageiq.registry import ModelCard, RegisteredModel, list_models, load_model, register_model
from training.data import scan_image_folder, stratified_split
from training.quantize import quantize_model


@pytest.fixture(scope="module")
def int8_model(digits_model: RegisteredModel, digits_dir: Path) -> RegisteredModel:
    # Its own name, so the shared store's newest imageiq-classifier stays the fp32 fixture.
    return quantize_model(tag=digits_model.tag, data=digits_dir, name="digits-int8")


def held_out_batch(model: RegisteredModel, data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's held-out split, uint8 through the serving path, and its targets."""
    config = model.card.training_config
    index = scan_image_folder(data)
    _, val = stratified_split(
        index.targets, val_fraction=config["val_fraction"], seed=config["seed"]
    )
    classifier = Classifier.load(model.tag)
    images = [
        classifier.prepare(decode_image(index.paths[i].read_bytes(), max_pixels=1_000_000))
        for i in val
    ]
    return torch.stack(images), torch.tensor([index.targets[i] for i in val])


@pytest.mark.slow
def test_int8_version_is_registered_with_its_card(
    digits_model: RegisteredModel, int8_model: RegisteredModel
) -> None:
    card, parent = int8_model.card, digits_model.card
    assert int8_model.name == "digits-int8"
    config = card.training_config
    assert OnnxInt8Runtime.is_int8(card) and not OnnxInt8Runtime.is_int8(parent)
    assert config["runtime"] == RUNTIME
    assert config["parent"] == digits_model.tag
    assert config["onnx_file"] == ONNX_FILE
    split = config["evaluation_split"]
    assert split["source"] == "training_config" and split["same_dataset"] is True
    assert split["images"] == parent.training_config["n_val"]
    assert config["calibration_images"] == min(256, split["images"])
    assert card.labels == parent.labels and card.preprocessing == parent.preprocessing
    # The rebuilt split is the one training scored: fp32 top-1 is the card's, within an image.
    assert card.metrics["fp32_top1"] == pytest.approx(
        parent.metrics["val_top1"], abs=1.01 / split["images"]
    )
    assert card.metrics["int8_top1"] >= card.metrics["fp32_top1"] - 0.01
    assert card.metrics["val_top1"] == parent.metrics["val_top1"]  # the parent's, kept

    path = onnx_path(int8_model)
    assert path is not None and path.name == ONNX_FILE and path.stat().st_size > 0
    assert onnx_path(digits_model) is None
    # weights.pt is still the fp32 state dict: PyTorch loads the new version as before.
    _, net = load_model(int8_model.tag)
    _, parent_net = load_model(digits_model.tag)
    for (k, v), (k2, v2) in zip(
        net.state_dict().items(), parent_net.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(v, v2)


@pytest.mark.slow
def test_runtime_agrees_with_pytorch_on_the_held_out_split(
    digits_model: RegisteredModel, int8_model: RegisteredModel, digits_dir: Path
) -> None:
    images, targets = held_out_batch(digits_model, digits_dir)
    classifier = Classifier.load(digits_model.tag)
    expected = classifier.predict_proba(images)["label"]
    runtime = OnnxInt8Runtime.load(int8_model, threads=2)
    got = runtime.predict_proba(classifier.transform.normalize(images))
    assert list(got) == ["label"]
    probs = got["label"]
    assert probs.dtype == torch.float32 and probs.device.type == "cpu"
    assert probs.shape == expected.shape
    assert torch.allclose(probs.sum(dim=1), torch.ones(len(probs)), atol=1e-5)
    agreement = (probs.argmax(dim=1) == expected.argmax(dim=1)).float().mean().item()
    assert agreement >= 0.97
    int8_top1 = int((probs.argmax(dim=1) == targets).sum()) / len(targets)
    assert int8_top1 == pytest.approx(int8_model.card.metrics["int8_top1"], abs=1e-9)


@pytest.mark.slow
def test_an_accuracy_drop_beyond_the_limit_is_refused(
    digits_model: RegisteredModel, digits_dir: Path
) -> None:
    with pytest.raises(ConfigurationError, match=r"int8 top-1 .* below fp32 top-1") as e:
        quantize_model(
            tag=digits_model.tag,
            data=digits_dir,
            max_calibration=16,
            max_accuracy_drop=-1.0,
            name="digits-int8-refused",
        )
    assert {"fp32_top1", "int8_top1"} <= set(e.value.details)
    assert list_models("digits-int8-refused") == []


def test_an_unknown_model_is_not_found(digits_dir: Path) -> None:
    with pytest.raises(ModelNotFound):
        quantize_model(tag="imageiq-classifier:doesnotexist", data=digits_dir)


@pytest.mark.slow
def test_data_with_other_classes_is_refused(
    digits_model: RegisteredModel, shapes_dir: Path
) -> None:
    with pytest.raises(DatasetError, match="not labels of the model"):
        quantize_model(tag=digits_model.tag, data=shapes_dir)


@pytest.mark.slow
def test_attribute_heads_and_a_card_without_a_split(shapes_dir: Path) -> None:
    torch.manual_seed(0)
    net = build_model(arch="resnet18", num_classes=3, heads={"shiny": 2})
    card = ModelCard(
        architecture="resnet18",
        labels=["bar", "disc", "square"],
        heads={"shiny": ["no", "yes"]},
        preprocessing=PreprocessConfig(resize_size=16, crop_size=16),
    )
    parent = register_model(net, card, name="int8-heads")
    # An untrained net has no accuracy worth gating on.
    model = quantize_model(
        tag=parent.tag, data=shapes_dir, max_calibration=8, max_accuracy_drop=1.0
    )
    assert model.name == parent.name and model.version != parent.version
    config = model.card.training_config
    assert config["calibration_images"] == 8
    assert config["evaluation_split"]["source"].startswith("default")
    assert config["evaluation_split"] | {"source": None} == {
        "seed": 0,
        "val_fraction": 0.2,
        "images": 14,
        "source": None,
        "same_dataset": False,
    }
    classifier = Classifier.load(parent.tag)
    images = torch.stack(
        [
            classifier.prepare(decode_image(p.read_bytes(), max_pixels=10_000))
            for p in sorted(shapes_dir.rglob("*.png"))[:6]
        ]
    )
    got = OnnxInt8Runtime.load(model, threads=1).predict_proba(
        classifier.transform.normalize(images)
    )
    expected = classifier.predict_proba(images)
    assert list(got) == ["label", "shiny"]
    for head in ("label", "shiny"):
        assert got[head].shape == expected[head].shape
        assert torch.allclose(got[head].sum(dim=1), torch.ones(6), atol=1e-5)


def test_a_plain_model_has_no_int8_runtime() -> None:
    net = build_model(arch="resnet18", num_classes=2)
    card = ModelCard(
        architecture="resnet18",
        labels=["a", "b"],
        preprocessing=PreprocessConfig(resize_size=16, crop_size=16),
    )
    model = register_model(net, card, name="int8-plain")
    assert onnx_path(model) is None
    with pytest.raises(ConfigurationError, match="not an onnx-int8 model"):
        OnnxInt8Runtime.load(model, threads=1)


@pytest.mark.slow
def test_quantize_command_prints_the_new_tag_and_both_scores(
    digits_model: RegisteredModel, digits_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from imageiq_cli.main import main

    code = main(
        [
            "quantize",
            "--model",
            digits_model.tag,
            "--data",
            str(digits_dir),
            "--max-calibration",
            "32",
            "--max-accuracy-drop",
            "1",
            "--name",
            "digits-int8-cli",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    (newest,) = list_models("digits-int8-cli")
    assert newest.tag in out and "fp32" in out and "int8" in out
    assert newest.card.training_config["calibration_images"] == 32


@pytest.mark.slow
def test_classifier_serves_an_int8_version_through_onnx_runtime(
    digits_model: RegisteredModel, int8_model: RegisteredModel, digits_dir: Path
) -> None:
    """Loading the int8 tag (what the service does) runs the int8 file, not weights.pt."""
    batch, targets = held_out_batch(int8_model, digits_dir)
    classifier = Classifier.load(int8_model.tag, device="auto")
    assert classifier.int8 is not None and classifier.device.type == "cpu"
    runtime = OnnxInt8Runtime.load(int8_model, threads=1)
    served = classifier.predict_proba(batch)["label"]
    direct = runtime.predict_proba(classifier.transform.normalize(batch))["label"]
    # the card's calibration temperature applies to the int8 version too
    direct = torch.softmax(torch.log(direct.clamp_min(1e-12)) / classifier.temperature("label"), 1)
    assert torch.allclose(served, direct, atol=1e-6)
    fp32 = Classifier.load(digits_model.tag).predict_proba(batch)["label"]
    assert not torch.allclose(served, fp32, atol=1e-6)  # really the quantized network
    accuracy = (served.argmax(1) == targets).float().mean().item()
    assert accuracy == pytest.approx(int8_model.card.metrics["int8_top1"], abs=1e-6)
