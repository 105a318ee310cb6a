"""Decision metrics count what a quality engineer asks for: defects let through and good parts scrapped."""

from __future__ import annotations

import numpy as np
import pytest

from casting_inspection.evaluation import decision_metrics


def test_misses_and_false_rejects_are_counted_with_defective_positive():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    probabilities = np.array([0.9, 0.8, 0.6, 0.2, 0.1, 0.1, 0.3, 0.4, 0.7, 0.05])
    result = decision_metrics(labels, probabilities, threshold=0.5)
    assert result["missed_defects"] == 1 and result["false_rejects"] == 1
    assert result["defects"] == 4 and result["good_parts"] == 6 and result["n"] == 10
    assert result["accuracy"] == pytest.approx(0.8)
    assert result["recall"] == pytest.approx(0.75) and result["precision"] == pytest.approx(0.75)
    assert 0 < result["roc_auc"] < 1


def test_threshold_moves_the_trade_off():
    labels = np.array([1, 1, 0, 0])
    probabilities = np.array([0.9, 0.35, 0.3, 0.1])
    assert decision_metrics(labels, probabilities, 0.5)["missed_defects"] == 1
    strict = decision_metrics(labels, probabilities, 0.32)
    assert strict["missed_defects"] == 0 and strict["false_rejects"] == 0


def test_one_class_subset_has_no_auc():
    result = decision_metrics(np.array([0, 0, 0]), np.array([0.1, 0.2, 0.9]), 0.5)
    assert result["roc_auc"] is None and result["false_rejects"] == 1
