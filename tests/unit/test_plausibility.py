"""Is this a part photo at all: a torn or stitched frame has a straight cut with texture on both sides."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from casting_inspection.data.plausibility import (
    LAYOUT_GRID,
    flat_limit,
    implausible,
    layout_cells,
    layout_model,
    layout_problem,
    layout_score,
    part_range,
    photo_statistics,
    seam_limit,
)
from helpers import part_image


def grey(*images) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.uint8)[None] for image in images])


def test_halves_of_two_parts_are_cut_a_shifted_part_is_not_and_swapped_quarters_are_no_part():
    parts = [np.asarray(part_image(i % 2 == 1, i, size=128)) for i in range(40)]
    limit = seam_limit(photo_statistics(grey(*parts)), 1.2)
    a, b = np.asarray(part_image(False, 100, size=128)), np.asarray(part_image(True, 101, size=128))
    side_by_side = np.concatenate([a[:, :60], b[:, 60:]], axis=1)
    one_above = np.concatenate([a[:70], b[70:]], axis=0)
    quarters = np.block([[a[64:, 64:], a[64:, :64]], [a[:64, 64:], a[:64, :64]]])
    shifted = np.full_like(a, int(np.median(a[:4])))
    shifted[:, 12:] = a[:, :-12]  # the camera's view moved: a flat strip, no tear
    seams = photo_statistics(grey(side_by_side, one_above, shifted, a))["seam"]
    assert (seams[:2] > limit).all(), (seams, limit)
    assert (seams[2:] <= limit).all(), (seams, limit)
    # swapped quarters of a centred part leave table on both sides of the cuts: the part checks name it
    rules = {"exposure": [0.0, 1.0], "min_contrast": 0.0, "max_clipped": 1.0, "max_aspect": 1.25}
    rules |= {"part": part_range(photo_statistics(grey(*parts)), 0.02), "max_seam": limit}
    assert implausible(photo_statistics(grey(quarters)), [(128, 128)], rules)[0].startswith("no part where parts are")


def test_a_torn_frame_is_named_as_such():
    parts = [np.asarray(part_image(False, i, size=128)) for i in range(40)]
    statistics = photo_statistics(grey(*parts))
    rules = {
        "exposure": [0.0, 1.0],
        "min_contrast": 0.0,
        "max_clipped": 1.0,
        "max_aspect": 1.25,
        "part": {},
        "max_seam": seam_limit(statistics, 1.2),
    }
    a, b = parts[0], np.asarray(part_image(True, 101, size=128))  # another disc level: the halves do not match
    torn = np.concatenate([a[:, :60], b[:, 60:]], axis=1)
    reasons = implausible(photo_statistics(grey(torn, a)), [(128, 128)] * 2, rules)
    assert reasons[0].startswith("a straight cut across the frame") and reasons[1] is None
    rules.pop("max_seam")  # a model exported without the check: no seam rule to apply
    assert implausible(photo_statistics(grey(torn)), [(128, 128)], rules) == [None]


def filling_part(seed: int, size: int = 128) -> np.ndarray:
    """A part that nearly fills the frame, as the line's photos do: rim, dark ring, hub."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.normal(200, 6, (size, size)).clip(0, 255).astype(np.uint8))
    draw, centre = ImageDraw.Draw(image), size / 2 + rng.uniform(-2, 2)
    for radius, fill in ((0.47, int(rng.integers(150, 170))), (0.30, 40), (0.12, 120)):
        draw.ellipse([centre - radius * size, centre - radius * size, centre + radius * size, centre + radius * size], fill=fill)
    return np.asarray(image)


def test_swapped_quarters_of_a_part_that_fills_the_frame_are_not_laid_out_as_a_part():
    parts = [filling_part(i) for i in range(40)]
    statistics = photo_statistics(grey(*parts))
    rules = {"exposure": [0.0, 1.0], "min_contrast": 0.0, "max_clipped": 1.0, "max_aspect": 1.25}
    rules |= {"part": part_range(statistics, 0.08), "max_seam": seam_limit(statistics, 1.2)}
    a = filling_part(100)
    quarters = np.block([[a[64:, 64:], a[64:, :64]], [a[:64, 64:], a[:64, :64]]])  # four quarter parts in the corners
    dimmer = (a * 0.7).astype(np.uint8)  # the lamp at x0.7: the same layout
    frames = grey(quarters, a, dimmer)
    assert implausible(photo_statistics(frames), [(128, 128)] * 3, rules) == [None] * 3  # position, size and seam pass it
    rules["layout"] = layout_model(statistics, 1.2)
    reasons = implausible(photo_statistics(frames), [(128, 128)] * 3, rules)
    assert reasons[0].startswith("not laid out as a part photo") and reasons[1:] == [None, None], reasons


