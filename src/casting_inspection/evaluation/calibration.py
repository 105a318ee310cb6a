"""Do the defect probabilities mean what they say? Brier score, expected calibration error, and a
temperature fitted on the validation split that makes them honest without changing any decision at 0.5."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.metrics import brier_score_loss


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> float:
    """Mean |observed defect rate - predicted probability| over equal-width probability bins, weighted by bin size."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probabilities, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            error += in_bin.mean() * abs(labels[in_bin].mean() - probabilities[in_bin].mean())
    return float(error)


def calibration_metrics(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> dict:
    return {
        "brier": round(float(brier_score_loss(labels, probabilities)), 6),
        "ece": round(expected_calibration_error(labels, probabilities, bins), 6),
    }


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 that minimises the log loss of sigmoid(logit / T) on these (validation) logits."""
    logits, labels = logits.astype(np.float64), labels.astype(np.float64)

    def log_loss(log_t: float) -> float:
        z = logits / np.exp(log_t)
        return float(np.mean(np.logaddexp(0, z) - labels * z))  # BCE with logits, stable

    return float(np.exp(minimize_scalar(log_loss, bounds=(-4, 4), method="bounded").x))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * z))
