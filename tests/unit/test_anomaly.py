"""The model of good parts on generated parts: painted defects land on the part, score above the good parts they were
painted on, and the map points at them; the bank is a deterministic function of its inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from casting_inspection.core.errors import InspectionError
from casting_inspection.data.images import preprocess
from casting_inspection.evaluation.anomaly import painted_figures, peak_on_defect
from casting_inspection.evaluation.departures import score_departures
from casting_inspection.evaluation.departures_set import departures_of, load_departures, retaken_key
from casting_inspection.evaluation.painted import KINDS, paint, painted_photos, part_disc, rng_for
from casting_inspection.evaluation.painted_set import PaintedIndex, load_painted, save_images, save_index
from casting_inspection.modeling.patchcore import (
    PatchCore,
    PatchFeatures,
    anomaly_scores,
    greedy_coreset,
    load_anomaly,
    part_window,
    save_patchcore,
)
from helpers import part_image

SIDE = 96


def good_parts(n: int, seed: int) -> list[Image.Image]:
    return [part_image(False, seed + i, size=SIDE) for i in range(n)]


@pytest.fixture(scope="module")
def fitted():
    images = torch.from_numpy(np.stack([preprocess(im, 64, "L") for im in good_parts(24, 0)]))
    features = PatchFeatures([2, 4], 1, 128)
    with torch.no_grad():
        described = features(images.float() / 255)
    window = part_window(described.shape[-1], 0.45)
    patches = described.permute(0, 2, 3, 1)[:, window.bool()].reshape(-1, described.shape[1]).contiguous()
    bank = patches[greedy_coreset(patches, 400, seed=0)]
    return PatchCore(features, bank, window).eval()


def test_the_part_is_found_where_it_was_drawn():
    image = part_image(False, 3, size=SIDE)
    row, col, radius = part_disc(np.asarray(image, np.float32))
    assert abs(row - SIDE / 2) <= 4 and abs(col - SIDE / 2) <= 4 and abs(radius - 0.38 * SIDE) <= 4


def test_the_rim_is_found_though_the_dark_inner_ring_is_sharper():
    """An impeller: a bright flange hardly lighter than the table, around a dark ring with a hard edge."""
    side = 128
    image = Image.new("L", (side, side), 150)
    draw = ImageDraw.Draw(image)
    draw.ellipse([side * 0.1, side * 0.1, side * 0.9, side * 0.9], fill=175)  # flange: radius 0.4
    draw.ellipse([side * 0.25, side * 0.25, side * 0.75, side * 0.75], fill=20)  # dark ring: radius 0.25
    _, _, radius = part_disc(np.asarray(image, np.float32))
    assert abs(radius - 0.4 * side) <= 3


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_changes_the_photo_on_the_part_only_and_is_repeatable(kind):
    image = part_image(False, 5, size=SIDE)
    painted, (row, col) = paint(image, kind, rng_for(0, kind, "a.png"), SIDE / 64)
    again, _ = paint(image, kind, rng_for(0, kind, "a.png"), SIDE / 64)
    changed = np.abs(np.asarray(painted, int) - np.asarray(image, int)) > 0
    assert changed.any() and np.array_equal(np.asarray(painted), np.asarray(again))
    assert np.hypot(row - 0.5, col - 0.5) <= 0.45  # on the part (the chip: on its rim)
    rows, cols = np.nonzero(changed)
    assert np.hypot(rows.mean() / SIDE - row, cols.mean() / SIDE - col) < 0.1


def test_a_painted_defect_scores_above_good_parts_and_the_map_points_at_it(fitted, tmp_path):
    clean = good_parts(12, 100)
    for i, image in enumerate(clean):
        image.save(tmp_path / f"{i}.png")
    paths = [f"{i}.png" for i in range(len(clean))]
    spec = {"image_size": 64, "color_mode": "L"}
    clean_scores, _ = anomaly_scores(fitted, torch.from_numpy(np.stack([preprocess(im, 64, "L") for im in clean])), 8)
    painted, centres, _ = painted_photos(tmp_path, paths, "blob", 0, spec)
    scores, maps = anomaly_scores(fitted, painted, 8)
    assert np.median(scores) > np.max(clean_scores)
    assert peak_on_defect(maps, centres, 0.1).mean() >= 0.75


def test_where_the_map_points_is_counted_on_every_painted_part_and_on_those_rejected():
    clean = np.array([0.1, 0.2, 0.3, 0.4])
    scores = np.array([0.9, 0.8, 0.2, 0.1])  # two rejected at 0.5, two passed as good
    on_defect = np.array([True, False, True, True])
    figures = painted_figures(scores, clean, 0.5, on_defect)
    assert figures["decided_ok"] == 0.5
    assert figures["map_peak_on_defect"] == 0.75
    assert figures["map_peak_on_defect_rejected"] == 0.5  # the passed parts' maps do not count here
    assert figures["auroc"] == 0.625  # 10 of 16 pairs ordered, ties counting half
    assert painted_figures(scores, clean, 0.95, on_defect)["map_peak_on_defect_rejected"] is None  # none rejected


def test_each_painted_defect_carries_the_largest_change_it_makes_in_the_prepared_photo(tmp_path):
    clean = good_parts(4, 200)
    for i, image in enumerate(clean):
        image.save(tmp_path / f"{i}.png")
    painted, _, changes = painted_photos(
        tmp_path, [f"{i}.png" for i in range(4)], "hole", 0, {"image_size": 64, "color_mode": "L"}
    )
    prepared = np.stack([preprocess(im, 64, "L") for im in clean]).astype(int)
    expected = np.abs(painted.numpy().astype(int) - prepared).reshape(4, -1).max(1)
    assert np.array_equal(changes, expected) and (changes > 0).all()


def test_a_painted_set_reads_back_as_written(tmp_path):
    centres = {"hole": np.array([[0.25, 0.5]]), "blob": np.array([[0.5, 0.75]])}
    changes = {"hole": np.array([37]), "blob": np.array([0])}
    save_index(tmp_path, PaintedIndex(["hole"], "blob", ["val/a.png"], [(300, 300)], centres, changes))
    for kind in ("hole", "blob"):
        save_images(tmp_path, kind, torch.zeros(1, 1, 8, 8, dtype=torch.uint8))
    painted = load_painted(tmp_path)
    assert painted.kinds == ["hole"] and painted.held_out == "blob" and painted.index.sizes == [(300, 300)]
    assert {kind: value.tolist() for kind, value in painted.index.changes.items()} == {"hole": [37], "blob": [0]}
    assert np.array_equal(painted.index.centres["blob"], centres["blob"])


def test_a_painted_index_without_changes_asks_for_the_paint_stage_again(tmp_path):
    (tmp_path / "painted.json").write_text(
        '{"kinds": ["hole"], "held_out": "blob", "paths": [], "sizes": [], "centres": {"hole": [], "blob": []}}'
    )
    with pytest.raises(InspectionError, match=r"painted.json comes from an older version; run the paint stage again"):
        load_painted(tmp_path)


def test_a_saved_model_scores_as_the_fitted_one(fitted, tmp_path):
    save_patchcore(tmp_path / "anomaly.safetensors", fitted, {"taps": [2, 4], "input_size": 128, "threshold": 1.5})
    loaded, threshold = load_anomaly(tmp_path / "anomaly.safetensors")
    images = torch.from_numpy(np.stack([preprocess(im, 64, "L") for im in good_parts(4, 50)]))
    assert threshold == 1.5
    assert np.array_equal(anomaly_scores(loaded, images, 4)[0], anomaly_scores(fitted, images, 4)[0])


def test_the_coreset_covers_the_points_and_is_deterministic():
    points = torch.cat([torch.randn(500, 8), torch.eye(3, 8) * 30])  # three rare points far from the rest and each other
    chosen = greedy_coreset(points, 20, seed=1)
    assert torch.equal(chosen, greedy_coreset(points, 20, seed=1))
    assert {500, 501, 502} <= set(chosen.tolist())  # a random sample of 20 would likely miss them


def test_a_brighter_or_flatter_exposure_is_not_a_departure(fitted):
    """Each photo is standardised before the filters: the lamp's level and the exposure's spread change no score."""
    images = torch.from_numpy(np.stack([preprocess(im, 64, "L") for im in good_parts(6, 300)])).float()
    base, _ = anomaly_scores(fitted, images.round().to(torch.uint8), 6)
    for gain, offset in ((0.8, 10.0), (1.15, -20.0)):
        changed = (images * gain + offset).clamp(0, 255).round().to(torch.uint8)
        moved, _ = anomaly_scores(fitted, changed, 6)
        assert np.abs(moved - base).max() < 0.05 * base.max(), (gain, offset)


def test_scores_written_once_are_the_scores_computed_in_place_and_never_another_sets(fitted, tmp_path):
    """The departures stages score each set once; evaluate and robustness read them instead of scoring again, and
    refuse scores made by another model of good parts or of other photos, even with the same count."""
    path = tmp_path / "anomaly.safetensors"
    save_patchcore(path, fitted, {"taps": [2, 4], "input_size": 128, "threshold": 1.5})
    good = torch.from_numpy(np.stack([preprocess(im, 64, "L") for im in good_parts(40, 60)]))  # two batches of 32
    sets = {"val": good[:35], "test": good[35:], retaken_key("jpeg", 20.0): good[:3]}
    out = tmp_path / "departures.safetensors"
    assert score_departures(path, sets, 128, out, maps=("test",)) == {"val": 35, "test": 5, "retaken/jpeg/20": 3}
    again = tmp_path / "again.safetensors"
    score_departures(path, sets, 128, again, maps=("test",))
    assert again.read_bytes() == out.read_bytes()  # a DVC output: the same bytes from the same model and photos
    stored, (loaded, _) = load_departures(out, path), load_anomaly(path)
    for name, images in sets.items():
        assert np.array_equal(departures_of(stored, name, images), anomaly_scores(loaded, images, 128)[0])  # bit for bit
    assert np.array_equal(departures_of(stored, "test", sets["test"], maps=True), anomaly_scores(loaded, sets["test"], 128)[1])
    with pytest.raises(InspectionError, match=r"departures.safetensors: no scores for these 35 photos of val; run `dvc"):
        departures_of(stored, "val", good[5:40])  # as many photos, other ones: refused, never misaligned
    with pytest.raises(InspectionError, match="no scores for these 3 photos of painted/hole"):
        departures_of(stored, "painted/hole", good[:3])
    save_patchcore(path, fitted, {"taps": [2, 4], "input_size": 128, "threshold": 1.7})  # the model of good parts changed
    with pytest.raises(InspectionError, match=r"scored by another model of good parts than .*anomaly.safetensors; run"):
        load_departures(out, path)
    with pytest.raises(InspectionError, match="missing; run the stage"):
        load_departures(tmp_path / "nowhere.safetensors", path)
