"""The figures a quality engineer asks for, each computed in one place: missed defects and false rejects,
their exact bounds, and what the errors cost on the line."""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.stats import beta, binomtest
from sklearn import metrics as skm


@dataclasses.dataclass(frozen=True)
class Costs:
    """What an error costs on the line, in units of one scrapped good part, and the line's defect rate."""

    missed_defect: float
    false_reject: float
    defect_rate: float

    def per_part(self, escape_rate, false_reject_rate, defect_rate: float | None = None):
        """Expected cost per part (works on arrays of rates too); at the line's defect rate unless one is given."""
        rate = self.defect_rate if defect_rate is None else defect_rate
        return rate * escape_rate * self.missed_defect + (1 - rate) * false_reject_rate * self.false_reject

    def per_1000(
        self, escape_rate: float | None, false_reject_rate: float | None, defect_rate: float | None = None
    ) -> float | None:
        """None when a rate is unknown: a split without defect photos (or without good ones) has no escape rate."""
        if escape_rate is None or false_reject_rate is None:
            return None
        return round(1000 * float(self.per_part(escape_rate, false_reject_rate, defect_rate)), 3)


def count_errors(labels: np.ndarray, rejected: np.ndarray) -> tuple[int, int]:
    """(missed defects, false rejects): defective parts accepted, good parts rejected."""
    labels, rejected = np.asarray(labels).astype(bool), np.asarray(rejected).astype(bool)
    return int((~rejected & labels).sum()), int((rejected & ~labels).sum())


def upper_bound_95(failures: int, trials: int) -> float | None:
    """Exact (Clopper-Pearson) one-sided 95 % upper bound on a rate: 0 of 453 still allows 0.66 %."""
    if trials == 0:
        return None
    return 1.0 if failures >= trials else float(beta.ppf(0.95, failures + 1, trials - failures))


def interval_95(successes: int, trials: int) -> tuple[float | None, float | None]:
    """Exact (Clopper-Pearson) two-sided 95 % confidence interval on a proportion."""
    if trials == 0:
        return None, None
    interval = binomtest(successes, trials).proportion_ci(0.95, method="exact")
    return _round(interval.low), _round(interval.high)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _rate(count: int, total: int) -> float | None:
    return round(count / total, 6) if total else None


def _intervals(name: str, successes: int, trials: int) -> dict:
    low, high = interval_95(successes, trials)
    return {f"{name}_low95": low, f"{name}_high95": high}


def error_rates(missed: int, false_rejects: int, defects: int, good: int) -> dict:
    """Escape rate = defects shipped / defects; false-reject rate = good parts scrapped / good parts; with bounds."""
    return {
        "escape_rate": _rate(missed, defects),
        "escape_rate_upper95": _round(upper_bound_95(missed, defects)),
        "false_reject_rate": _rate(false_rejects, good),
        "false_reject_rate_upper95": _round(upper_bound_95(false_rejects, good)),
    }


def decision_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict:
    """Accept/reject at `threshold` (defective = positive)."""
    labels = labels.astype(int)
    predicted = (probabilities >= threshold).astype(int)
    missed, false_rejects = count_errors(labels, predicted)
    defects, good = int(labels.sum()), int(len(labels) - labels.sum())
    caught, kept = defects - missed, good - false_rejects
    return {
        "n": int(len(labels)),
        "accuracy": round(float(skm.accuracy_score(labels, predicted)), 6),
        "precision": round(float(skm.precision_score(labels, predicted, zero_division=0)), 6),
        "recall": round(float(skm.recall_score(labels, predicted, zero_division=0)), 6),
        "f1": round(float(skm.f1_score(labels, predicted, zero_division=0)), 6),
        "roc_auc": round(float(skm.roc_auc_score(labels, probabilities)), 6) if len(np.unique(labels)) == 2 else None,
        "missed_defects": missed,
        "false_rejects": false_rejects,
        "defects": defects,
        "good_parts": good,
        **error_rates(missed, false_rejects, defects, good),
        **_intervals("accuracy", caught + kept, len(labels)),
        **_intervals("recall", caught, defects),
        **_intervals("false_reject_rate", false_rejects, good),
    }


def review_metrics(labels: np.ndarray, probabilities: np.ndarray, band: tuple[float, float]) -> dict:
    """Three-way decisions: how many parts are decided automatically, and what those automatic decisions miss.
    Parts sent to a person count as caught (defective) or kept (good)."""
    labels = labels.astype(bool)
    low, high = band
    review = (probabilities >= low) & (probabilities < high)
    missed = count_errors(labels, probabilities >= low)[0]  # accepted below the band
    false_rejects = count_errors(labels, probabilities >= high)[1]  # rejected above it
    return {
        "automatic_share": round(float(1 - review.mean()), 6),
        "review": int(review.sum()),
        "review_defects": int((review & labels).sum()),
        "missed_defects": missed,
        "false_rejects": false_rejects,
        **error_rates(missed, false_rejects, int(labels.sum()), int((~labels).sum())),
    }


def shipped_by_change(shipped: np.ndarray, changes: np.ndarray, bands: list[int]) -> dict:
    """Per band of the largest grey-level change a defect makes ("20-40": at least 20, under 40; the last band,
    "80-255", includes 255; `bands` are the edges between bands), the defects in it, the share shipped and its
    exact 95 % upper bound: what contrast of defect gets through, as inspection states a probability of detection."""
    shipped, changes = np.asarray(shipped, dtype=bool), np.asarray(changes)
    edges, figures = [0, *bands, 256], {}
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (changes >= low) & (changes < high)
        count, n = int(shipped[inside].sum()), int(inside.sum())
        figures[f"{low}-{min(high, 255)}"] = {"photos": n, "ok": _rate(count, n), "ok_upper95": _round(upper_bound_95(count, n))}
    return figures
