"""Drift statistics move the way a camera change moves them, and a drifted batch raises the alarm."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from casting_inspection.core.params import load_section
from casting_inspection.data import drift
from casting_inspection.data.images import preprocess
from casting_inspection.evaluation.perturbations import perturb
from helpers import PROJECT, part_image


def batch(n: int, first_seed: int, change: str | None = None, strength: float = 0.0) -> torch.Tensor:
    arrays = []
    for seed in range(first_seed, first_seed + n):
        image = part_image(seed % 2 == 0, seed, size=96)
        if change:
            image = perturb(image, change, strength, np.random.default_rng(seed))
        arrays.append(preprocess(image, 48, "L"))
    return torch.from_numpy(np.stack(arrays))


@pytest.fixture(scope="module")
def reference():
    params = load_section("prepare", PROJECT / "params.yaml").drift
    return drift.reference(drift.image_statistics(batch(120, 0)), params.quantiles, params.alarm_share)


def test_statistics_follow_the_camera():
    clean = drift.image_statistics(batch(10, 500))
    darker = drift.image_statistics((batch(10, 500).float() * 0.7).to(torch.uint8))
    assert (darker["brightness"] < clean["brightness"]).all()
    blurred = drift.image_statistics(batch(10, 500, "blur", 2.0))
    assert (blurred["sharpness"] < clean["sharpness"]).all()
    image = np.full((1, 48, 48), 200, np.uint8)
    image[:, 10:30, 26:46] = 60  # a part right of centre, in the top half
    offsets = drift.image_statistics(torch.from_numpy(image[None]))
    assert offsets["offset_x"][0] > 0.1 and offsets["offset_y"][0] < -0.05


def test_batches_like_training_raise_no_alarm_and_drifted_ones_do(reference):
    same = drift.drift_report(drift.image_statistics(batch(60, 1000)), reference)
    assert same["alarm"] == [] and drift.drift_warning(same) is None
    for change, strength, statistic in [("blur", 2.5, "sharpness"), ("shift", 14, "offset_x")]:
        changed = drift.image_statistics(batch(60, 1000, change, strength))
        report = drift.drift_report(changed, reference)
        assert statistic in report["alarm"], (change, report)
        assert statistic in drift.drift_warning(report)
    darker = drift.drift_report(drift.image_statistics((batch(60, 1000).float() * 0.6).to(torch.uint8)), reference)
    assert "brightness" in darker["alarm"] and darker["brightness"]["shift_in_std"] < -2


def test_reference_records_its_rule(reference):
    assert reference["alarm_share"] == 0.05 and reference["quantiles"] == [0.005, 0.995]
    assert set(reference["statistics"]) == set(drift.STATISTICS)
    for r in reference["statistics"].values():
        assert r["low"] <= r["mean"] <= r["high"]
