"""The flaw finder (a model of good parts trained on good photos with flaws drawn on them): the flaws land on the
part and change it, only the drawn share gets one, the same seed draws the same; a finder trained on generated good
parts scores a painted defect it never saw above clean parts and points at it, and a saved one scores as the fitted."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from casting_inspection.data.images import preprocess
from casting_inspection.evaluation.anomaly import peak_on_defect
from casting_inspection.evaluation.painted import painted_photos
from casting_inspection.modeling.flaws import FlawTraining, fit_flawnet
from casting_inspection.modeling.patchcore import PatchFeatures, anomaly_scores, load_anomaly, part_window, save_patchcore
from casting_inspection.modeling.synthetic import FlawSettings, draw_flaws, flaw_mask
from helpers import part_image

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
    assert torch.allclose(masks, (out - images).abs().amax(1))
    assert torch.equal(images, textured())  # the input is left alone


def test_the_same_seed_draws_the_same_flaws():
    first = draw_flaws(textured(), SETTINGS, torch.Generator().manual_seed(3))
    second = draw_flaws(textured(), SETTINGS, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("seed", range(20))
def test_a_flaw_is_visible_and_lies_on_the_part(seed):
    mask = flaw_mask(SIDE, SETTINGS, torch.Generator().manual_seed(seed))
    assert float(mask.max()) >= 0.5 and 0 <= float(mask.min())
    rows, cols = torch.nonzero(mask > 0.25, as_tuple=True)
    centre = (SIDE - 1) / 2
    # a flaw starts within `radius` of the centre; a long stroke may run a little past it
    assert math.hypot(float(rows.float().mean()) - centre, float(cols.float().mean()) - centre) <= 0.5 * SIDE


@pytest.fixture(scope="module")
def finder():
    good = torch.from_numpy(np.stack([preprocess(part_image(False, i, size=96), 64, "L") for i in range(48)]))
    features = PatchFeatures([2, 4], 1, 128)
    training = FlawTraining(FlawSettings(0.5, (0.4, 1.0), (2.0, 12.0), 0.35), 16, (3, 4), 12, 5e-3, 16, 10.0, (0.8, 1.2), 0)
    return fit_flawnet(training, features, good, part_window(32, 0.45))


def test_a_painted_defect_it_never_saw_scores_above_good_parts_and_the_map_points_at_it(finder, tmp_path):
    clean = [part_image(False, 100 + i, size=96) for i in range(12)]
    for i, image in enumerate(clean):
        image.save(tmp_path / f"{i}.png")
    clean_scores, _ = anomaly_scores(finder, torch.from_numpy(np.stack([preprocess(im, 64, "L") for im in clean])), 8)
    painted, centres = painted_photos(tmp_path, [f"{i}.png" for i in range(12)], "blob", 0, {"image_size": 64, "color_mode": "L"})
    scores, maps = anomaly_scores(finder, painted, 8)
    assert np.median(scores) > np.max(clean_scores)
    assert peak_on_defect(maps, centres, 0.1).mean() >= 0.75


def test_a_saved_finder_scores_as_the_fitted_one(finder, tmp_path):
    spec = {"method": "flaws", "taps": [2, 4], "input_size": 128, "width": 16, "threshold": 0.4}
    save_patchcore(tmp_path / "anomaly.safetensors", finder, spec)
    loaded, threshold = load_anomaly(tmp_path / "anomaly.safetensors")
    images = torch.from_numpy(np.stack([preprocess(part_image(True, i, size=96), 64, "L") for i in range(4)]))
    assert threshold == 0.4 and type(loaded) is type(finder)
    assert np.array_equal(anomaly_scores(loaded, images, 4)[0], anomaly_scores(finder, images, 4)[0])
