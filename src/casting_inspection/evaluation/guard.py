"""Not a part, not a decision: fit the guard that turns a photo the model cannot judge into `not_a_part`.

Two checks, both fitted without the test split: the photo's own plausibility (data.plausibility: exposure,
contrast, capture shape, the part where parts are in training, a straight cut across the frame, the frame's layout),
and novelty in the network's own feature
space — the squared Mahalanobis distance of an image's pooled features from the training split's, with its
threshold set on the validation split for a stated false-alarm rate. The guard travels with the model: the
distance is a second output of the ONNX graph and the rules are in its metadata.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from casting_inspection.core.decision import DecisionRule, novelty_flag, novelty_score
from casting_inspection.core.errors import InspectionError
from casting_inspection.core.files import atomic_path
from casting_inspection.data.dataset import Split
from casting_inspection.data.plausibility import (
    flat_limit,
    implausible,
    layout_model,
    part_range,
    photo_statistics,
    seam_limit,
)
from casting_inspection.modeling.networks import InspectionNet
from casting_inspection.modeling.patchcore import anomaly_scores
from casting_inspection.modeling.predict import predict_features, predict_logits_and_features


def pooled_features(model: InspectionNet, images: torch.Tensor, batch_size: int) -> np.ndarray:
    """(N, D) float64 pooled features of uint8 images, in order, on the model's device: the guard's statistics."""
    return predict_features(model, images, batch_size, next(model.parameters()).device).double().numpy()


def fit_novelty(features: np.ndarray, labels: np.ndarray, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    """Per class present, its mean (C, D) and the whitening matrix W (C, D, D) of its own covariance (shrunk toward its
    diagonal): novelty = min over the classes of ||(f - mean_c) W_c||^2 (core.decision.novelty_score), the squared
    Mahalanobis distance to the nearer class. Each class gets its own spread because defects vary far more than good
    castings: one shared spread would call an unusual defect a stranger (docs/not-a-part.md has the figures)."""
    fits = [_gaussian(features[labels == c], shrinkage) for c in (0, 1) if (labels == c).any()]  # good photos only: one
    return np.stack([mean for mean, _ in fits]), np.stack([whitening for _, whitening in fits])


def _gaussian(features: np.ndarray, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    mean = features.mean(axis=0)
    covariance = np.cov(features - mean, rowvar=False)
    covariance = (1 - shrinkage) * covariance + shrinkage * np.diag(np.diag(covariance))
    covariance += 1e-6 * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
    cholesky = np.linalg.cholesky(covariance)  # covariance = C C^T, so d^2 = ||C^-1 (f - mean)||^2
    return mean, np.ascontiguousarray(np.linalg.inv(cholesky).T)


def novelty(features: np.ndarray, means: np.ndarray, whitening: np.ndarray) -> np.ndarray:
    return novelty_score(features, means, whitening, np)


def fit_guard(model: InspectionNet, train: Split, moved: torch.Tensor, val: Split, params, batch_size: int) -> tuple[dict, dict]:
    """The rules (for the metadata) and the tensors (class means, whitening) of the guard. `params`: evaluate.guard;
    `moved`: the train photos under one draw of the training augmentation (`augmentation.augmented_copies`): the line
    changes the model was trained to withstand are what 'a part' looks like to the guard, not only the clean photos.
    The threshold: the 1 - false_alarm_rate quantile of the validation parts' novelty."""
    images = torch.cat([train.images, moved])
    statistics = photo_statistics(images.numpy())
    rules = {
        "exposure": list(params.exposure),
        "min_contrast": params.min_contrast,
        "max_clipped": params.max_clipped,
        "max_aspect": params.max_aspect,
        "max_flat": flat_limit(statistics, params.flat_margin),
        "part": part_range(statistics, params.position_margin),
        # the camera's own photos only (the first half): the augmentation's fill leaves straight edges no camera makes
        "max_seam": seam_limit({"seam": statistics["seam"][: len(train.images)]}, params.seam_margin),
        "layout": layout_model(statistics, params.layout_margin),  # the augmented copies too: a shifted part is a part
    }
    if not model.has_features:  # baselines without a pooled feature vector: the photo checks only
        return {**rules, "novelty_threshold": None, "false_alarm_rate": None}, {}
    labels = torch.cat([train.labels, train.labels]).numpy().astype(int)
    means, whitening = fit_novelty(pooled_features(model, images, batch_size), labels, params.shrinkage)
    val_novelty = novelty(pooled_features(model, val.images, batch_size), means, whitening)
    threshold = float(np.quantile(val_novelty, 1 - params.false_alarm_rate))
    tensors = {"means": torch.from_numpy(means).float(), "whitening": torch.from_numpy(whitening).float()}
    return {**rules, "novelty_threshold": threshold, "false_alarm_rate": params.false_alarm_rate}, tensors


