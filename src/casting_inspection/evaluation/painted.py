"""Defects of forms the data set lacks, painted on good parts: the material the anomaly model is chosen and judged on.

Each kind is drawn on the original photo (so the resize to the network's input softens it as it softens a real
flaw), anywhere on the part, at a seeded size, place, angle and contrast. Sizes are in pixels of the network's input
(`scale` = original side / input side converts them). No photo of the test split is ever painted.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from casting_inspection.core.params import PaintedParams
from casting_inspection.data.background import background_level
from casting_inspection.data.dataset import load_preprocessing, load_split
from casting_inspection.data.images import preprocess
from casting_inspection.evaluation.painted_set import PaintedIndex, save_images, save_index

KINDS = ("hole", "crack", "scratch", "blob", "chip")
SUPERSAMPLE = 4  # masks are drawn this much larger, then shrunk: soft, sub-pixel edges as a lens gives


def rng_for(seed: int, kind: str, path: str, copy: int = 0) -> np.random.Generator:
    """One generator per (seed, kind, photo, copy): the same defect whatever order photos are painted in."""
    digest = hashlib.sha256(f"{seed}/{kind}/{path}/{copy}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def part_disc(gray: np.ndarray, side: int = 128) -> tuple[float, float, float]:
    """The part's centre (row, col) and outer radius in pixels of `gray`: the circle, near the frame's centre, along
    which the brightness changes most (an impeller's rim against the table), searched on a `side`-pixel copy."""
    small = np.asarray(Image.fromarray(gray.astype(np.uint8)).resize((side, side), Image.Resampling.BILINEAR), np.float32)
    gy, gx = np.gradient(small)
    strength = np.hypot(gx, gy).ravel()
    rows, cols = np.mgrid[:side, :side]
    best = (-1.0, 0.0, 0.0, None)
    for dy in range(-9, 10, 3):
        for dx in range(-9, 10, 3):
            cy, cx = (side - 1) / 2 + dy * side / 128, (side - 1) / 2 + dx * side / 128
            ring = np.rint(np.hypot(rows - cy, cols - cx)).astype(int).ravel()
            profile = (np.bincount(ring, strength) / np.maximum(np.bincount(ring), 1))[side // 5 : side // 2]
            if profile.max() > best[0]:
                best = (float(profile.max()), cy, cx, profile)
    # the outermost ring at least a fifth as sharp as the sharpest: the rim against the table is often much softer
    # than the dark inner ring's edge, and the table beyond it far softer still
    profile = best[3]
    radius = side // 5 + int(np.nonzero(profile >= 0.2 * profile.max())[0][-1])
    best = (best[0], best[1], best[2], float(radius))
    factor_y, factor_x = gray.shape[0] / side, gray.shape[1] / side
    return (best[1] + 0.5) * factor_y - 0.5, (best[2] + 0.5) * factor_x - 0.5, best[3] * min(factor_x, factor_y)


def _on_part(rng, disc, inset: float) -> tuple[float, float]:
    """A point drawn uniformly over the part's area, at least `inset` pixels inside its outline."""
    cy, cx, radius = disc
    r, a = (radius - inset) * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
    return cy + r * math.sin(a), cx + r * math.cos(a)


def _mask(size: tuple[int, int], draw) -> np.ndarray:
    """A soft mask in [0, 1] of what `draw(ImageDraw, factor)` paints on a supersampled canvas."""
    canvas = Image.new("L", (size[0] * SUPERSAMPLE, size[1] * SUPERSAMPLE), 0)
    draw(ImageDraw.Draw(canvas), SUPERSAMPLE)
    return np.asarray(canvas.resize(size, Image.Resampling.BOX), dtype=np.float32) / 255


def _walk(rng, start, length: float, step: float, wiggle: float) -> list[tuple[float, float]]:
    angle, (y, x) = rng.uniform(0, 2 * math.pi), start
    points = [(x, y)]
    for _ in range(max(2, int(length / step))):
        angle += rng.normal(0, wiggle)
        x, y = x + step * math.cos(angle), y + step * math.sin(angle)
        points.append((x, y))
    return points


def _shape(kind: str, rng, centre, scale: float, size: tuple[int, int]) -> np.ndarray:
    """The defect's mask; its size in input pixels times `scale`."""
    y, x = centre
    if kind == "hole":  # a round pore: 2-4 input pixels across
        r = rng.uniform(1.0, 2.0) * scale
        return _mask(size, lambda d, f: d.ellipse([(x - r) * f, (y - r) * f, (x + r) * f, (y + r) * f], fill=255))
    if kind in ("crack", "scratch"):  # a crack meanders; a scratch runs nearly straight and longer
        length = rng.uniform(8, 20) * scale if kind == "crack" else rng.uniform(12, 30) * scale
        points = _walk(rng, centre, length, 1.5 * scale, 0.5 if kind == "crack" else 0.04)
        width = max(1.0, rng.uniform(0.6, 1.2) * scale)
        return _mask(size, lambda d, f: d.line([(px * f, py * f) for px, py in points], fill=255, width=round(width * f)))
    if kind == "blob":  # an inclusion or a stain: an irregular patch 3-8 input pixels across
        angles = np.sort(rng.uniform(0, 2 * math.pi, 9))
        radii = rng.uniform(1.5, 4.0, 9) * scale
        points = [(x + r * math.cos(a), y + r * math.sin(a)) for a, r in zip(angles, radii)]
        return _mask(size, lambda d, f: d.polygon([(px * f, py * f) for px, py in points], fill=255))
    raise ValueError(kind)


def paint(image: Image.Image, kind: str, rng: np.random.Generator, scale: float) -> tuple[Image.Image, tuple[float, float]]:
    """`image` (grey) with one defect of `kind`, and the defect's centre as (row, col) fractions of the side."""
    gray = np.asarray(image.convert("L"), dtype=np.float32)
    size = (gray.shape[1], gray.shape[0])
    if kind == "chip":
        return _chip(gray, rng, scale)
    centre = _on_part(rng, part_disc(gray), 5 * scale)
    mask = _shape(kind, rng, centre, scale, size)
    contrast = rng.uniform(0.25, 0.6)
    dark = kind in ("hole", "crack") or (kind == "blob" and rng.random() < 0.5)
    target = np.zeros_like(gray) if dark else np.full_like(gray, 255.0)
    out = gray + contrast * mask * (target - gray)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8)), _centre(mask, size)


