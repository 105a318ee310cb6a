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


def choose_review_band(params: EvaluateParams, labels: np.ndarray, probabilities: np.ndarray,
                       threshold: float) -> tuple[float, float] | None:
    """Three-way decisions: parts with low <= probability < high go to a person. Of the bands around the
    threshold that hold at most `review_share` of the validation parts, the one whose automatic
    decisions have the lowest expected cost at the line's defect rate (ties: the narrowest, then the
    one centred on the threshold). None when `review_share` is 0."""
    if params.review_share <= 0:
        return None
    labels = labels.astype(bool)
    candidates = candidate_thresholds(probabilities)
    lows = np.append(candidates[candidates < threshold], threshold)
    highs = np.append(threshold, candidates[candidates > threshold])
    ordered = np.sort(probabilities)
    defects, good = np.sort(probabilities[labels]), np.sort(probabilities[~labels])
    in_band = np.searchsorted(ordered, highs)[None, :] - np.searchsorted(ordered, lows)[:, None]
    escape_rate = np.searchsorted(defects, lows) / max(len(defects), 1)  # accepted defects, per low
    false_reject_rate = (len(good) - np.searchsorted(good, highs)) / max(len(good), 1)  # rejected good parts, per high
    cost = (params.defect_rate * params.cost_missed_defect * escape_rate[:, None]
            + (1 - params.defect_rate) * params.cost_false_reject * false_reject_rate[None, :])
    cost = np.where(in_band <= params.review_share * len(probabilities), cost, np.inf)
    width = highs[None, :] - lows[:, None]
    off_centre = np.abs((highs[None, :] + lows[:, None]) / 2 - threshold)
    best = np.lexsort((off_centre.ravel(), width.ravel(), cost.ravel()))[0]
    low, high = np.unravel_index(best, cost.shape)
    return float(lows[low]), float(highs[high])
