"""Decision metrics count what a quality engineer asks for: defects let through and good parts scrapped."""

from __future__ import annotations

import numpy as np
import pytest

from casting_inspection.evaluation.metrics import decision_metrics, interval_95, review_metrics, shipped_by_change


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


def test_exact_intervals_match_the_closed_form_at_the_edges():
    """All of 453 right: the exact two-sided 95 % interval's lower end is 0.025 ** (1 / 453)."""
    low, high = interval_95(453, 453)
    assert high == 1.0 and low == pytest.approx(0.025 ** (1 / 453), abs=1e-6)
    low, high = interval_95(0, 453)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 453), abs=1e-6)
    low, high = interval_95(5, 10)
    assert low < 0.5 < high and low == pytest.approx(1 - high, abs=1e-6)


def test_decision_metrics_carry_intervals_around_their_rates():
    labels = np.array([1] * 40 + [0] * 60)
    probabilities = np.array([0.9] * 38 + [0.1] * 2 + [0.1] * 57 + [0.9] * 3)
    result = decision_metrics(labels, probabilities, 0.5)
    for name in ("accuracy", "recall", "false_reject_rate"):
        assert result[f"{name}_low95"] <= result[name] <= result[f"{name}_high95"]
    assert result["recall"] == pytest.approx(0.95) and result["false_reject_rate"] == pytest.approx(0.05)


def test_review_counts_parts_sent_to_a_person_as_caught():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    probabilities = np.array([0.9, 0.55, 0.45, 0.1, 0.5, 0.3, 0.1, 0.05])
    result = review_metrics(labels, probabilities, (0.4, 0.6))
    assert result["review"] == 3 and result["review_defects"] == 2 and result["automatic_share"] == pytest.approx(5 / 8)
    assert result["missed_defects"] == 1 and result["false_rejects"] == 0  # the defect at 0.1 is accepted
    assert result["escape_rate"] == pytest.approx(0.25) and result["escape_rate_upper95"] > 0.25


def test_novelty_is_the_mahalanobis_distance_to_the_nearer_class_each_with_its_own_spread():
    from casting_inspection.evaluation.guard import fit_novelty, novelty

    rng = np.random.default_rng(0)
    good = rng.normal(0.0, 1.0, (4000, 3))
    defective = rng.normal(10.0, 4.0, (4000, 3))  # defects vary more than good parts
    features = np.concatenate([good, defective])
    labels = np.repeat([0, 1], 4000)
    means, whitening = fit_novelty(features, labels, shrinkage=0.0)
    assert means.shape == (2, 3) and whitening.shape == (2, 3, 3)
    probe = np.array([[10.0, 10.0, 22.0], [0.0, 0.0, 3.0], [0.0, 0.0, -12.0]])
    scores = novelty(probe, means, whitening)
    assert scores[0] == pytest.approx(9.0, rel=0.1)  # 3 defect-sigmas out: usual for a defect
    assert scores[1] == pytest.approx(9.0, rel=0.1)  # 3 good-sigmas out
    assert scores[2] > 4 * scores[0]  # 12 good-sigmas out, 6.5 defect-sigmas: far from both
    inverse = np.linalg.inv(np.cov(defective, rowvar=False))
    exact = (probe[0] - defective.mean(axis=0)) @ inverse @ (probe[0] - defective.mean(axis=0))
    assert scores[0] == pytest.approx(exact, rel=1e-6)


def test_defects_shipped_are_counted_per_band_of_the_change_they_make():
    changes = np.array([0, 19, 20, 39, 39, 80, 255])
    shipped = np.array([True, True, True, False, False, False, True])
    figures = shipped_by_change(shipped, changes, [20, 40, 80])
    assert list(figures) == ["0-20", "20-40", "40-80", "80-255"]
    assert figures["0-20"] == {"photos": 2, "ok": 1.0, "ok_upper95": 1.0}
    assert figures["20-40"]["photos"] == 3 and figures["20-40"]["ok"] == pytest.approx(1 / 3, abs=1e-6)
    assert figures["40-80"] == {"photos": 0, "ok": None, "ok_upper95": None}
    assert figures["80-255"]["photos"] == 2 and figures["80-255"]["ok"] == 0.5
    assert 0.5 < figures["80-255"]["ok_upper95"] < 1  # two photos bound little
