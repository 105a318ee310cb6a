"""How a part is decided: the one rule every consumer applies (evaluate, robustness, export, predict, serve,
watch), with its validity check, the novelty score and the words for each outcome.

Free of PyTorch and of params: the numbers come from the model's operating point (evaluate chooses them on
validation; export writes them into the ONNX metadata). A photo the guard flags is `not_a_part` and is never
decided. A part whose anomaly score (how far it departs from a good part: modeling.flaws or modeling.patchcore)
reaches the anomaly threshold is `defective`, whatever the classifier says: the classifier knows the defects it was shown, the
model of good parts whatever departs from a good part. One that only the model of good parts rejects (the classifier
says ok), with a score in [anomaly threshold, anomaly review), goes to a person instead of the
scrap bin: never `ok`. The others go to a person inside the review band [low, high), are `defective` at or above the
threshold, and `ok` below it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

OK, DEFECTIVE, REVIEW, NOT_A_PART = "ok", "defective", "review", "not_a_part"
DECISIONS = (OK, DEFECTIVE, REVIEW, NOT_A_PART)
PROBABILITY_OUTPUT = "defect_probability"  # the exported graph's first output: the number this rule reads


@dataclasses.dataclass(frozen=True)
class DecisionRule:
    """The operating point: the defect-probability threshold, the review band (None: no band), the
    guard's novelty threshold (None: a network without features, or no novelty check), the anomaly threshold
    (None: no model of good parts) and the top of the anomaly review band (None: no band)."""

    threshold: float
    band: tuple[float, float] | None = None
    novelty_threshold: float | None = None
    anomaly_threshold: float | None = None
    anomaly_review: float | None = None

    def problem(self) -> str | None:
        """Why this rule could not decide safely (a NaN threshold would call every part ok), or None."""
        if not (isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold) and 0 < self.threshold < 1):
            return f"threshold {self.threshold} is not a number in (0, 1)"
        if self.novelty_threshold is not None and not math.isfinite(self.novelty_threshold):
            return f"novelty threshold {self.novelty_threshold} is not a finite number"
        if self.anomaly_threshold is not None and not (math.isfinite(self.anomaly_threshold) and self.anomaly_threshold > 0):
            return f"anomaly threshold {self.anomaly_threshold} is not a finite number > 0"
        review = self.anomaly_review
        if review is not None and not (
            self.anomaly_threshold is not None and math.isfinite(review) and review > self.anomaly_threshold
        ):
            return f"anomaly review band top {review} is not a finite number above the anomaly threshold"
        band = self.band
        if band is None:
            return None
        if len(band) != 2 or not all(math.isfinite(v) for v in band) or not 0 <= band[0] <= self.threshold <= band[1] <= 1:
            return f"review band {list(band)} is not [low, high] with 0 <= low <= threshold <= high <= 1"
        return None

    def novelty_flag(self, score: float | None) -> str | None:
        return novelty_flag(score, self.novelty_threshold)

    def decide(self, probability: float, flag: str | None = None, anomaly: float | None = None) -> str:
        """One part: a flagged photo is not a part; an anomalous one defective (review inside the anomaly band when
        only the model of good parts rejects it); else review inside the band, else
        the threshold decides."""
        if flag or not usable_probability(probability):  # a model that gives no probability cannot ship a part
            return NOT_A_PART
        if self.anomaly_threshold is not None:
            if not usable_anomaly(anomaly):
                return NOT_A_PART
            if anomaly >= self.anomaly_threshold:
                only_anomaly = probability < self.threshold and self.anomaly_review is not None
                return REVIEW if only_anomaly and anomaly < self.anomaly_review else DEFECTIVE
        if self.band is not None and self.band[0] <= probability < self.band[1]:
            return REVIEW
        return DEFECTIVE if probability >= self.threshold else OK

    def decide_all(
        self,
        probabilities: Sequence[float],
        photo_flags: Sequence[str | None],
        novelty: Sequence[float] | None,
        anomaly: Sequence[float] | None = None,
    ) -> list[tuple[str, str | None]]:
        """(decision, flag) per part: the photo's own checks first, then the novelty score, then the rule."""
        scores = [None] * len(probabilities) if novelty is None else [float(s) for s in novelty]
        anomalies = [None] * len(probabilities) if anomaly is None else [float(a) for a in anomaly]
        out = []
        for p, photo_flag, score, departure in zip(probabilities, photo_flags, scores, anomalies):
            flag = photo_flag or self.novelty_flag(score)
            if not flag and not usable_probability(float(p)):
                flag = f"the model gave no defect probability between 0 and 1 ({p})"
            if not flag and self.anomaly_threshold is not None and not usable_anomaly(departure):
                flag = f"the model of good parts gave no anomaly score of 0 or more ({departure})"
            out.append((self.decide(float(p), flag, departure), flag))
        return out

    def review_reason(self, probability: float, anomaly: float | None) -> str:
        """Why a part that `decide` sends to a person went there, for the person who looks: which band it is in."""
        if self.anomalous(anomaly):
            low, high = self.anomaly_threshold, self.anomaly_review
            return f"only the model of good parts rejects it: anomaly {anomaly:.3f} in its review band [{low:.3f}, {high:.3f})"
        low, high = self.band or (math.nan, math.nan)
        return f"defect probability {probability:.3f} in the review band [{low:.3f}, {high:.3f})"

    def anomalous(self, anomaly: float | None) -> bool:
        """Whether the model of good parts alone rejects the part."""
        return self.anomaly_threshold is not None and anomaly is not None and anomaly >= self.anomaly_threshold


def usable_probability(probability: float) -> bool:
    """A probability between 0 and 1 (NaN is not): anything else is a model or graph fault, never a pass."""
    return 0.0 <= probability <= 1.0


def usable_anomaly(anomaly: float | None) -> bool:
    """A finite score of 0 or more (a flaw probability, or PatchCore's distance): anything else is a fault."""
    return anomaly is not None and math.isfinite(anomaly) and anomaly >= 0.0


def novelty_flag(score: float | None, limit: float | None) -> str | None:
    """The guard's reason when a photo's features lie farther from training than the novelty threshold allows."""
    if score is None or limit is None or score <= limit:
        return None
    return f"unlike every training photo (novelty {score:.0f} > {limit:.0f})"


def novelty_score(features, means, whitening, xp):
    """The guard's novelty: the squared Mahalanobis distance of each feature vector (N, D) to the nearer class,
    each class c with its mean (C, D) and whitening matrix W_c (C, D, D): min_c ||(f - mean_c) W_c||^2.
    `xp` is numpy or torch: the same definition runs in NumPy and inside the exported ONNX graph."""
    centred = features[:, None, None, :] - means[None, :, None, :]  # (N, C, 1, D)
    whitened = xp.matmul(centred, whitening[None]).squeeze(-2)  # (N, C, D)
    return xp.amin((whitened * whitened).sum(-1), -1)
