"""`predict --maps`: each photo's anomaly map over it, written beside the decisions."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from casting_inspection.core.files import atomic_path
from casting_inspection.core.overlay import overlay

LONGEST_STEM = 120  # bytes of a photo's name kept whole in its map's name: a file system takes 255 bytes at most


def map_name(photo: str, taken: set[str]) -> str:
    """`<photo stem>.anomaly.png`, numbered when two photos of one name come from different folders; a very long
    stem is cut, with a digest of the whole, so that its map can still be written."""
    stem = Path(photo).stem or "photo"
    if len(stem.encode("utf-8", "surrogateescape")) > LONGEST_STEM:
        digest = hashlib.sha256(stem.encode("utf-8", "surrogateescape")).hexdigest()[:12]
        stem = f"{stem[: LONGEST_STEM // 4]}-{digest}"
    name, n = f"{stem}.anomaly.png", 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}.anomaly.png"
    taken.add(name)
    return name


def write_overlay(path: Path, image: np.ndarray, anomaly_map: np.ndarray, threshold: float) -> None:
    """A photo the model failed on has no map (NaN): drawn without red, its reason is in its row."""
    with atomic_path(Path(path)) as tmp:
        overlay(image, np.nan_to_num(anomaly_map), threshold).save(tmp, format="PNG")
