"""The networks that decide a part, loaded together: the classifier (train) and the model of good parts (anomaly).

A product with good photos only (train.classifier: false) has no classifier. The flaw finder's score, the
probability that the part holds a flaw somewhere on it, then takes the defect probability's place, so evaluate,
robustness, export and every consumer of the ONNX file decide such a product by the same rule and files.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from casting_inspection.core.errors import InspectionError
from casting_inspection.modeling.checkpoint import has_classifier, load_checkpoint, read_checkpoint
from casting_inspection.modeling.flaws import FlawNet
from casting_inspection.modeling.patchcore import load_anomaly

EDGE = 1e-6  # a score of exactly 0 or 1 has no finite logit


class GoodPartsOnly(nn.Module):
    """The classifier's stand-in without one: logits of the flaw finder's score, and as the guard's features the
    flaw finder's filters pooled over the photo, so the not-a-part guard still measures how far a photo lies from
    every good one. Always float32, as the shipped graph computes it (no bfloat16 autocast on CUDA)."""

    has_features = True
    decides_by_anomaly = True  # modeling.networks.ProbabilityNet ships the score once, not twice

    def __init__(self, anomaly: FlawNet):
        super().__init__()
        self.anomaly = anomaly

    def scored(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(score, map, pooled features) of the flaw finder, in float32 as its threshold was set."""
        with torch.autocast(x.device.type, enabled=False):
            features = self.anomaly.features(x.float())
            return *self.anomaly.judge(features), features.mean((-2, -1))

    def logits_and_pooled(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        score, _, pooled = self.scored(x)
        return torch.logit(score.clamp(EDGE, 1 - EDGE)), pooled

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.scored(x)[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_and_pooled(x)[0]


def load_inspector(checkpoint_path: Path, anomaly_path: Path, device: torch.device | str = "cpu"):
    """(decider, checkpoint metadata, model of good parts, its threshold). The decider is the trained classifier, or
    `GoodPartsOnly` for a checkpoint without one."""
    anomaly, anomaly_threshold = load_anomaly(anomaly_path)
    _, metadata = read_checkpoint(checkpoint_path)
    if has_classifier(metadata):
        model, metadata = load_checkpoint(checkpoint_path, device)
        return model, metadata, anomaly, anomaly_threshold
    if not isinstance(anomaly, FlawNet):
        raise InspectionError(
            f"{anomaly_path}: train.classifier=false needs anomaly.method: flaws, whose score is the probability of a "
            "flaw; PatchCore's is a distance with no scale to decide by alone"
        )
    # its own copy on the device: the model of good parts itself stays where anomaly_scores runs it (the CPU)
    return GoodPartsOnly(copy.deepcopy(anomaly)).to(device).eval(), metadata, anomaly, anomaly_threshold
