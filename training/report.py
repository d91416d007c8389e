"""The evaluation report of a registered model on labelled data, through the serving path
(decoding, preprocessing and the forward pass; the temperature applied in float64).

Per head: top-1 (and top-5 with more than 5 classes), macro-F1, log-loss, per-class
precision/recall/F1 and the confusion matrix (scikit-learn); for calibration the ECE
(torchmetrics) without and with the model's stored temperature, and the reliability
diagram. Written as ``report.json`` plus PNGs when given a directory.

:func:`held_out_evaluation` is the smaller summary training registers with every model
(``evaluation.json``), which ``GET /v1/models/{name}/versions/{version}`` answers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    classification_report,
    confusion_matrix,
    precision_recall_fscore_support,
)
from torchmetrics.functional.classification import multiclass_calibration_error

from imageiq.architectures import MAIN_HEAD
from imageiq.errors import ConfigurationError, DatasetError
from imageiq.inference import Classifier
from training.calibration import expected_calibration_error, reliability, temper
from training.evaluate import classification_metrics
from training.loop import IGNORE
from training.sources import LabelledData

# head -> (targets, served probabilities, probabilities without the temperature)
Arrays = dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
EVALUATION_FORMAT = 1
RELIABILITY_BINS = 10  # equal-width top-1 confidence bins of evaluation.json


def predict_data(
    classifier: Classifier,
    data: LabelledData,
    indices: Sequence[int],
    *,
    batch_size: int,
    max_pixels: int,
    progress: Callable[[int], None] | None = None,
    unknown: Literal["raise", "ignore"] = "raise",
) -> Arrays:
    """(targets in the model's label order, served probabilities) per head.

    A label or attribute value in ``data`` that the model does not know is a
    ``DatasetError``, unless ``unknown="ignore"``: then its images are still predicted but
    their target is ``IGNORE`` (a champion scored on classes collected after it was trained,
    :mod:`training.compare`)."""
    vocab = {MAIN_HEAD: classifier.labels, **classifier.heads}
    given = {MAIN_HEAD: data.classes, **data.heads}
    targets: dict[str, np.ndarray] = {}
    for head, values in vocab.items():
        if head not in given:
            continue
        unknown_values = sorted(set(given[head]) - set(values))
        if unknown_values and unknown == "raise":
            raise DatasetError(
                f"{head} values {unknown_values} in {data.source} are not known to "
                f"{classifier.model.tag} ({', '.join(values)})."
            )
        index = {v: i for i, v in enumerate(values)}
        stored = data.targets if head == MAIN_HEAD else data.head_targets(head)
        targets[head] = np.asarray(
            [
                index.get(given[head][stored[i]], IGNORE) if stored[i] != IGNORE else IGNORE
                for i in indices
            ]
        )
    probs: dict[str, list[np.ndarray]] = {head: [] for head in targets}
    raw: dict[str, list[np.ndarray]] = {head: [] for head in targets}
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        batch = torch.stack(
            [
                classifier.prepare(classifier.decode(data.read(i), max_pixels=max_pixels).image)
                for i in chunk
            ]
        )
        # One forward pass: the served (calibrated) scores are the raw ones at the card's
        # temperature, computed in float64 so a sharpening T < 1 does not saturate.
        uncalibrated = classifier.predict_proba(batch, calibrated=False)
        for head in probs:
            raw[head].append(uncalibrated[head].numpy())
            probs[head].append(temper(raw[head][-1], classifier.temperature(head)))
        if progress is not None:
            progress(len(chunk))
    return {
        head: (targets[head], np.concatenate(probs[head]), np.concatenate(raw[head]))
        for head in targets
    }


class Ensemble:
    """The average of several models' served probabilities, scored like one model. The
    members must predict the same labels and attribute values in the same order."""

    def __init__(self, members: Sequence[Classifier]) -> None:
        first = members[0]
        for other in members[1:]:
            if other.labels != first.labels or other.heads != first.heads:
                raise ConfigurationError(
                    f"{other.model.tag} and {first.model.tag} do not predict the same labels "
                    "and attributes: they cannot be averaged."
                )
        self.members = list(members)
        self.labels, self.heads = first.labels, first.heads
        self.name = "ensemble(" + ", ".join(m.model.tag for m in members) + ")"

    def temperature(self, head: str) -> float:
        return 1.0  # each member's own temperature is already in its probabilities


def predict_ensemble(
    ensemble: Ensemble,
    data: LabelledData,
    indices: Sequence[int],
    *,
    batch_size: int,
    max_pixels: int,
    progress: Callable[[int], None] | None = None,
) -> Arrays:
    runs = [
        predict_data(
            m, data, indices, batch_size=batch_size, max_pixels=max_pixels, progress=progress
        )
        for m in ensemble.members
    ]
    return {
        head: (
            targets,
            np.mean([run[head][1] for run in runs], axis=0),
            np.mean([run[head][2] for run in runs], axis=0),
        )
        for head, (targets, _, _) in runs[0].items()
    }


def build_report(
    scorer: Classifier | Ensemble, arrays: Arrays, *, out_dir: Path | None = None
) -> dict[str, Any]:
    name = scorer.name if isinstance(scorer, Ensemble) else scorer.model.tag
    report: dict[str, Any] = {"model": name, "heads": {}}
    vocab = {MAIN_HEAD: scorer.labels, **scorer.heads}
    for head, (targets, probs, uncalibrated) in arrays.items():
        known = targets != IGNORE
        t, p, raw = targets[known], probs[known], uncalibrated[known]
        labels = vocab[head]
        predicted = p.argmax(axis=1)
        temperature = scorer.temperature(head)
        section: dict[str, Any] = {
            "images": int(known.sum()),
            "metrics": classification_metrics(t, p),
            "per_class": classification_report(
                t,
                predicted,
                labels=list(range(len(labels))),
                target_names=labels,
                output_dict=True,
                zero_division=0,
            ),
            "confusion_matrix": {
                "labels": labels,
                "matrix": confusion_matrix(t, predicted, labels=list(range(len(labels)))).tolist(),
            },
            "calibration": {
                "temperature": temperature,
                "ece_uncalibrated": expected_calibration_error(raw, t),
                "ece": expected_calibration_error(p, t),
            },
        }
        report["heads"][head] = section
        if out_dir is not None:
            plot_confusion(section, out_dir / f"confusion_matrix_{head}.png")
            _plot_reliability(raw, p, t, temperature, out_dir / f"reliability_{head}.png")
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def held_out_evaluation(
    labels: Sequence[str], targets: np.ndarray, probs: np.ndarray, *, temperature: float = 1.0
) -> dict[str, Any]:
    """The main head's scores on the held-out split, as served (``probs`` with the
    temperature applied): the confusion matrix (rows true, columns predicted), per-class
    precision, recall, F1 and support (scikit-learn), and calibration: the ECE and the
    reliability diagram's 10 equal-width top-1 confidence bins, each with its count, mean
    confidence and accuracy (null when empty). The bins are scikit-learn's
    (``calibration_curve``: (lower, upper], 0 in the first); the ECE is torchmetrics'
    over the same 10 bins ([lower, upper), a score of exactly 1 on its own), so the two
    differ only by scores exactly on a bin edge."""
    known = targets != IGNORE
    t, p = targets[known], probs[known]
    classes = list(range(len(labels)))
    predicted = p.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        t, predicted, labels=classes, zero_division=0
    )
    confidence = p.max(axis=1)
    correct = (predicted == t).astype(int)
    edges = np.linspace(0.0, 1.0, RELIABILITY_BINS + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], confidence), minlength=RELIABILITY_BINS)
    accuracy, mean_confidence = (
        calibration_curve(correct, confidence, n_bins=RELIABILITY_BINS, strategy="uniform")
        if len(t)
        else (np.array([]), np.array([]))
    )
    filled = iter(zip(mean_confidence.tolist(), accuracy.tolist(), strict=True))
    bins = []
    for i, count in enumerate(counts.tolist()):
        mean, share = next(filled) if count else (None, None)
        bins.append(
            {
                "lower": round(float(edges[i]), 4),
                "upper": round(float(edges[i + 1]), 4),
                "count": int(count),
                "confidence": mean,
                "accuracy": share,
            }
        )
    ece = (
        float(
            multiclass_calibration_error(
                torch.as_tensor(p, dtype=torch.float32),
                torch.as_tensor(t, dtype=torch.long),
                num_classes=len(labels),
                n_bins=RELIABILITY_BINS,
                norm="l1",
            )
        )
        if len(t)
        else None
    )
    return {
        "format": EVALUATION_FORMAT,
        "head": MAIN_HEAD,
        "images": int(known.sum()),
        "temperature": temperature,
        "top1": float(correct.mean()) if len(t) else None,
        "labels": list(labels),
        "confusion_matrix": confusion_matrix(t, predicted, labels=classes).tolist(),
        "per_class": [
            {
                "label": label,
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        ],
        "reliability": {"ece": ece, "bins": bins},
    }


def plot_confusion(section: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    matrix = np.asarray(section["confusion_matrix"]["matrix"])
    labels = section["confusion_matrix"]["labels"]
    size = max(4.0, 0.5 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(matrix, display_labels=labels).plot(
        ax=ax, colorbar=False, xticks_rotation=45 if len(labels) > 6 else "horizontal"
    )
    ax.set_title("confusion matrix (rows: true, columns: predicted)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_reliability(
    raw: np.ndarray, calibrated: np.ndarray, targets: np.ndarray, temperature: float, path: Path
) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    for probs, label in (
        (raw, f"uncalibrated (ECE {expected_calibration_error(raw, targets):.3f})"),
        (
            calibrated,
            f"T = {temperature:.2f} (ECE {expected_calibration_error(calibrated, targets):.3f})",
        ),
    ):
        confidence, accuracy = reliability(probs, targets)
        ax.plot(confidence, accuracy, marker="o", label=label)
    ax.set(xlabel="confidence (top-1 score)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    ax.set_title("reliability diagram")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
