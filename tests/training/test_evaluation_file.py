"""Training registers its held-out evaluation with the model (``evaluation.json``): the
confusion matrix, per-class scores, reliability bins and ECE of the registered weights, as
served (with the temperature), consistent with each other and with the card."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imageiq.registry import EVALUATION_FILE, RegisteredModel, get_model, read_model_file
from training.report import held_out_evaluation

pytestmark = pytest.mark.slow


def test_training_registers_a_consistent_evaluation(digits_model: RegisteredModel) -> None:
    card = get_model(digits_model.tag).card
    found = json.loads(read_model_file(digits_model, EVALUATION_FILE))
    held_out = card.training_config["n_val"]
    assert found["labels"] == card.labels and found["images"] == held_out
    matrix = np.asarray(found["confusion_matrix"])
    assert matrix.shape == (len(card.labels), len(card.labels))
    assert matrix.sum() == held_out  # rows true, columns predicted
    per_class = found["per_class"]
    assert [c["label"] for c in per_class] == card.labels
    assert [c["support"] for c in per_class] == matrix.sum(axis=1).tolist()
    for i, scores in enumerate(per_class):
        assert scores["recall"] == pytest.approx(matrix[i, i] / matrix[i].sum())
        predicted = matrix[:, i].sum()
        assert scores["precision"] == pytest.approx(matrix[i, i] / predicted if predicted else 0)
    # The registered weights' top-1 (the temperature never changes the ranking).
    assert found["top1"] == pytest.approx(np.trace(matrix) / held_out)
    assert found["top1"] == pytest.approx(card.metrics["val_top1"], abs=1e-9)
    assert found["temperature"] == card.temperature["label"]
    reliability = found["reliability"]
    bins = reliability["bins"]
    assert [(b["lower"], b["upper"]) for b in bins] == [(i / 10, (i + 1) / 10) for i in range(10)]
    assert sum(b["count"] for b in bins) == held_out
    assert sum(b["count"] * (b["accuracy"] or 0) for b in bins) == pytest.approx(np.trace(matrix))
    for b in bins:
        if b["count"]:
            assert b["lower"] <= b["confidence"] <= b["upper"]
        else:
            assert b["confidence"] is None and b["accuracy"] is None
    assert 0.0 <= reliability["ece"] <= 1.0


def test_evaluation_of_known_predictions() -> None:
    """Four images of two classes, scored by hand: one wrong, the rest right."""
    targets = np.array([0, 0, 1, 1])
    probs = np.array([[0.95, 0.05], [0.35, 0.65], [0.25, 0.75], [0.05, 0.95]])
    found = held_out_evaluation(["a", "b"], targets, probs, temperature=1.5)
    assert found["confusion_matrix"] == [[1, 1], [0, 2]]
    assert found["per_class"][0] == {
        "label": "a",
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(2 / 3),
        "support": 2,
    }
    assert found["per_class"][1]["precision"] == pytest.approx(2 / 3)
    counts = [b["count"] for b in found["reliability"]["bins"]]
    assert counts == [0, 0, 0, 0, 0, 0, 1, 1, 0, 2]
    top = found["reliability"]["bins"][9]
    assert top["confidence"] == pytest.approx(0.95) and top["accuracy"] == 1.0
    assert found["reliability"]["bins"][6]["accuracy"] == 0.0
    # |0.65 - 0| + |0.75 - 1| + 2 |0.95 - 1|, over 4
    assert found["reliability"]["ece"] == pytest.approx((0.65 + 0.25 + 0.1) / 4, abs=1e-6)
    assert found["top1"] == 0.75 and found["temperature"] == 1.5