def _chip(gray: np.ndarray, rng, scale: float) -> tuple[Image.Image, tuple[float, float]]:
    """A piece broken off the rim: a bite of the part's outline filled with the table's level."""
    cy, cx, radius = part_disc(gray)
    a = rng.uniform(0, 2 * math.pi)
    y, x = cy + radius * math.sin(a), cx + radius * math.cos(a)
    r = rng.uniform(2.0, 4.0) * scale
    size = (gray.shape[1], gray.shape[0])
    mask = _mask(size, lambda d, f: d.ellipse([(x - r) * f, (y - r) * f, (x + r) * f, (y + r) * f], fill=255))
    table = float(background_level(gray[None])[0, 0, 0])
    out = gray + mask * (table - gray)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8)), _centre(mask, size)


def _centre(mask: np.ndarray, size: tuple[int, int]) -> tuple[float, float]:
    rows, cols = np.nonzero(mask > 0.25)
    return float(rows.mean() / size[1]), float(cols.mean() / size[0])


def painted_photos(
    raw_dir: Path, paths: list[str], kind: str, seed: int, spec: dict
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """The photos with one painted defect of `kind` each, prepared as the network sees them; each defect's centre
    (row, col) as fractions of the frame; and the largest change of grey level it makes in that prepared photo (how
    visible it is to the network: a flaw painted dark on a dark vane may change nothing)."""
    arrays, centres, changes = [], [], []
    for path in paths:
        with Image.open(Path(raw_dir) / path) as image:
            image.load()
        painted, centre = paint(image, kind, rng_for(seed, kind, path), image.size[0] / spec["image_size"])
        array = preprocess(painted, spec["image_size"], spec["color_mode"])
        clean = preprocess(image.convert("L"), spec["image_size"], spec["color_mode"])  # painting greys the photo
        arrays.append(array), centres.append(centre)
        changes.append(int(np.abs(array.astype(np.int16) - clean.astype(np.int16)).max()))
    return torch.from_numpy(np.stack(arrays)), np.array(centres), np.array(changes, dtype=np.int64)


def paint_validation(params: PaintedParams, prepared_dir: Path, raw_dir: Path, out_dir: Path) -> dict:
    """Paint every validation good photo once with each kind and write the arrays with an index: what the anomaly
    stage chooses and judges on, and what evaluate decides as the shipped model would."""
    val = load_split(prepared_dir, "val")
    good = (val.labels == 0).tolist()
    paths = [path for path, keep in zip(val.paths, good) if keep]
    sizes = [(int(width), int(height)) for (width, height), keep in zip(val.sizes, good) if keep]
    spec, centres, changes = load_preprocessing(prepared_dir), {}, {}
    for kind in [*params.kinds, params.held_out]:
        images, centres[kind], changes[kind] = painted_photos(raw_dir, paths, kind, params.seed, spec)
        save_images(out_dir, kind, images)
    save_index(out_dir, PaintedIndex(list(params.kinds), params.held_out, paths, sizes, centres, changes))
    return {"photos_per_kind": len(paths), "kinds": [*params.kinds, params.held_out]}
