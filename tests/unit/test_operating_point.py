"""The threshold is chosen on validation by the rule in params; costs per 1,000 parts follow their definition."""

from __future__ import annotations

import numpy as np
import pytest

from casting_inspection.evaluation.metrics import Costs
from casting_inspection.evaluation.operating_point import (
    candidate_thresholds,
    choose_anomaly_review,
    choose_review_band,
    choose_threshold,
)

#                 defects ...................  good parts ......................
LABELS = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
PROBS = np.array([0.95, 0.9, 0.9, 0.85, 0.8, 0.7, 0.6, 0.3, 0.2, 0.05, 0.45, 0.25, 0.15, 0.1, 0.08, 0.04, 0.03, 0.02, 0.01, 0.01])


def threshold(
    operating_point, labels=LABELS, probs=PROBS, threshold=0.5, target_recall=0.995, cost_missed_defect=10.0, defect_rate=0.02
):
    costs = Costs(cost_missed_defect, 1.0, defect_rate)
    return choose_threshold(operating_point, labels, probs, costs, threshold, target_recall)


def band(review_share, labels=LABELS, probs=PROBS, threshold=0.5, cost_missed_defect=10.0, defect_rate=0.02):
    return choose_review_band(review_share, labels, probs, threshold, Costs(cost_missed_defect, 1.0, defect_rate))


def test_thresholds_sit_between_parts():
    thresholds = candidate_thresholds(PROBS)
    assert not np.isin(thresholds, PROBS).any() and thresholds.min() > 0 and thresholds.max() < 1


def test_fixed_uses_the_param():
    assert threshold("fixed", threshold=0.42) == 0.42


def test_target_recall_takes_the_highest_threshold_that_reaches_it():
    t = threshold("target_recall", target_recall=0.8)
    assert t == pytest.approx((0.25 + 0.3) / 2)  # the 8th defect (0.3) caught; the good part at 0.45 rejected
    t = threshold("target_recall", target_recall=0.9)
    assert t == pytest.approx((0.15 + 0.2) / 2)  # the defect at 0.2 caught; good parts at 0.25 and 0.45 rejected


def test_min_cost_moves_with_the_cost_ratio():
    cheap_misses = threshold("min_cost", cost_missed_defect=1.0, defect_rate=0.5)
    dear_misses = threshold("min_cost", cost_missed_defect=100.0, defect_rate=0.5)
    assert dear_misses < 0.05 < cheap_misses
    predicted = PROBS >= dear_misses
    assert (predicted & (LABELS == 1)).sum() == 10  # every defect caught when a miss costs 100 scrapped parts


def test_min_cost_weighs_errors_by_the_lines_defect_rate():
    """On a line with few defects, false rejects of the many good parts dominate: the threshold rises."""
    frequent = threshold("min_cost", cost_missed_defect=10.0, defect_rate=0.5)
    rare = threshold("min_cost", cost_missed_defect=10.0, defect_rate=0.01)
    assert rare > frequent
    assert not ((PROBS >= rare) & (LABELS == 0)).any()  # at 1 % defects, no good part is worth scrapping


def test_cost_per_1000_parts():
    costs = Costs(missed_defect=10.0, false_reject=1.0, defect_rate=0.5)
    assert costs.per_1000(0.01, 0.0, 0.02) == pytest.approx(1000 * 0.02 * 0.01 * 10)
    assert costs.per_1000(0.0, 0.01, 0.02) == pytest.approx(1000 * 0.98 * 0.01)
    assert costs.per_1000(0.0, 0.01) == pytest.approx(1000 * 0.5 * 0.01)  # the line's own defect rate


def test_review_band_is_off_at_zero_share():
    assert band(0.0) is None


def test_review_band_takes_the_costly_parts_out_of_automatic_decisions():
    """4 of 20 parts may go to a person: the cheapest band sends the defects at 0.3 and 0.2 and the good part
    at 0.45 there (a miss costs 10x here), so automatic decisions miss only the defect at 0.05."""
    low, high = band(0.2, cost_missed_defect=10.0, defect_rate=0.5)
    assert low <= 0.2 and 0.45 < high <= 0.6
    in_band = (PROBS >= low) & (PROBS < high)
    assert in_band.sum() <= 4
    assert ((PROBS < low) & (LABELS == 1)).sum() == 1 and not ((PROBS >= high) & (LABELS == 0)).any()


def test_review_band_never_holds_more_than_its_share():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    probs = np.clip(labels * 0.6 + rng.normal(0.2, 0.2, 300), 0.001, 0.999)
    for share in (0.01, 0.05, 0.2):
        low, high = band(share, labels, probs)
        assert low <= 0.5 <= high
        assert ((probs >= low) & (probs < high)).sum() <= share * 300


def test_bayes_threshold_follows_costs_and_priors_not_single_photos():
    """Reject when the line-prior probability of a defect exceeds the cost ratio: at a 50 % split and a 50 % line
    with equal costs that is 0.5; dearer misses or more defects on the line lower it."""
    assert threshold("bayes", cost_missed_defect=1.0, defect_rate=0.5) == pytest.approx(0.5)
    assert threshold("bayes", cost_missed_defect=10.0, defect_rate=0.5) == pytest.approx(1 / 11)
    rare = threshold("bayes", cost_missed_defect=10.0, defect_rate=0.02)
    assert rare == pytest.approx(1 / (1 + 10 * (0.02 / 0.98)))  # LABELS: 10 of 20 defective, odds 1
    moved = PROBS.copy()
    moved[7] = 0.99  # one photo moves: min_cost may jump, the Bayes threshold does not
    assert threshold("bayes", probs=moved, cost_missed_defect=10.0, defect_rate=0.02) == rare


def test_the_anomaly_review_band_holds_the_lowest_parts_only_the_model_of_good_parts_rejects():
    anomaly = np.array([0.1, 0.2, 0.90, 0.95, 0.97, 0.99, 0.3, 0.96])
    probabilities = np.array([0.0, 0.0, 0.1, 0.1, 0.1, 0.1, 0.0, 0.95])  # the last: the classifier rejects it too
    # 8 validation parts at 25 %: two of the four only the model of good parts rejects; the top halfway to the third
    assert choose_anomaly_review(0.25, anomaly, probabilities, 0.5, 0.9) == pytest.approx(0.96)
    top = choose_anomaly_review(0.9, anomaly, probabilities, 0.5, 0.9)  # room for all four: just above the last
    assert top > 0.99 and top == np.nextafter(0.99, 1)
    assert choose_anomaly_review(0.1, anomaly, probabilities, 0.5, 0.9) is None  # less than one part's room
    assert choose_anomaly_review(0.5, anomaly, probabilities, 0.5, 0.999) is None  # no part only it rejects


def test_the_anomaly_review_band_never_ships_a_top_the_plant_would_refuse():
    probabilities = np.zeros(6)
    with_nan = np.array([0.95, np.nan, 0.96, 0.1, 0.2, 0.3])
    assert choose_anomaly_review(0.5, with_nan, probabilities, 0.5, 0.9) == np.nextafter(0.96, 1)  # NaN is no score
    at_threshold = np.array([0.9, 0.9, 0.9, 0.1, 0.2, 0.3])  # ties at the threshold: a band would be empty
    assert choose_anomaly_review(0.34, at_threshold, probabilities, 0.5, 0.9) is None
