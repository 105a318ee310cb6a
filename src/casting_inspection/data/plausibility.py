"""Is this photo a plausible part photo at all? Checks on the photo itself, before any decision is trusted.

A line camera also sends black frames (lamp off), blown-out or flat frames, crops and mis-sized captures,
and frames where the part is missing or misplaced, and torn or stitched frames (a straight cut with texture on
both sides: two parts' halves, swapped quarters). Exposure is checked against fixed sane bounds (wide
enough for the lamp drifting x0.7-x1.3), the capture's aspect ratio against a limit, the part's
position and size against the range seen in training, with a margin, and the frame's layout (where part
and table lie, at 8 x 8 cells) against the training photos'. NumPy only and batched, so the
serving path pays microseconds per image.
"""

from __future__ import annotations

import math

import numpy as np

from casting_inspection.data.background import background_level

PART_CONTRAST = 0.08  # grey levels (0-1) by which a part's pixel differs from the table
SEAM_FLOOR = 3 / 255  # a side of a cut whose lines vary less than this is a flat fill (a shift's uncovered strip), not a tear
SEAM_OFFSET = 2 / 255  # keeps the seam score finite on flat lines
PART_STATISTICS = ("offset_x", "offset_y", "radius", "roundness")  # where the part lies and how round it is
LAYOUT_GRID = 8  # cells per side of a frame's layout: at 128 px a cell of 16 px sees the part's rings and the table, not texture
LAYOUT_FLOOR = 0.05  # added to each layout cell's spread (in the photo's own standard deviations): the steady table corners
FLAT_GRID = 32  # blocks per side where flatness is judged: 4 x 4 pixels at 128
FLAT_SPREAD = 1 / 255  # a block whose grey levels' standard deviation is under this is flat: no cast surface is
FLAT_EDGE = 3 / 255  # blocks this near the photo's own darkest or brightest level are clipping (the lamp, the camera's
# range, a gain after it), not a patch
FLAT_ON_PART = 0.9  # flat blocks count within this share of the part's radius (its edge against the table is no patch)


def seam_score(gray: np.ndarray) -> np.ndarray:
    """Per grey image (N, H, W) in [0, 1]: how much the strongest full-length straight line (a row or a column)
    jumps over its neighbours, counting only lines with texture on both sides. A torn or stitched frame has one;
    a photo of a round part does not, nor does a shifted photo beside its flat fill."""
    scores = [_column_seams(gray), _column_seams(np.swapaxes(gray, 1, 2))]
    return np.maximum(*scores)


def _column_seams(gray: np.ndarray) -> np.ndarray:
    jump = np.abs(np.diff(gray, axis=2)).mean(axis=1)  # (N, W - 1): mean step across each column boundary
    padded = np.pad(jump, ((0, 0), (3, 3)), mode="edge")
    width = jump.shape[1]
    baseline = np.median(np.stack([padded[:, i : i + width] for i in (0, 1, 5, 6)]), axis=0)
    texture = np.cumsum(np.pad(gray.std(axis=1), ((0, 0), (1, 0))), axis=1)  # running sum of each column's spread
    index = np.arange(width)
    left_lo, right_hi = np.maximum(index - 2, 0), np.minimum(index + 4, width + 1)
    left = (texture[:, index + 1] - texture[:, left_lo]) / (index + 1 - left_lo)
    right = (texture[:, right_hi] - texture[:, index + 1]) / (right_hi - index - 1)
    score = (jump - baseline) / (baseline + SEAM_OFFSET)
    return np.where(np.minimum(left, right) > SEAM_FLOOR, score, 0.0).max(axis=1)


