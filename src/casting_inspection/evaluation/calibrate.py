"""Everything validation chooses, and nothing else sees: the temperature, the decision threshold, the review band
and the not-a-part guard. The test split is scored afterwards (evaluate.py) with what this returns."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from casting_inspection.core.decision import DecisionRule
from casting_inspection.core.files import write_json
from casting_inspection.core.params import EvaluateParams
from casting_inspection.data.dataset import Split
from casting_inspection.evaluation.calibration import fit_temperature, sigmoid
from casting_inspection.evaluation.guard import fit_guard, save_guard
from casting_inspection.evaluation.metrics import Costs
from casting_inspection.evaluation.operating_point import choose_review_band, choose_threshold
from casting_inspection.modeling.augmentation import augmentation_from
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


def calibrate(params: EvaluateParams, model, checkpoint: dict, train: Split, val: Split, device) -> tuple[OperatingPoint, Scored]:
    """Fit the operating point on validation (and the guard on train + validation); the scored validation split."""
    logits = predict_logits(model, val.images, params.batch_size, device).double().numpy()
    temperature = fit_temperature(logits, val.labels.numpy()) if params.calibration.temperature_scaling else 1.0
    scored = Scored(val.labels.numpy().astype(int), sigmoid(logits / temperature), sigmoid(logits))
    costs = costs_of(params)
    threshold = choose_threshold(
        params.operating_point, scored.labels, scored.probabilities, costs, params.threshold, params.target_recall
    )
    band = choose_review_band(params.review_share, scored.labels, scored.probabilities, threshold, costs)
    augment = checkpoint["train_params"]["augment"]
    rules, tensors = fit_guard(model, train, val, params.guard, params.batch_size, augmentation_from(augment), augment["group"])
    rule = DecisionRule(threshold, band, rules["novelty_threshold"])
    return OperatingPoint(temperature, rule, rules, tensors), scored
