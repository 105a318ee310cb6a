"""Where to draw the line between accept and reject, chosen on the validation split only, and what it costs."""

from __future__ import annotations

import numpy as np

from casting_inspection.evaluation.metrics import Costs


def candidate_thresholds(probabilities: np.ndarray) -> np.ndarray:
    """Midpoints between neighbouring validation probabilities (plus the ends): a threshold never sits on a part."""
    values = np.unique(probabilities)
    return np.concatenate([[values[0] / 2], (values[:-1] + values[1:]) / 2, [(values[-1] + 1) / 2]])


def bayes_threshold(costs: Costs, split_defect_rate: float) -> float:
    """The threshold on calibrated probabilities where rejecting starts to cost less than accepting, on a line
    with the costs' defect rate: probabilities calibrated on a split with `split_defect_rate` defective parts
    are moved to the line's prior (odds times the ratio of prior odds), then compared with the cost ratio.
    It depends on no single photo, so it does not jump when the model is retrained."""
    line_odds = costs.defect_rate / (1 - costs.defect_rate)
    split_odds = split_defect_rate / (1 - split_defect_rate)
    return 1 / (1 + costs.missed_defect / costs.false_reject * line_odds / split_odds)


def choose_threshold(
    rule: str, labels: np.ndarray, probabilities: np.ndarray, costs: Costs, fixed: float, target_recall: float
) -> float:
    """`fixed`: that threshold. `bayes`: `bayes_threshold` (needs calibrated probabilities). `target_recall`: the highest threshold whose validation recall reaches the
    target, so the fewest false rejects. `min_cost`: the lowest expected cost per part on a line with the
    costs' defect rate, from the validation escape and false-reject rates (ties: the highest threshold) —
    not from raw validation counts, whose split is 57 % defective.
    `labels` and `probabilities` are the validation split's."""
    if rule == "fixed":
        return fixed
    labels = labels.astype(bool)
    if rule == "bayes":
        return bayes_threshold(costs, float(labels.mean()))
    thresholds = candidate_thresholds(probabilities)
    rejected = probabilities[None, :] >= thresholds[:, None]  # (thresholds, parts)
    missed = (~rejected & labels).sum(axis=1)
    false_rejects = (rejected & ~labels).sum(axis=1)
    if rule == "target_recall":
        reaches = 1 - missed / labels.sum() >= target_recall
        return float(thresholds[reaches].max())
    cost = costs.per_part(missed / labels.sum(), false_rejects / (~labels).sum())
    return float(thresholds[np.isclose(cost, cost.min(), rtol=1e-9, atol=0)].max())


def choose_review_band(
    review_share: float, labels: np.ndarray, probabilities: np.ndarray, threshold: float, costs: Costs
) -> tuple[float, float] | None:
    """Three-way decisions: parts with low <= probability < high go to a person. Of the bands around the
    threshold that hold at most `review_share` of the validation parts, the one whose automatic
    decisions have the lowest expected cost at the line's defect rate (ties: the narrowest, then the
    one centred on the threshold). None when `review_share` is 0."""
    if review_share <= 0:
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
    cost = costs.per_part(escape_rate[:, None], false_reject_rate[None, :])
    cost = np.where(in_band <= review_share * len(probabilities), cost, np.inf)
    width = highs[None, :] - lows[:, None]
    off_centre = np.abs((highs[None, :] + lows[:, None]) / 2 - threshold)
    best = np.lexsort((off_centre.ravel(), width.ravel(), cost.ravel()))[0]
    low, high = np.unravel_index(best, cost.shape)
    return float(lows[low]), float(highs[high])


def choose_anomaly_review(
    share: float, anomaly: np.ndarray, probabilities: np.ndarray, threshold: float, anomaly_threshold: float
) -> float | None:
    """The top of [anomaly_threshold, top): a part only the model of good parts rejects (probability < threshold),
    scoring in it, goes to a person instead of the scrap bin. The band takes the validation parts only it rejects,
    lowest score first, at most `share` of the validation parts: the top lies halfway to the next one, or just above
    the highest when all fit (above it, that model scraps alone). None: no band (no room, or nothing to hold)."""
    lone = (anomaly >= anomaly_threshold) & (probabilities < threshold) & np.isfinite(anomaly)
    only = np.sort(anomaly[lone])
    held = min(int(share * len(anomaly)), len(only))
    if held == 0:
        return None
    top = float((only[held - 1] + only[held]) / 2) if held < len(only) else float(np.nextafter(only[-1], np.inf))
    return top if np.isfinite(top) and top > anomaly_threshold else None
