"""The one decision rule: its outcomes, the rules it refuses, and one novelty score in NumPy and in the graph."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from casting_inspection.core.decision import DECISIONS, DecisionRule, novelty_flag, novelty_score


def test_flag_then_band_then_threshold():
    rule = DecisionRule(0.8, (0.1, 0.8), 50.0)
    assert [rule.decide(p) for p in (0.0, 0.09, 0.1, 0.79, 0.8, 1.0)] == [
        "ok",
        "ok",
        "review",
        "review",
        "defective",
        "defective",
    ]
    assert rule.decide(0.0, "too dark") == "not_a_part"
    decided = rule.decide_all([0.0, 0.5, 0.9, 0.0], [None, None, None, "a strip"], [10.0, 10.0, 10.0, 10.0])
    assert decided == [("ok", None), ("review", None), ("defective", None), ("not_a_part", "a strip")]
    assert rule.decide_all([0.0], [None], [51.0]) == [("not_a_part", "unlike every training photo (novelty 51 > 50)")]
    assert {d for d, _ in decided} <= set(DECISIONS)


@pytest.mark.parametrize(
    "rule",
    [DecisionRule(math.nan), DecisionRule(1.0), DecisionRule(0.5, (0.6, 0.9)), DecisionRule(0.5, (math.nan, 0.6))],
    ids=["nan", "one", "band-above", "band-nan"],
)
def test_a_rule_that_cannot_decide_safely_says_why(rule):
    assert rule.problem()


def test_a_model_that_gives_no_number_never_ships_a_part():
    rule = DecisionRule(0.5, (0.3, 0.7), 10.0)
    assert rule.decide(math.nan) == "not_a_part"
    no_probability = "the model gave no defect probability between 0 and 1 (nan)"
    assert rule.decide_all([math.nan], [None], None) == [("not_a_part", no_probability)]


@pytest.mark.parametrize("probability, anomaly", [(-5.0, 0.1), (1.5, 0.1), (0.01, -1.0), (0.01, math.inf)])
def test_a_number_out_of_its_range_is_a_fault_never_a_pass(probability, anomaly):
    """A graph whose first output is a logit, or a score below zero, would otherwise ship the part."""
    rule = DecisionRule(0.5, None, None, anomaly_threshold=0.8)
    ((decision, flag),) = rule.decide_all([probability], [None], None, [anomaly])
    assert decision == "not_a_part" and flag.startswith("the model")
    assert rule.decide(probability, None, anomaly) == "not_a_part"


def test_a_sound_rule_has_no_problem_and_no_flag_below_the_limit():
    assert DecisionRule(0.5, (0.2, 0.5), 3.0).problem() is None
    assert novelty_flag(3.0, 3.0) is None and novelty_flag(5.0, None) is None


def test_novelty_is_one_definition_in_numpy_and_in_torch():
    rng = np.random.default_rng(0)
    features, means = rng.standard_normal((7, 5)), rng.standard_normal((2, 5))
    whitening = rng.standard_normal((2, 5, 5))
    expected = np.min([(((features - m) @ w) ** 2).sum(axis=1) for m, w in zip(means, whitening)], axis=0)
    assert np.allclose(novelty_score(features, means, whitening, np), expected)
    as_torch = novelty_score(*(torch.from_numpy(a) for a in (features, means, whitening)), torch)
    assert np.allclose(as_torch.numpy(), expected)


def test_a_part_the_model_of_good_parts_rejects_is_defective_whatever_the_classifier_says():
    rule = DecisionRule(0.8, (0.1, 0.8), 50.0, anomaly_threshold=2.0)
    assert rule.decide(0.0, None, 2.0) == "defective"  # the classifier calls it good: a defect of a form it never saw
    assert rule.decide(0.5, None, 1.9) == "review" and rule.decide(0.0, None, 1.9) == "ok"
    assert rule.decide(0.0, "too dark", 9.0) == "not_a_part"  # a photo the guard refuses is never decided
    decided = rule.decide_all([0.0, 0.0, 0.9], [None, None, None], None, [0.5, 3.0, 0.5])
    assert [d for d, _ in decided] == ["ok", "defective", "defective"]
    assert rule.anomalous(3.0) and not rule.anomalous(1.0) and not DecisionRule(0.5).anomalous(9.0)


def test_a_missing_anomaly_score_never_ships_a_part():
    rule = DecisionRule(0.5, None, None, anomaly_threshold=2.0)
    assert rule.decide(0.0, None, None) == "not_a_part" and rule.decide(0.0, None, math.nan) == "not_a_part"
    [(decision, flag)] = rule.decide_all([0.0], [None], None, [math.nan])
    assert decision == "not_a_part" and "anomaly score" in flag
    assert DecisionRule(0.5, anomaly_threshold=math.inf).problem() and DecisionRule(0.5, anomaly_threshold=0.0).problem()


def test_a_part_only_the_model_of_good_parts_rejects_by_a_small_margin_goes_to_a_person_never_ok():
    rule = DecisionRule(0.8, (0.1, 0.8), 50.0, anomaly_threshold=2.0, anomaly_review=3.0)
    assert rule.decide(0.0, None, 2.5) == "review"  # the classifier says ok, the model of good parts only just rejects
    assert rule.decide(0.0, None, 3.0) == "defective"  # far from every good part: scrapped
    assert rule.decide(0.9, None, 2.5) == "defective"  # the classifier rejects it too
    assert rule.decide(0.0, None, 1.9) == "ok" and rule.decide(0.0, "cut up", 2.5) == "not_a_part"
    assert rule.problem() is None
    assert DecisionRule(0.8, None, None, 2.0, anomaly_review=2.0).problem()  # an empty band is a broken file
    assert DecisionRule(0.8, None, None, None, anomaly_review=3.0).problem()  # a band without a model of good parts
    assert DecisionRule(0.8, None, None, 2.0, anomaly_review=math.nan).problem()


def test_the_exports_agreement_counts_every_outcome_that_differs_the_anomaly_review_top_included():
    from casting_inspection.export.onnx import outcome_flips, shipped_rule

    point = {"threshold": 0.5, "review_band": [0.4, 0.6], "guard": {"novelty_threshold": 10.0}}
    rule = shipped_rule(point | {"anomaly_threshold": 0.5, "anomaly_review": 0.8})
    assert rule == DecisionRule(0.5, (0.4, 0.6), 10.0, 0.5, 0.8)
    first = {
        "defect_probability": np.array([0.1, 0.1, 0.45, 0.1]),
        "novelty": np.array([1.0, 1.0, 1.0, 9.9]),
        "anomaly": np.array([0.79, 0.2, 0.2, 0.2]),
    }
    # the anomaly crosses the review top only (review -> defective), the classifier the band's edge (ok -> review),
    # and the novelty its limit (ok -> not a part): no single threshold's flips would count all three
    second = {
        "defect_probability": np.array([0.1, 0.1, 0.35, 0.1]),
        "novelty": np.array([1.0, 1.0, 1.0, 10.1]),
        "anomaly": np.array([0.81, 0.2, 0.2, 0.2]),
    }
    assert outcome_flips(rule, first, second) == 3
    assert outcome_flips(rule, first, first) == 0
    assert outcome_flips(shipped_rule(point | {"review_band": None}), first, second) == 1  # the novelty only


def test_a_review_says_which_band_sent_the_part_to_a_person():
    rule = DecisionRule(0.5, (0.4, 0.6), None, 0.8, 0.9)
    assert rule.decide(0.1, anomaly=0.85) == rule.decide(0.45, anomaly=0.1) == "review"
    assert rule.review_reason(0.1, 0.85) == (
        "only the model of good parts rejects it: anomaly 0.850 in its review band [0.800, 0.900)"
    )
    assert rule.review_reason(0.45, 0.1) == "defect probability 0.450 in the review band [0.400, 0.600)"