def photo_statistics(images: np.ndarray, chunk: int = 128) -> dict[str, np.ndarray]:
    """`_photo_statistics` a chunk of images at a time: the float copies of a chunk stay in the CPU's cache, which
    is 4x faster on thousands of images than one pass over all of them (and gives the same values)."""
    images = np.asarray(images)
    if len(images) <= chunk:
        return _photo_statistics(images)
    parts = [_photo_statistics(images[i : i + chunk]) for i in range(0, len(images), chunk)]
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def _photo_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per uint8 image (N, C, H, W): brightness, contrast, clipped share (near 0 or 255), the part's centre
    (offset from the frame centre) and radius (sqrt of its area / pi) as fractions of the side, and its
    roundness: how much of it a disc of the same area at the same centre covers (intersection over union;
    an impeller is round, a bar, a triangle or a cut-off part is not)."""
    gray = np.asarray(images).astype(np.float32).mean(axis=1) / 255  # (N, H, W)
    height, width = gray.shape[-2:]
    difference = np.abs(gray - background_level(gray[:, None])[:, 0])
    mass = np.maximum(difference.sum(axis=(1, 2)), 1e-6)
    ys = np.linspace(-0.5, 0.5, height, dtype=np.float32).reshape(1, height, 1)
    xs = np.linspace(-0.5, 0.5, width, dtype=np.float32).reshape(1, 1, width)
    part = difference > PART_CONTRAST
    offset_x, offset_y = (difference * xs).sum(axis=(1, 2)) / mass, (difference * ys).sum(axis=(1, 2)) / mass
    radius = np.sqrt(part.mean(axis=(1, 2)) / np.pi)
    disc = (xs - offset_x[:, None, None]) ** 2 + (ys - offset_y[:, None, None]) ** 2 <= radius[:, None, None] ** 2
    union = np.maximum((part | disc).sum(axis=(1, 2)), 1)
    return {
        "flat": flat_blocks(gray, offset_x, offset_y, radius),
        "brightness": gray.mean(axis=(1, 2)),
        "contrast": gray.std(axis=(1, 2)),
        "clipped": ((gray <= 5 / 255) | (gray >= 250 / 255)).mean(axis=(1, 2)),
        "offset_x": offset_x,
        "offset_y": offset_y,
        "radius": radius,
        "roundness": (part & disc).sum(axis=(1, 2)) / union,
        "seam": seam_score(gray),
        "layout": layout_cells(gray),
    }


def flat_blocks(gray: np.ndarray, offset_x: np.ndarray, offset_y: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Per grey image (N, H, W) in [0, 1]: how many blocks on the part are flat, neither at the photo's darkest nor at
    its brightest level, and ringed by such blocks: the inside of a flat patch at least 3 blocks across. A cast surface
    never is; a grey label, tape, a region painted over or filled by an editor is."""
    height, width = gray.shape[-2:]
    rows, cols = height // FLAT_GRID, width // FLAT_GRID
    if not rows or not cols or not len(gray):
        return np.zeros(len(gray))
    cut = gray[:, : rows * FLAT_GRID, : cols * FLAT_GRID].reshape(len(gray), FLAT_GRID, rows, FLAT_GRID, cols)
    spread, level = cut.std(axis=(2, 4)), cut.mean(axis=(2, 4))
    ys = ((np.arange(FLAT_GRID) + 0.5) * rows / height - 0.5)[None, :, None]  # block centres, as fractions of the side
    xs = ((np.arange(FLAT_GRID) + 0.5) * cols / width - 0.5)[None, None, :]
    distance2 = (ys - offset_y[:, None, None]) ** 2 + (xs - offset_x[:, None, None]) ** 2
    on_part = distance2 <= (FLAT_ON_PART * radius[:, None, None]) ** 2
    darkest, brightest = gray.min(axis=(1, 2))[:, None, None], gray.max(axis=(1, 2))[:, None, None]
    inside_range = (level > darkest + FLAT_EDGE) & (level < brightest - FLAT_EDGE)
    flat = (spread < FLAT_SPREAD) & inside_range & on_part
    padded = np.pad(flat, ((0, 0), (1, 1), (1, 1)))
    inside = np.ones_like(flat)
    for dy in range(3):
        for dx in range(3):
            inside &= padded[:, dy : dy + FLAT_GRID, dx : dx + FLAT_GRID]
    return inside.sum(axis=(1, 2)).astype(np.float64)


