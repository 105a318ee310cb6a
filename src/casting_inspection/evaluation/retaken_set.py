"""The re-taken test photos as the retake stage writes them: every (change, strength) setting's renderings of the
test photos in one uint8 array, and an index. The robustness stage reads them; the rendering itself is retake.py's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from casting_inspection.core.errors import InspectionError

CHANGES = ("brightness", "contrast", "rotation", "shift", "blur", "jpeg")  # the line changes, in params.yaml's order
RENDERS, INDEX = "renders.npy", "index.json"


def settings(strengths: dict[str, list[float]]) -> list[tuple[str, float]]:
    """(change, strength) pairs in the order of CHANGES, from a mapping change -> strengths."""
    return [(change, float(strength)) for change in CHANGES for strength in strengths.get(change, [])]


def load_retaken(retaken_dir: Path, paths: list[str], expected: dict) -> tuple[list[tuple[str, float]], np.ndarray]:
    """The (change, strength) settings and their renderings (settings, images, C, H, W) of these test photos.
    `expected`: seed, image_size and color_mode they must have been rendered with (what the model and params say)."""
    index = json.loads((Path(retaken_dir) / INDEX).read_text())
    chosen = [(change, float(strength)) for change, strength in index["settings"]]
    renders = np.load(Path(retaken_dir) / RENDERS, mmap_mode="r")
    made = {key: index.get(key) for key in expected}
    if index["paths"] != list(paths) or made != expected or renders.shape[:2] != (len(chosen), len(paths)):
        raise InspectionError(f"{retaken_dir} was rendered from other photos or settings ({made}): run `dvc repro retake`")
    return chosen, renders
