"""The model of good parts' scores as the departures and retaken_departures stages write them: one safetensors file
each, a float64 score array per named set of photos (`val`, `test`, `painted/KIND`, `retaken/CHANGE/STRENGTH`) and
the float32 maps of the sets that keep them (`test_maps`). Its metadata holds the SHA-256 of the model of good parts
that scored them and of each set's photos, so a reader never pairs scores with another model or other photos, even
outside `dvc repro`. Evaluate and robustness read them; the scoring is departures.py's."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from casting_inspection.core.errors import InspectionError
from casting_inspection.core.files import atomic_path

MAPS = "_maps"  # suffix of the key that holds a set's anomaly maps (the test split's only)


def retaken_key(change: str, strength: float) -> str:
    return f"retaken/{change}/{strength:g}"


def fingerprint(photos) -> str:
    """SHA-256 of a set of uint8 photos (a tensor or an array), in order."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(photos)).tobytes()).hexdigest()


def model_fingerprint(anomaly_path: Path) -> str:
    return hashlib.sha256(Path(anomaly_path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class Departures:
    path: Path
    scores: dict[str, np.ndarray]
    photos: dict[str, str]  # set name -> fingerprint of the photos scored


def save_departures(path: Path, arrays: dict[str, np.ndarray], anomaly_path: Path, sets: dict) -> None:
    photos = {name: fingerprint(images) for name, images in sets.items()}
    # one metadata entry: safetensors writes several in a random order, and the file's bytes would follow it
    metadata = {"fingerprints": json.dumps({"anomaly": model_fingerprint(anomaly_path), "photos": photos}, sort_keys=True)}
    with atomic_path(Path(path)) as tmp:
        save_file({name: np.ascontiguousarray(value) for name, value in arrays.items()}, str(tmp), metadata=metadata)


def load_departures(path: Path, anomaly_path: Path) -> Departures:
    """The scores, refused in one line when another model of good parts than `anomaly_path` made them."""
    if not Path(path).is_file():
        raise InspectionError(f"{path}: missing; run the stage that scores those photos (dvc repro)")
    with safe_open(str(path), "np") as handle:
        fingerprints = json.loads((handle.metadata() or {}).get("fingerprints", "{}"))
    if fingerprints.get("anomaly") != model_fingerprint(anomaly_path):
        raise InspectionError(f"{path}: scored by another model of good parts than {anomaly_path}; run `dvc repro`")
    return Departures(Path(path), load_file(str(path)), fingerprints.get("photos", {}))


def departures_of(departures: Departures, name: str, photos, maps: bool = False) -> np.ndarray:
    """The scores (or maps) of one set, checked against the photos being judged: never another set's scores."""
    scores = departures.scores.get(name + (MAPS if maps else ""))
    if scores is None or departures.photos.get(name) != fingerprint(photos):
        raise InspectionError(
            f"{departures.path}: no scores for these {len(photos)} photos of {name}; run `dvc repro` to score them again"
        )
    return scores
