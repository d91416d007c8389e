"""Scoring a model on labelled images, with scikit-learn's metrics."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, log_loss, top_k_accuracy_score
from torch import nn

from imageiq.architectures import MAIN_HEAD
from imageiq.errors import DatasetError
from imageiq.inference import Classifier
from training.data import ImageFolderIndex


@torch.inference_mode()
def predict_loader(
    net: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """(targets [N], main-head probabilities [N, C]) over normalised-tensor batches."""
    net.eval()
    targets, probs = [], []
    for x, y in batches:
        logits = net(x.to(device))[MAIN_HEAD]
        probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        targets.append(np.asarray(y))
    return np.concatenate(targets), np.concatenate(probs)


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


def evaluate_folder(
    classifier: Classifier, index: ImageFolderIndex, *, batch_size: int, max_pixels: int
) -> tuple[np.ndarray, np.ndarray]:
    """(targets, probabilities) of a registered model on a labelled folder, through the
    serving code path (decode, ``prepare``, batched ``predict_proba``)."""
    unknown = sorted(set(index.classes) - set(classifier.labels))
    if unknown:
        raise DatasetError(
            f"Classes {unknown} are not labels of {classifier.model.tag} "
            f"({', '.join(classifier.labels)})."
        )
    label_of = {name: i for i, name in enumerate(classifier.labels)}
    targets = np.asarray([label_of[index.classes[t]] for t in index.targets])
    probs = [
        classifier.predict_proba(
            torch.stack(
                [
                    classifier.prepare(
                        classifier.decode(p.read_bytes(), max_pixels=max_pixels).image
                    )
                    for p in chunk
                ]
            )
        )[MAIN_HEAD].numpy()
        for chunk in _chunks(index.paths, batch_size)
    ]
    return targets, np.concatenate(probs)


def _chunks(items: list[Path], size: int) -> Iterable[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
