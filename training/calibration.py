"""Calibration: how far confidences are from accuracy (ECE), the reliability diagram's
points, and temperature scaling fitted on held-out data (Guo et al., 2017).

A temperature divides the logits before the softmax: T > 1 softens over-confident scores,
and the ranking (so top-1 and top-k) never changes. Applied to log-probabilities it is the
same thing, since softmax ignores the constant log-sum-exp that separates the two.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from sklearn.calibration import calibration_curve
from torchmetrics.functional.classification import multiclass_calibration_error

N_BINS = 15


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray) -> float:
    """Top-label ECE with 15 equal-width bins (torchmetrics)."""
    return float(
        multiclass_calibration_error(
            torch.as_tensor(probs, dtype=torch.float32),
            torch.as_tensor(targets, dtype=torch.long),
            num_classes=probs.shape[1],
            n_bins=N_BINS,
            norm="l1",
        )
    )


def reliability(probs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean confidence, accuracy) per non-empty confidence bin: the reliability diagram."""
    correct = (probs.argmax(axis=1) == targets).astype(int)
    confidence = probs.max(axis=1)
    accuracy, mean_confidence = calibration_curve(
        correct, confidence, n_bins=N_BINS, strategy="uniform"
    )
    return mean_confidence, accuracy


def temper(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities as if the logits had been divided by ``temperature``."""
    logits = torch.log(torch.as_tensor(probs, dtype=torch.float64).clamp_min(1e-12))
    return torch.softmax(logits / temperature, dim=1).numpy()


def fit_temperature(probs: np.ndarray, targets: np.ndarray) -> float:
    """The temperature in [0.05, 20] minimising the held-out negative log-likelihood."""
    log_probs = torch.log(torch.as_tensor(probs, dtype=torch.float64).clamp_min(1e-12))
    labels = torch.as_tensor(targets, dtype=torch.long)

    def nll(log_t: float) -> float:
        scaled = log_probs / float(np.exp(log_t))
        return float(torch.nn.functional.cross_entropy(scaled, labels))

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))