def guard_reasons(
    rules: dict, tensors: dict, images: torch.Tensor, sizes: list[tuple[int, int]], features: torch.Tensor | None
) -> list[str | None]:
    """Per image, why it is not a part the model can judge, or None. `features`: the images' pooled features
    (`predict_logits_and_features`), None for a network without them."""
    reasons = implausible(photo_statistics(images.numpy()), sizes, rules)
    if rules["novelty_threshold"] is None:
        return reasons
    means, whitening = tensors["means"].double().numpy(), tensors["whitening"].double().numpy()
    scores = novelty(features.double().numpy(), means, whitening)
    return [reason or novelty_flag(score, rules["novelty_threshold"]) for reason, score in zip(reasons, scores)]


def save_guard(path: Path, tensors: dict) -> None:
    with atomic_path(Path(path)) as tmp:
        save_file(tensors or {"empty": torch.zeros(0)}, str(tmp))


def load_guard(path: Path) -> dict:
    tensors = load_file(str(path))
    if "empty" in tensors:
        return {}
    if tensors["whitening"].dim() == 2:  # a guard file with one covariance shared by both classes
        tensors["whitening"] = tensors["whitening"].expand(len(tensors["means"]), -1, -1).contiguous()
    return tensors


class Decider:
    """The shipped decision for uint8 images, in PyTorch: the guard's reasons, then the rule (core.decision), with the
    model of good parts' score when there is one (`anomaly`: what modeling.patchcore.load_anomaly returns, or None)."""

    def __init__(
        self, model, temperature: float, rule: DecisionRule, guard_rules: dict, tensors: dict, batch_size: int, anomaly=None
    ):
        self.model, self.temperature, self.rule = model, temperature, rule
        self.guard_rules, self.tensors, self.batch_size, self.anomaly = guard_rules, tensors, batch_size, anomaly

    def reasons(self, images: torch.Tensor, sizes: list[tuple[int, int]]) -> list[str | None]:
        """The guard's reason per image, or None: what it flags, without deciding (no model of good parts to run)."""
        _, features = predict_logits_and_features(self.model, images, self.batch_size, next(self.model.parameters()).device)
        return guard_reasons(self.guard_rules, self.tensors, images, sizes, features)

    def __call__(
        self, images: torch.Tensor, sizes: list[tuple[int, int]], departures: np.ndarray | None = None
    ) -> list[tuple[str, float, str | None]]:
        """(decision, defect probability, guard reason) per image; `departures`: the model of good parts' scores of
        these images when already computed (evaluation.departures), else it scores them here."""
        device = next(self.model.parameters()).device
        logits, features = predict_logits_and_features(self.model, images, self.batch_size, device)
        flags = guard_reasons(self.guard_rules, self.tensors, images, sizes, features)
        probabilities = torch.sigmoid(logits.double() / self.temperature).numpy()
        if departures is not None and len(departures) != len(images):
            raise InspectionError(f"{len(departures)} scores of the model of good parts for {len(images)} photos")
        scores = departures if departures is not None and self.anomaly is not None else self.anomaly_scores(images)
        return [
            (decision, float(p), flag)
            for p, (decision, flag) in zip(probabilities, self.rule.decide_all(probabilities, flags, None, scores))
        ]

    def anomaly_scores(self, images: torch.Tensor) -> np.ndarray | None:
        return None if self.anomaly is None else anomaly_scores(self.anomaly, images, self.batch_size)[0]