def test_a_part_moved_as_far_as_training_moved_it_is_laid_out_as_a_part_and_the_limit_is_training_s_most():
    parts = [filling_part(i) for i in range(40)]
    moved = [np.roll(part, (dy, dx), axis=(0, 1)) for part in parts for dy, dx in ((0, 8), (-8, 0), (6, -6))]
    statistics = photo_statistics(grey(*parts, *moved))  # the guard is fitted on the photos and their shifted copies
    model = layout_model(statistics, 1.2)
    scores = layout_score(statistics["layout"], model)
    assert model["limit"] == np.quantile(scores, 0.999) * 1.2
    a = filling_part(100)
    frames = grey(np.roll(a, (0, 7), axis=(0, 1)), np.roll(a, (5, -5), axis=(0, 1)), np.roll(a, (64, 64), axis=(0, 1)))
    assert list(layout_score(photo_statistics(frames)["layout"], model) > model["limit"]) == [False, False, True]


def test_layout_cells_are_each_cell_s_mean_in_the_photo_s_standard_deviations_at_any_size():
    gray = np.random.default_rng(0).random((2, 100, 75))
    edges_y, edges_x = (np.arange(LAYOUT_GRID + 1) * side // LAYOUT_GRID for side in gray.shape[1:])
    for photo, cells in zip(gray, layout_cells(gray)):
        expected = [
            (photo[y0:y1, x0:x1].mean() - photo.mean()) / (photo.std() + 1e-3)
            for y0, y1 in zip(edges_y, edges_y[1:])
            for x0, x1 in zip(edges_x, edges_x[1:])
        ]
        np.testing.assert_allclose(cells, expected, atol=1e-12)


def test_a_layout_rule_read_from_a_model_file_is_checked_before_it_is_applied():
    good = {"mean": [0.0] * 64, "scale": [1.0] * 64, "limit": 2.0}
    assert layout_problem(None) is None and layout_problem(good) is None
    assert "64 cells" in layout_problem({**good, "mean": [0.0] * 16})
    assert "64 cells" in layout_problem({**good, "scale": [0.0] * 64})
    assert "lacks" in layout_problem({"mean": good["mean"]})
    assert "limit" in layout_problem({**good, "limit": float("nan")})


def cast_part(seed: int, size: int = 128) -> np.ndarray:
    """A part whose every surface is rough, as a casting's is: the filling part with grain all over."""
    rng = np.random.default_rng(seed + 1000)
    return (filling_part(seed, size) + rng.normal(0, 4, (size, size))).clip(0, 255).astype(np.uint8)


def test_a_flat_patch_on_a_cast_part_is_no_part_photo_and_the_lamps_clipping_is_not_one():
    parts = [cast_part(i) for i in range(20)]
    statistics = photo_statistics(grey(*parts))
    rules = {"exposure": [0.0, 1.0], "min_contrast": 0.0, "max_clipped": 1.0, "max_aspect": 1.25, "part": {}}
    rules["max_flat"] = flat_limit(statistics, 2)
    assert rules["max_flat"] == 2  # rough all over: no block of any training part lies inside a flat patch
    labelled, clipped, dimmed, small = cast_part(100), cast_part(101), cast_part(102), cast_part(103)
    labelled[40:64, 70:94] = 128  # a grey label (or an editor's fill) 24 px across on the rim
    clipped[40:64, 70:94] = 255  # the lamp burning out a patch: clipping, not a patch
    dimmed[40:64, 70:94] = 255
    dimmed = (dimmed * 0.92).astype(np.uint8)  # ... and a gain after the clip: the plateau is the photo's brightest
    small[40:50, 70:80] = 128  # a flat spot 10 px across: no block lies inside it with a flat ring round it
    photos = grey(labelled, clipped, dimmed, small, parts[0])
    reasons = implausible(photo_statistics(photos), [(128, 128)] * 5, rules)
    assert reasons[0].startswith("a flat patch on the part") and reasons[1:] == [None] * 4, reasons


def test_generated_parts_drawn_flat_stay_within_the_limit_their_training_sets():
    """The pipeline's tests draw parts with flat fills: the limit fitted on some of them holds the others, defective
    ones included, so those photos are decided, not called no part."""
    train = [np.asarray(part_image(i % 2 == 1, i, size=128)) for i in range(40)]
    limit = flat_limit(photo_statistics(grey(*train)), 2)
    held_out = [np.asarray(part_image(i % 2 == 1, i, size=128)) for i in range(40, 120)]
    assert limit > 2 and (photo_statistics(grey(*held_out))["flat"] <= limit).all()
