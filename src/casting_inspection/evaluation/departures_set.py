"""The model of good parts' scores as the departures and retaken_departures stages write them: one safetensors file
each, a float64 score array per named set of photos (`val`, `test`, `painted/KIND`, `retaken/CHANGE/STRENGTH`) and
the float32 maps of the sets that keep them (`test_maps`). Evaluate and robustness read them; the scoring is
departures.py's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from casting_inspection.core.errors import InspectionError
from casting_inspection.core.files import atomic_path

MAPS = "_maps"  # suffix of the key that holds a set's anomaly maps (the test split's only)


def retaken_key(change: str, strength: float) -> str:
    return f"retaken/{change}/{strength:g}"


def save_departures(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(Path(path)) as tmp:
        save_file({name: np.ascontiguousarray(value) for name, value in arrays.items()}, str(tmp))


def load_departures(path: Path) -> dict[str, np.ndarray]:
    if not Path(path).is_file():
        raise InspectionError(f"{path}: missing; run the stage that scores those photos (dvc repro)")
    return load_file(str(path))


def departures_of(departures: dict[str, np.ndarray], name: str, count: int, path: Path) -> np.ndarray:
    """The scores of one set, checked against the photos being judged: never another set's scores."""
    scores = departures.get(name)
    if scores is None or len(scores) != count:
        raise InspectionError(f"{path}: no scores for {count} photos of {name}; run `dvc repro` to score them again")
    return scores
