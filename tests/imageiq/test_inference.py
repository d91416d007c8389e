import asyncio

import pytest
import torch

from imageiq.architectures import build_model
from imageiq.inference import Classifier
from imageiq.preprocessing import PreprocessConfig
from imageiq.registry import ModelCard, RegisteredModel, register_model
from imageiq.runner import ModelRunner
from tests.imageiq.images_helpers import photo


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
    predictions = classifier.predict_images([photo(seed=i) for i in range(4)], top_k=2)
    assert len(predictions) == 4
    for p in predictions:
        assert len(p.labels) == 2
        assert p.labels[0].score >= p.labels[1].score
        assert {s.label for s in p.labels} <= {"a", "b", "c"}
        assert p.attributes["shiny"].label in ("no", "yes")
        assert 0.5 <= p.attributes["shiny"].score <= 1.0


def test_top_k_is_clamped_to_the_label_count(attribute_model: RegisteredModel) -> None:
    classifier = Classifier.load(attribute_model.tag)
    (prediction,) = classifier.predict_images([photo()], top_k=100)
    assert len(prediction.labels) == 3
    assert sum(s.score for s in prediction.labels) == pytest.approx(1.0, abs=1e-5)


def test_runner_loads_warms_up_and_predicts_on_its_thread(attribute_model: RegisteredModel) -> None:
    runner = ModelRunner(tag=attribute_model.tag, device="cpu", threads=1, warmup_batch_size=2)
    try:
        assert runner.wait(timeout=60) == "ready"
        batch = torch.stack([runner.classifier.prepare(photo(seed=i)) for i in range(3)])
        got = asyncio.run(runner.predict_proba(batch))
        expected = Classifier.load(attribute_model.tag).predict_proba(batch)
        for head in ("label", "shiny"):
            assert torch.allclose(got[head], expected[head], atol=1e-6)
    finally:
        runner.close()


def test_runner_reports_a_model_that_cannot_load() -> None:
    runner = ModelRunner(
        tag="inference-test:doesnotexist", device="cpu", threads=1, warmup_batch_size=1
    )
    try:
        assert runner.wait(timeout=60) == "failed"
        assert not runner.ready
        assert "doesnotexist" in (runner.error or "")
    finally:
        runner.close()
