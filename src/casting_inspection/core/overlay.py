"""How an anomaly map is shown over a photo, for a person to look where the model of good parts points: one drawing
for the report's galleries, `predict --maps`, `watch` and the review page. NumPy and Pillow only."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

SIDE = 256  # pixels of the written overlay
FLOOR = 0.6  # share of the threshold below which a patch is not coloured


def overlay(image: np.ndarray, anomaly_map: np.ndarray, threshold: float) -> Image.Image:
    """The photo (uint8, C x H x W) in grey with the map in red: none below FLOOR of the threshold (a good part's
    patches lie there), full red at the threshold and above."""
    grey = Image.fromarray(np.asarray(image).astype(np.float32).mean(axis=0).round().astype(np.uint8)).resize((SIDE, SIDE))
    share = (np.asarray(anomaly_map, np.float32) / threshold - FLOOR) / (1 - FLOOR)
    heat = Image.fromarray((np.clip(share, 0, 1) * 255).astype(np.uint8))
    alpha = np.asarray(heat.resize((SIDE, SIDE), Image.Resampling.BILINEAR), np.float32)[..., None] / 255 * 0.6
    base = np.repeat(np.asarray(grey, np.float32)[..., None], 3, axis=2)
    red = np.array([255.0, 32.0, 0.0])
    return Image.fromarray((base * (1 - alpha) + red * alpha).round().astype(np.uint8))


def tile_grid(tiles: list[tuple[Image.Image, str]], columns: int, title: str) -> Image.Image:
    """Overlays in rows of `columns`, each with its caption, under a title line."""
    rows = max(1, -(-len(tiles) // columns))
    sheet = Image.new("RGB", (columns * SIDE, 24 + rows * (SIDE + 18)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 6), title, fill="black")
    for i, (image, caption) in enumerate(tiles):
        x, y = (i % columns) * SIDE, 24 + (i // columns) * (SIDE + 18)
        sheet.paste(image, (x, y))
        draw.text((x + 4, y + SIDE + 3), caption, fill="black")
    return sheet
