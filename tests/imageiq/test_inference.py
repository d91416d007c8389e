import asyncio
from pathlib import Path

import pytest
import torch

from imageiq.architectures import build_model
from imageiq.errors import ConfigurationError
from imageiq.inference import Classifier, InferenceOptions, resolve_precision
from imageiq.preprocessing import PreprocessConfig
from imageiq.registry import WEIGHTS_FILE, ModelCard, RegisteredModel, load_model, register_model
from imageiq.runner import InferenceThread, ModelRunner
from tests.imageiq.images_helpers import photo, predict_offline


@pytest.fixture(scope="module")
def attribute_model() -> RegisteredModel:
    torch.manual_seed(0)
    net = build_model(arch="resnet18", num_classes=3, heads={"shiny": 2})
    card = ModelCard(
        architecture="resnet18",
        labels=["a", "b", "c"],
        heads={"shiny": ["no", "yes"]},
        preprocessing=PreprocessConfig(resize_size=32, crop_size=32),
    )
    return register_model(net, card, name="inference-test")


def test_predictions_are_sorted_and_carry_attributes(attribute_model: RegisteredModel) -> None:
    classifier = Classifier.load(attribute_model.tag)
    predictions = predict_offline(classifier, [photo(seed=i) for i in range(4)], top_k=2)
    assert len(predictions) == 4
    for p in predictions:
        assert len(p.labels) == 2
        assert p.labels[0].score >= p.labels[1].score
        assert {s.label for s in p.labels} <= {"a", "b", "c"}
        assert p.attributes["shiny"].label in ("no", "yes")
        assert 0.5 <= p.attributes["shiny"].score <= 1.0


def test_top_k_is_clamped_to_the_label_count(attribute_model: RegisteredModel) -> None:
    classifier = Classifier.load(attribute_model.tag)
    (prediction,) = predict_offline(classifier, [photo()], top_k=100)
    assert len(prediction.labels) == 3
    assert sum(s.score for s in prediction.labels) == pytest.approx(1.0, abs=1e-5)


def test_runner_loads_warms_up_and_predicts_on_its_thread(attribute_model: RegisteredModel) -> None:
    thread = InferenceThread(threads=1)
    runner = ModelRunner(
        model=attribute_model,
        thread=thread,
        device="cpu",
        options=InferenceOptions(),
        warmup_batch_size=2,
    )
    try:
        assert runner.wait(timeout=60) == "ready"
        batch = torch.stack([runner.classifier.prepare(photo(seed=i)) for i in range(3)])
        got = asyncio.run(runner.predict_proba(batch))
        expected = Classifier.load(attribute_model.tag).predict_proba(batch)
        for head in ("label", "shiny"):
            assert torch.allclose(got[head], expected[head], atol=1e-6)
    finally:
        thread.close()


def test_runner_reports_a_model_that_cannot_load(attribute_model: RegisteredModel) -> None:
    broken = register_model(
        build_model(arch="resnet18", num_classes=3, heads={"shiny": 2}),
        attribute_model.card,
        name="inference-broken",
    )
    Path(broken.path, WEIGHTS_FILE).write_bytes(b"not a checkpoint")
    thread = InferenceThread(threads=1)
    runner = ModelRunner(
        model=broken, thread=thread, device="cpu", options=InferenceOptions(), warmup_batch_size=1
    )
    try:
        assert runner.wait(timeout=60) == "failed"
        assert not runner.ready
        assert runner.error
    finally:
        thread.close()


def test_bf16_channels_last_agrees_with_fp32(digits_model: RegisteredModel, digits_dir) -> None:
    """The service's fast path (where the CPU runs bf16 natively) against the fp32 reference
    on real digits: the same top-1 wherever the two best labels are not a near-tie (and on
    at least 99% overall), scores within 0.05."""
    from training.data import scan_image_folder

    fp32 = Classifier.load(digits_model.tag)
    fast = Classifier.load(
        digits_model.tag, options=InferenceOptions(precision="bf16", channels_last=True)
    )
    index = scan_image_folder(digits_dir)
    paths = index.paths[::3]
    batch = torch.stack(
        [fp32.prepare(fp32.decode(p.read_bytes(), max_pixels=10**6).image) for p in paths]
    )
    reference, got = fp32.predict_proba(batch)["label"], fast.predict_proba(batch)["label"]
    same = reference.argmax(1) == got.argmax(1)
    assert same.float().mean().item() >= 0.99
    top2 = reference.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.05  # not a near-tie between two labels
    assert same[clear].all()
    assert (reference - got).abs().max().item() < 0.05


def test_auto_precision_follows_the_hardware() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32"
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    with pytest.raises(ConfigurationError, match="fp16"):
        Classifier(
            *load_model("inference-test:latest"),
            cpu,
            InferenceOptions(precision="fp16"),
        )
