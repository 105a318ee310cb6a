"""Calibration figures and the temperature fit behave as their definitions say; exact bounds match known values."""

from __future__ import annotations

import numpy as np
import pytest

from casting_inspection.evaluation.calibration import calibration_metrics, expected_calibration_error, fit_temperature, sigmoid
from casting_inspection.evaluation.metrics import decision_metrics, upper_bound_95


def test_temperature_fit_recovers_an_overconfident_network():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 3, 20000)
    labels = (rng.random(20000) < sigmoid(true_logits)).astype(float)
    assert fit_temperature(true_logits * 4, labels) == pytest.approx(4, rel=0.05)  # 4x overconfident
    assert fit_temperature(true_logits, labels) == pytest.approx(1, rel=0.05)


def test_ece_is_zero_when_probabilities_match_outcomes_and_large_when_not():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1, 0, 1])
    assert expected_calibration_error(labels, np.full(10, 0.6), bins=10) == pytest.approx(0.0)
    assert expected_calibration_error(labels, np.full(10, 0.95), bins=10) == pytest.approx(0.35)
    figures = calibration_metrics(labels, np.full(10, 0.6), bins=10)
    assert figures["brier"] == pytest.approx(0.24)


def test_exact_upper_bounds():
    assert upper_bound_95(0, 453) == pytest.approx(1 - 0.05 ** (1 / 453))  # about 3/453: zero misses still allows 0.66 %
    assert upper_bound_95(0, 453) == pytest.approx(0.0066, abs=1e-4)
    assert upper_bound_95(1, 10) == pytest.approx(0.3942, abs=1e-4)
    assert upper_bound_95(0, 0) is None and upper_bound_95(5, 5) == 1.0
    result = decision_metrics(np.array([1, 1, 0, 0]), np.array([0.9, 0.1, 0.2, 0.3]), 0.5)
    assert result["escape_rate"] == 0.5 and result["escape_rate_upper95"] == pytest.approx(upper_bound_95(1, 2), abs=1e-6)
    assert result["false_reject_rate"] == 0.0 and result["false_reject_rate_upper95"] == pytest.approx(1 - 0.05**0.5, abs=1e-6)
