"""Where to draw the line between accept and reject, chosen on the validation split only, and what it costs."""

from __future__ import annotations

import numpy as np

from .params import EvaluateParams


def candidate_thresholds(probabilities: np.ndarray) -> np.ndarray:
    """Midpoints between neighbouring validation probabilities (plus the ends): a threshold never sits on a part."""
    values = np.unique(probabilities)
    return np.concatenate([[values[0] / 2], (values[:-1] + values[1:]) / 2, [(values[-1] + 1) / 2]])


def choose_threshold(params: EvaluateParams, labels: np.ndarray, probabilities: np.ndarray) -> float:
    """`fixed`: evaluate.threshold. `target_recall`: the highest threshold whose validation recall reaches
    the target, so the fewest false rejects. `min_cost`: the lowest expected cost per part on a line
    with `defect_rate` defective parts, from the validation escape and false-reject rates (ties: the
    highest threshold) — not from raw validation counts, whose split is 57 % defective.
    `labels` and `probabilities` are the validation split's."""
    if params.operating_point == "fixed":
        return params.threshold
    labels = labels.astype(bool)
    thresholds = candidate_thresholds(probabilities)
    rejected = probabilities[None, :] >= thresholds[:, None]  # (thresholds, parts)
    missed = (~rejected & labels).sum(axis=1)
    false_rejects = (rejected & ~labels).sum(axis=1)
    if params.operating_point == "target_recall":
        reaches = 1 - missed / labels.sum() >= params.target_recall
        return float(thresholds[reaches].max())
    escape_rate, false_reject_rate = missed / labels.sum(), false_rejects / (~labels).sum()
    cost = (params.defect_rate * escape_rate * params.cost_missed_defect
            + (1 - params.defect_rate) * false_reject_rate * params.cost_false_reject)
    return float(thresholds[np.isclose(cost, cost.min(), rtol=1e-9, atol=0)].max())


def cost_per_1000(escape_rate: float, false_reject_rate: float, defect_rate: float, params: EvaluateParams) -> float:
    """Expected cost per 1,000 parts at a given defect rate, in units of one scrapped good part's cost."""
    return round(1000 * (defect_rate * escape_rate * params.cost_missed_defect
                         + (1 - defect_rate) * false_reject_rate * params.cost_false_reject), 3)
