"""`predict --maps`: each photo's anomaly map over it, written beside the decisions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from casting_inspection.core.files import atomic_path
from casting_inspection.core.overlay import overlay


def map_name(photo: str, taken: set[str]) -> str:
    """`<photo stem>.anomaly.png`, numbered when two photos of one name come from different folders."""
    stem = Path(photo).stem or "photo"
    name, n = f"{stem}.anomaly.png", 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}.anomaly.png"
    taken.add(name)
    return name


def write_overlay(path: Path, image: np.ndarray, anomaly_map: np.ndarray, threshold: float) -> None:
    with atomic_path(Path(path)) as tmp:
        overlay(image, anomaly_map, threshold).save(tmp, format="PNG")
