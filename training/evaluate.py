"""Scoring a model on labelled images, with scikit-learn's metrics."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, log_loss, top_k_accuracy_score


def classification_metrics(targets: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """top-1, top-5 (with more than 5 classes), macro-F1 and log-loss."""
    n_classes = probs.shape[1]
    labels = np.arange(n_classes)
    predicted = probs.argmax(axis=1)
    probs64 = probs.astype(np.float64)
    out = {
        "top1": float(accuracy_score(targets, predicted)),
        "macro_f1": float(
            f1_score(targets, predicted, average="macro", labels=labels, zero_division=0)
        ),
        # float32 softmax rows sum to 1 only within rounding; renormalise in float64.
        "log_loss": float(
            log_loss(targets, probs64 / probs64.sum(axis=1, keepdims=True), labels=labels)
        ),
    }
    if n_classes > 5:
        out["top5"] = float(top_k_accuracy_score(targets, probs, k=5, labels=labels))
    return out
