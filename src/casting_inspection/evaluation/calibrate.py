"""Everything validation chooses, and nothing else sees: the temperature, the decision threshold, the review band
and the not-a-part guard. The test split is scored afterwards (evaluate.py) with what this returns."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from casting_inspection.core.decision import DecisionRule
from casting_inspection.core.errors import InspectionError
from casting_inspection.core.files import write_json
from casting_inspection.core.params import EvaluateParams
from casting_inspection.data.dataset import Split
from casting_inspection.evaluation.calibration import fit_temperature, sigmoid
from casting_inspection.evaluation.guard import fit_guard, save_guard
from casting_inspection.evaluation.metrics import Costs
from casting_inspection.evaluation.operating_point import choose_anomaly_review, choose_review_band, choose_threshold
from casting_inspection.modeling.augmentation import augmentation_from, augmented_copies
from casting_inspection.modeling.checkpoint import has_classifier
from casting_inspection.modeling.predict import predict_logits


@dataclasses.dataclass
class OperatingPoint:
    """What ships with the model: the temperature, the decision rule and the guard (its rules and statistics)."""

    temperature: float
    rule: DecisionRule
    guard_rules: dict
    guard_tensors: dict

    def save(self, path: Path, guard_path: Path) -> None:
        band = list(self.rule.band) if self.rule.band else None
        point = {"threshold": self.rule.threshold, "temperature": self.temperature, "review_band": band}
        point["anomaly_threshold"] = self.rule.anomaly_threshold  # the anomaly stage's, chosen on validation good parts
        point["anomaly_review"] = self.rule.anomaly_review
        write_json(path, {**point, "guard": self.guard_rules})
        save_guard(guard_path, self.guard_tensors)


@dataclasses.dataclass(frozen=True)
class Scored:
    """One split's labels and defect probabilities (calibrated, and the raw network's)."""

    labels: np.ndarray
    probabilities: np.ndarray
    raw: np.ndarray


def costs_of(params: EvaluateParams) -> Costs:
    return Costs(params.cost_missed_defect, params.cost_false_reject, params.defect_rate)


def calibrate(
    params: EvaluateParams, model, checkpoint: dict, splits: tuple[Split, Split], anomaly: tuple[float, np.ndarray], device
) -> tuple[OperatingPoint, Scored]:
    """Fit the operating point on validation (and the guard on train + validation); the scored validation split.
    `anomaly`: the model of good parts' threshold and its scores of the validation photos.
    Without a classifier (train.classifier: false) only the good photos choose: defect photos may not exist."""
    train, val = splits
    anomaly_threshold, val_anomaly = anomaly
    logits = predict_logits(model, val.images, params.batch_size, device).double().numpy()
    if not has_classifier(checkpoint):
        return _good_parts_only(params, model, checkpoint, (train.good(), val.good()), anomaly_threshold, logits, val)
    temperature = fit_temperature(logits, val.labels.numpy()) if params.calibration.temperature_scaling else 1.0
    scored = Scored(val.labels.numpy().astype(int), sigmoid(logits / temperature), sigmoid(logits))
    costs = costs_of(params)
    threshold = choose_threshold(
        params.operating_point, scored.labels, scored.probabilities, costs, params.threshold, params.target_recall
    )
    band = choose_review_band(params.review_share, scored.labels, scored.probabilities, threshold, costs)
    review = choose_anomaly_review(params.anomaly_review_share, val_anomaly, scored.probabilities, threshold, anomaly_threshold)
    rules, tensors = _guard(params, model, checkpoint, train, val)
    rule = DecisionRule(threshold, band, rules["novelty_threshold"], anomaly_threshold, review)
    if rule.problem():  # what the plant's Inspector would refuse at load must not be written
        raise InspectionError(f"the operating point chosen on validation cannot decide safely: {rule.problem()}")
    return OperatingPoint(temperature, rule, rules, tensors), scored


def _guard(params: EvaluateParams, model, checkpoint: dict, train: Split, val: Split) -> tuple[dict, dict]:
    augment = checkpoint["train_params"]["augment"]
    moved = augmented_copies(train.images, augmentation_from(augment), augment["group"], params.guard.seed)
    return fit_guard(model, train, moved, val, params.guard, params.batch_size)


def _good_parts_only(params: EvaluateParams, model, checkpoint: dict, good: tuple[Split, Split], anomaly_threshold, logits, val):
    """The model of good parts decides alone: its own threshold (a share of validation good parts rejected), a review
    band just below it holding `review_share` of the validation good parts, the guard fitted on good photos."""
    scored = Scored(val.labels.numpy().astype(int), sigmoid(logits), sigmoid(logits))
    band = good_review_band(scored.probabilities[scored.labels == 0], anomaly_threshold, params.review_share)
    rules, tensors = _guard(params, model, checkpoint, *good)
    rule = DecisionRule(anomaly_threshold, band, rules["novelty_threshold"], anomaly_threshold)
    return OperatingPoint(1.0, rule, rules, tensors), scored


def good_review_band(good_scores: np.ndarray, threshold: float, review_share: float) -> tuple[float, float] | None:
    """[low, threshold): the highest-scoring validation good parts below the threshold, at most `review_share` of
    them, go to a person; low sits halfway between the last one in and the next. None when no part fits."""
    below = np.sort(good_scores[good_scores < threshold])
    held = min(int(review_share * len(good_scores)), len(below))
    if held == 0:
        return None
    low = below[-held] / 2 if held == len(below) else (below[-held - 1] + below[-held]) / 2
    return float(low), float(threshold)
