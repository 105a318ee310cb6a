"""A product with good photos only (train.classifier: false): the flaw finder's score takes the defect probability's
place, the review band is chosen on good parts alone, and a checkpoint without a classifier is never mistaken for one."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from casting_inspection.core.errors import InspectionError
from casting_inspection.evaluation.anomaly import _spec
from casting_inspection.evaluation.calibrate import good_review_band
from casting_inspection.modeling.checkpoint import load_checkpoint, save_checkpoint
from casting_inspection.modeling.flaws import FlawNet
from casting_inspection.modeling.inspector import GoodPartsOnly, load_inspector
from casting_inspection.modeling.networks import ProbabilityNet
from casting_inspection.modeling.patchcore import PatchCore, PatchFeatures, part_window, save_patchcore
from helpers import fast_section


def test_the_band_holds_at_most_its_share_of_good_parts_just_below_the_threshold():
    good = np.linspace(0.0, 0.99, 100)
    low, high = good_review_band(good, 0.9, 0.05)
    assert high == 0.9 and 0.84 < low < 0.85  # 0.85 .. 0.89: the five highest good parts below the threshold
    assert int(((good >= low) & (good < high)).sum()) == 5


def test_parts_at_or_above_the_threshold_are_rejected_not_reviewed_and_no_band_at_zero_share():
    good = np.array([0.1, 0.2, 0.3, 0.95, 0.97])
    low, high = good_review_band(good, 0.9, 0.4)  # two of five parts: the two highest below 0.9
    assert low == pytest.approx(0.15) and high == 0.9
    assert good_review_band(good, 0.9, 0.0) is None
    assert good_review_band(np.array([0.95, 0.97]), 0.9, 0.5) is None  # nothing below the threshold to send


def finder() -> FlawNet:
    torch.manual_seed(0)
    return FlawNet(PatchFeatures([2, 4], 1, 64, imagenet=False), 8, part_window(16, 0.45)).eval()


def test_without_a_classifier_the_defect_probability_is_the_flaw_finders_score():
    anomaly, images = finder(), torch.rand(3, 1, 64, 64)
    score, amap = anomaly(images)
    decider = GoodPartsOnly(anomaly).eval()
    assert torch.allclose(torch.sigmoid(decider(images)), score, atol=1e-6)
    same_score, same_map, pooled = decider.scored(images)  # one pass: the score, its map and the guard's features
    assert torch.equal(same_score, score) and torch.equal(same_map, amap) and pooled.shape[0] == 3 and pooled.dim() == 2
    probability, departure, shipped_map = ProbabilityNet(decider, 1.0, None, anomaly).eval()(images)
    assert torch.equal(probability, score) and torch.equal(departure, score) and torch.equal(shipped_map, amap)


def no_classifier_checkpoint(path):
    save_checkpoint(path, {}, None, {"classifier": False, "class_names": ["ok_front", "def_front"], "epoch": 0})
    return path


def test_a_checkpoint_without_a_classifier_loads_only_with_the_flaw_finder(tmp_path):
    checkpoint = no_classifier_checkpoint(tmp_path / "model.safetensors")
    with pytest.raises(InspectionError, match="holds no classifier"):
        load_checkpoint(checkpoint)
    params = fast_section("anomaly", tmp_path)
    params = dataclasses.replace(params, taps=[2, 4], input_size=64, flaws=dataclasses.replace(params.flaws, width=8))
    save_patchcore(tmp_path / "flaws.safetensors", finder(), _spec(params, 0.7))
    decider, metadata, anomaly, threshold = load_inspector(checkpoint, tmp_path / "flaws.safetensors")
    assert isinstance(decider, GoodPartsOnly) and threshold == 0.7
    assert decider.anomaly is not anomaly  # its own copy goes to the device; anomaly_scores runs the other on the CPU
    images = torch.rand(2, 1, 64, 64)
    assert torch.equal(decider.scored(images)[0], anomaly(images)[0])
    assert metadata["classifier"] is False
    features = PatchFeatures([2, 4], 1, 64, imagenet=False)
    bank = PatchCore(features, torch.rand(32, features(torch.zeros(1, 1, 64, 64)).shape[1]), part_window(16, 0.45))
    save_patchcore(tmp_path / "bank.safetensors", bank, _spec(dataclasses.replace(params, method="patchcore"), 3.0))
    with pytest.raises(InspectionError, match="needs anomaly.method: flaws"):
        load_inspector(checkpoint, tmp_path / "bank.safetensors")
