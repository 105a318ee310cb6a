"""Line changes re-take a photo as a camera would; the moved part uncovers table, not black; renderings are reproducible."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from casting_inspection.core.params import AugmentParams, load_section
from casting_inspection.data.background import background_level
from casting_inspection.evaluation.perturbations import perturb, rng_for
from casting_inspection.evaluation.retake import render
from casting_inspection.evaluation.retaken_set import CHANGES, settings
from casting_inspection.evaluation.robustness import good_rejected, robustness_metrics
from casting_inspection.modeling.augmentation import augmentation_from
from helpers import PROJECT, jpeg_bytes, part_image


@pytest.fixture
def photo() -> Image.Image:
    return part_image(defective=True, seed=3, size=96).convert("RGB")


def corners(array: np.ndarray) -> np.ndarray:
    return np.concatenate([array[:3, :3].ravel(), array[:3, -3:].ravel(), array[-3:, :3].ravel(), array[-3:, -3:].ravel()])


def test_every_change_changes_the_photo_and_keeps_its_size(photo):
    original = np.asarray(photo).astype(int)
    for change, strength in [
        ("brightness", 0.3),
        ("contrast", 0.2),
        ("rotation", 15),
        ("shift", 10),
        ("blur", 1.6),
        ("jpeg", 35),
    ]:
        changed = perturb(photo, change, strength, np.random.default_rng(0))
        assert changed.size == photo.size and changed.mode == photo.mode, change
        assert np.abs(np.asarray(changed).astype(int) - original).mean() > 0.5, change


def test_brightness_scales_the_exposure_either_way(photo):
    changed = [perturb(photo, "brightness", 0.3, np.random.default_rng(s)).convert("L") for s in range(8)]
    ratios = sorted({round(float(np.asarray(c).mean() / np.asarray(photo.convert("L")).mean()), 1) for c in changed})
    assert ratios == [0.7, 1.3]


def test_rotation_and_shift_uncover_the_table_not_black(photo):
    level = background_level(np.asarray(photo).transpose(2, 0, 1)).flatten()
    assert 185 < level[0] < 215  # the generated table is about 200
    for change, strength in [("rotation", 30), ("shift", 8)]:
        moved = np.asarray(perturb(photo, change, strength, np.random.default_rng(1)).convert("L"))
        assert np.abs(corners(moved) - float(level[0])).max() < 25, change


def test_same_image_and_setting_give_the_same_rendering(photo):
    a = perturb(photo, "shift", 20, rng_for(0, "shift", 20.0, "test/x.jpeg"))
    b = perturb(photo, "shift", 20, rng_for(0, "shift", 20.0, "test/x.jpeg"))
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_unknown_change_is_refused(photo):
    with pytest.raises(ValueError, match="unknown change"):
        perturb(photo, "fog", 1.0, np.random.default_rng(0))


@pytest.mark.slow
def test_rendering_is_the_same_with_one_or_two_worker_processes(tmp_path):
    paths = []
    for i in range(6):
        (tmp_path / f"{i}.jpeg").write_bytes(jpeg_bytes(part_image(i % 2 == 0, seed=i, size=80)))
        paths.append(f"{i}.jpeg")
    params = load_section("robustness", PROJECT / "params.yaml")
    chosen = settings({change: getattr(params, change) for change in CHANGES})
    assert {change for change, _ in chosen} == set(CHANGES)
    one = render(tmp_path, paths, chosen, seed=0, image_size=32, color_mode="L", workers=1)
    two = render(tmp_path, paths, chosen, seed=0, image_size=32, color_mode="L", workers=2)
    assert one.shape == (len(chosen), 6, 1, 32, 32) and one.dtype == np.uint8
    assert np.array_equal(one, two)


def test_robustness_metrics_count_per_change_and_name_the_worst():
    labels = np.array([1, 1, 0, 0])
    chosen = [("brightness", 0.3), ("blur", 1.6)]
    probabilities = np.array([[0.9, 0.2, 0.1, 0.7], [0.9, 0.8, 0.1, 0.2]])
    clean = np.array([0.9, 0.9, 0.1, 0.1])
    report = robustness_metrics(probabilities, labels, chosen, threshold=0.5, clean_probabilities=clean)
    assert report["brightness"]["0.3"] == {"accuracy": 0.5, "missed_defects": 1, "false_rejects": 1, "flip_rate": 0.5}
    assert report["blur"]["1.6"]["accuracy"] == 1.0
    assert report["worst"] == {"accuracy": 0.5, "change": "brightness 0.3", "max_missed_defects": 1}


def test_training_placement_fills_corners_with_each_images_own_background():
    dark, light = torch.full((1, 1, 32, 32), 0.2), torch.full((1, 1, 32, 32), 0.8)
    for image in (dark, light):
        image[..., 8:24, 8:24] = 0.5
    augment = augmentation_from(
        dataclasses.asdict(
            AugmentParams(
                flip=False, rotate90=False, degrees=45, translate=0.2, scale=0.0, brightness=0.0, contrast=0.0, blur=0.0, group=2
            )
        )
    )
    torch.manual_seed(0)
    moved = augment(torch.cat([dark, light]))
    assert not torch.equal(moved, torch.cat([dark, light]))
    assert torch.allclose(moved[0, 0, 0, 0], torch.tensor(0.2), atol=1e-4)
    assert torch.allclose(moved[1, 0, 0, 0], torch.tensor(0.8), atol=1e-4)


def test_renderings_from_other_photos_or_settings_are_refused_with_what_to_run(tmp_path):
    import json

    from casting_inspection.core.errors import InspectionError
    from casting_inspection.evaluation.retaken_set import INDEX, RENDERS, load_retaken

    np.save(tmp_path / RENDERS, np.zeros((2, 3, 1, 8, 8), np.uint8))
    made = {"seed": 0, "image_size": 8, "color_mode": "L"}
    index = {"settings": [["blur", 0.8], ["jpeg", 75]], "paths": ["a", "b", "c"], **made}
    (tmp_path / INDEX).write_text(json.dumps(index))
    chosen, renders = load_retaken(tmp_path, ["a", "b", "c"], made)
    assert chosen == [("blur", 0.8), ("jpeg", 75.0)] and renders.shape == (2, 3, 1, 8, 8)
    for paths, expected in (
        (["a", "b"], made),
        (["a", "b", "c"], made | {"seed": 1}),
        (["a", "b", "c"], made | {"image_size": 16}),
    ):
        with pytest.raises(InspectionError, match="run `dvc repro retake`"):
            load_retaken(tmp_path, paths, expected)
    np.save(tmp_path / RENDERS, np.zeros((1, 3, 1, 8, 8), np.uint8))  # fewer settings than the index names
    with pytest.raises(InspectionError, match="run `dvc repro retake`"):
        load_retaken(tmp_path, ["a", "b", "c"], made)


def test_a_line_change_is_charged_only_for_the_good_parts_accepted_as_taken():
    threshold = 0.5
    as_taken = np.array([0.9, 0.1, 0.2, 0.3])  # the first is already rejected as taken
    retaken = np.array([0.95, 0.6, 0.1, 0.2])
    assert good_rejected(retaken, as_taken, threshold) == {
        "anomaly_rejected_good": 0.5,  # 2 of 4
        "anomaly_rejected_by_change": round(1 / 3, 4),  # of the 3 accepted as taken, 1 rejected re-taken
    }
    assert good_rejected(retaken, np.ones(4), threshold)["anomaly_rejected_by_change"] is None  # none accepted