def layout_cells(gray: np.ndarray) -> np.ndarray:
    """(N, H, W) grey in [0, 1] -> (N, LAYOUT_GRID ** 2): each cell's mean in the photo's own standard deviations from
    its own mean, so the lamp level and contrast do not count, only where bright and dark lie in the frame."""
    gray = gray.astype(np.float64)
    rows, cols = (np.arange(LAYOUT_GRID) * side // LAYOUT_GRID for side in gray.shape[1:])
    sums = np.add.reduceat(np.add.reduceat(gray, rows, axis=1), cols, axis=2)
    counts = np.outer(np.diff(np.append(rows, gray.shape[1])), np.diff(np.append(cols, gray.shape[2])))
    cells = (sums / counts).reshape(len(gray), -1)  # the cells' means first: the standardising is then 64 values a photo
    return (cells - gray.mean(axis=(1, 2))[:, None]) / (gray.std(axis=(1, 2))[:, None] + 1e-3)


def layout_model(statistics: dict[str, np.ndarray], margin: float) -> dict:
    """The training photos' layout: each cell's mean and spread, and the largest departure they show (99.9 %) times
    `margin`. Above it, the part is not where a part lies, or the frame is cut up (quarters swapped, half table).
    It also bounds how far off-centre a part may be: a little beyond the augmentation's shifts it is fitted on."""
    cells = statistics["layout"].astype(np.float64)
    model = {"mean": cells.mean(axis=0).tolist(), "scale": (cells.std(axis=0) + LAYOUT_FLOOR).tolist()}
    return model | {"limit": float(np.quantile(layout_score(cells, model), 0.999)) * margin}


def layout_problem(model: dict | None) -> str | None:
    """Why a layout rule read from a model file cannot be applied (another grid, a number missing), or None."""
    if model is None:
        return None
    cells = LAYOUT_GRID**2
    try:
        mean, scale, limit = (np.asarray(model[key], dtype=np.float64) for key in ("mean", "scale", "limit"))
    except (KeyError, TypeError, ValueError):
        return "the guard's layout rule lacks its mean, scale or limit"
    if mean.shape != (cells,) or scale.shape != (cells,) or not (scale > 0).all() or not np.isfinite(mean).all():
        return f"the guard's layout rule is not {cells} cells with a positive spread each"
    return None if limit.shape == () and np.isfinite(limit) and limit > 0 else "the guard's layout limit is not a number > 0"


def rules_problem(rules: dict) -> str | None:
    """Why photo-check rules read from a model file could not all be applied (a limit missing, not a number, or a
    range upside down), or None: a check that silently compares with nothing would let any photo through."""

    def number(value) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

    def span(value) -> bool:
        return isinstance(value, list) and len(value) == 2 and all(map(number, value)) and value[0] <= value[1]

    if rules.get("novelty_threshold") is not None and not number(rules["novelty_threshold"]):
        return "the guard's novelty threshold is not a number"
    if not span(rules.get("exposure")):
        return "the guard's exposure range is not [low, high]"
    for key in ("min_contrast", "max_clipped", "max_aspect"):
        if not number(rules.get(key)):
            return f"the guard's {key} is not a number"
    for key in ("max_seam", "max_flat"):
        if rules.get(key) is not None and not number(rules[key]):
            return f"the guard's {key} is not a number"
    part = rules.get("part")
    if not isinstance(part, dict) or sorted(part) != sorted(PART_STATISTICS) or not all(map(span, part.values())):
        return f"the guard's part ranges are not [low, high] for each of {', '.join(PART_STATISTICS)}"
    return layout_problem(rules.get("layout"))


def layout_score(cells: np.ndarray, model: dict) -> np.ndarray:
    """Mean squared departure of each photo's layout cells from training's, in training's spreads."""
    return (((cells - np.asarray(model["mean"])) / np.asarray(model["scale"])) ** 2).mean(axis=1)


def part_range(statistics: dict[str, np.ndarray], margin: float) -> dict[str, list[float]]:
    """Where parts are in training photos (0.1-99.9 % of each), widened by `margin` (a fraction of the side),
    and how round they are at least (0.1 % of training photos, less the margin)."""
    ranges = {
        name: [float(np.quantile(statistics[name], 0.001)) - margin, float(np.quantile(statistics[name], 0.999)) + margin]
        for name in PART_STATISTICS[:3]
    }
    return ranges | {"roundness": [float(np.quantile(statistics["roundness"], 0.001)) - margin, 1.0]}


def seam_limit(statistics: dict[str, np.ndarray], factor: float) -> float:
    """The strongest straight cut training photos show (99.9 %), times `factor`: above it, a torn frame."""
    return float(np.quantile(statistics["seam"], 0.999)) * factor


def flat_limit(statistics: dict[str, np.ndarray], margin: int) -> float:
    """The most blocks inside a flat patch that training photos show (99.9 %; none on a real casting), plus `margin`."""
    return float(np.quantile(statistics["flat"], 0.999)) + margin


def implausible(statistics: dict[str, np.ndarray], sizes: list[tuple[int, int]], rules: dict) -> list[str | None]:
    """Per image, the first reason it is not a plausible part photo, or None. `rules`: exposure [low, high],
    min_contrast, max_clipped, max_aspect, `part` ranges from `part_range`, and (when fitted) `max_seam` and `layout`
    from `seam_limit` and `layout_model`, and `max_flat` from `flat_limit`."""
    low, high = rules["exposure"]
    layout = layout_score(statistics["layout"], rules["layout"]) if rules.get("layout") else None
    reasons = []
    for i, (width, height) in enumerate(sizes):
        brightness, contrast = float(statistics["brightness"][i]), float(statistics["contrast"][i])
        if max(width, height) / max(min(width, height), 1) > rules["max_aspect"]:
            reasons.append(f"capture {width}x{height} is not the square-ish frame of a part photo")
        elif not low <= brightness <= high:
            reasons.append(f"{'dark' if brightness < low else 'blown-out'} frame (mean level {brightness:.2f})")
        elif contrast < rules["min_contrast"]:
            reasons.append(f"flat frame (contrast {contrast:.3f}): no part in view")
        elif float(statistics["clipped"][i]) > rules["max_clipped"]:
            reasons.append(f"{float(statistics['clipped'][i]):.0%} of the frame clipped to black or white")
        else:
            outside = [name for name, (lo, hi) in rules["part"].items() if not lo <= float(statistics[name][i]) <= hi]
            seam = float(statistics["seam"][i])
            if outside:
                reasons.append(f"no part where parts are ({', '.join(outside)} outside training's range)")
            elif rules.get("max_seam") is not None and seam > rules["max_seam"]:
                reasons.append(f"a straight cut across the frame (seam {seam:.1f} > {rules['max_seam']:.1f}): torn or stitched?")
            elif layout is not None and layout[i] > rules["layout"]["limit"]:
                limit = rules["layout"]["limit"]
                reasons.append(
                    f"not laid out as a part photo (layout {layout[i]:.1f} > {limit:.1f}): cut up, part off-centre or half missing?"
                )
            elif rules.get("max_flat") is not None and float(statistics["flat"][i]) > rules["max_flat"]:
                flat, limit = int(statistics["flat"][i]), rules["max_flat"]
                reasons.append(f"a flat patch on the part ({flat} flat blocks > {limit:.0f}): a label, tape, or painted over?")
            else:
                reasons.append(None)
    return reasons
