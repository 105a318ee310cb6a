"""The flaw finder (a model of good parts trained on good photos with flaws drawn on them): the flaws land on the
part and change it, only the drawn share gets one, the same seed draws the same; a finder trained on generated good
parts scores a painted defect it never saw above clean parts and points at it, and a saved one scores as the fitted."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from casting_inspection.data.images import preprocess
from casting_inspection.evaluation.anomaly import _spec, peak_on_defect
from casting_inspection.evaluation.painted import painted_photos
from casting_inspection.modeling.flaws import FlawTraining, fit_flawnet
from casting_inspection.modeling.patchcore import PatchFeatures, anomaly_scores, load_anomaly, part_window, save_patchcore
from casting_inspection.modeling.synthetic import FlawSettings, draw_flaws, flaw_mask
from helpers import fast_section, part_image

SIDE = 64
SETTINGS = FlawSettings(share=0.5, contrast=(0.5, 1.0), size=(2.0, 12.0), radius=0.35)


def textured(n: int = 32) -> torch.Tensor:
    return torch.rand((n, 1, SIDE, SIDE), generator=torch.Generator().manual_seed(9)) * 0.5 + 0.25


def test_a_share_of_the_photos_get_one_flaw_each_and_its_mask():
    images = textured()
    out, masks = draw_flaws(images, SETTINGS, torch.Generator().manual_seed(0))
    changed = (out - images).abs().flatten(1).amax(1) > 0
    assert 8 <= int(changed.sum()) <= 24  # about half of 32
    assert torch.equal(masks.flatten(1).amax(1) > 0, changed)  # a mask exactly where a photo changed
    big = masks > 0.05
    assert all(float(big[i].sum()) < 0.25 * SIDE * SIDE for i in torch.nonzero(changed).flatten())  # a flaw, not a repaint
    assert torch.equal(images, textured())  # the input is left alone


def test_the_same_seed_draws_the_same_flaws():
    first = draw_flaws(textured(), SETTINGS, torch.Generator().manual_seed(3))
    second = draw_flaws(textured(), SETTINGS, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("radius", [0.1, 0.35])
def test_flaws_are_visible_and_lie_where_they_are_drawn(radius):
    settings = FlawSettings(SETTINGS.share, SETTINGS.contrast, (2.0, 4.0), radius)
    generator, centre, visible = torch.Generator().manual_seed(0), (SIDE - 1) / 2, 0
    for _ in range(40):
        mask = flaw_mask(SIDE, settings, generator)
        assert 0 <= float(mask.min()) and float(mask.max()) <= 1
        if float(mask.max()) < 0.25:  # an irregular patch whose noise crests low draws little or nothing
            continue
        visible += 1
        rows, cols = torch.nonzero(mask > 0.1, as_tuple=True)
        # a flaw starts within `radius` of the centre; a stroke (at most 4 x 4 pixels long here) may run on past it
        assert math.hypot(float(rows.float().mean()) - centre, float(cols.float().mean()) - centre) <= radius * SIDE + 16
    assert visible >= 34


TRAINING = FlawTraining(FlawSettings(0.5, (0.4, 1.0), (2.0, 12.0), 0.35), 16, (3, 4), 12, 5e-3, 16, 10.0, (0.8, 1.2), 0)


def good_photos(n: int = 48) -> torch.Tensor:
    return torch.from_numpy(np.stack([preprocess(part_image(False, i, size=96), 64, "L") for i in range(n)]))


@pytest.fixture(scope="module")
def finder():
    return fit_flawnet(TRAINING, PatchFeatures([2, 4], 1, 128), good_photos(), part_window(32, 0.45))


def test_only_the_head_and_the_tuned_blocks_learn_and_imagenet_statistics_stay():
    features = PatchFeatures([2, 4], 1, 128)
    before = {name: tensor.clone() for name, tensor in features.state_dict().items()}
    short = FlawTraining(TRAINING.flaws, 8, (4,), 1, 5e-3, 16, 10.0, (0.8, 1.2), 0)
    fit_flawnet(short, features, good_photos(16), part_window(32, 0.45))
    changed = {name for name, tensor in features.state_dict().items() if not torch.equal(tensor, before[name])}
    assert changed and all(name.startswith("blocks.4.") for name in changed)  # block 4's weights, nothing else
    assert not any("running_" in name for name in changed)  # BatchNorm keeps ImageNet's statistics


def test_a_photo_of_another_size_than_the_filters_input_trains():
    """The flaws are drawn, and their targets pooled, at the filters' input side: 64-pixel photos into 96."""
    model = fit_flawnet(
        FlawTraining(TRAINING.flaws, 8, (), 1, 5e-3, 16, 10.0, (1.0, 1.0), 0),
        PatchFeatures([2, 4], 1, 96),
        good_photos(16),
        part_window(24, 0.45),
    )
    score, heat = model(good_photos(2).float() / 255)
    assert score.shape == (2,) and heat.shape == (2, 24, 24)


def test_a_painted_defect_it_never_saw_scores_above_good_parts_and_the_map_points_at_it(finder, tmp_path):
    clean = [part_image(False, 100 + i, size=96) for i in range(12)]
    for i, image in enumerate(clean):
        image.save(tmp_path / f"{i}.png")
    clean_scores, _ = anomaly_scores(finder, torch.from_numpy(np.stack([preprocess(im, 64, "L") for im in clean])), 8)
    painted, centres, _ = painted_photos(
        tmp_path, [f"{i}.png" for i in range(12)], "blob", 0, {"image_size": 64, "color_mode": "L"}
    )
    scores, maps = anomaly_scores(finder, painted, 8)
    assert np.median(scores) > np.max(clean_scores)
    assert peak_on_defect(maps, centres, 0.1).mean() >= 0.75


def test_a_saved_finder_scores_as_the_fitted_one(finder, tmp_path):
    params = fast_section("anomaly", tmp_path)
    params = dataclasses.replace(params, taps=[2, 4], input_size=128, flaws=dataclasses.replace(params.flaws, width=16))
    save_patchcore(tmp_path / "anomaly.safetensors", finder, _spec(params, 0.4))
    loaded, threshold = load_anomaly(tmp_path / "anomaly.safetensors")
    images = torch.from_numpy(np.stack([preprocess(part_image(True, i, size=96), 64, "L") for i in range(4)]))
    assert threshold == 0.4 and type(loaded) is type(finder)
    assert np.array_equal(anomaly_scores(loaded, images, 4)[0], anomaly_scores(finder, images, 4)[0])
