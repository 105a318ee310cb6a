"""The painted validation photos as the paint stage writes them: one uint8 array per kind and an index (which photos,
their sizes, each defect's centre). The anomaly and evaluate stages read them; the painting itself is painted.py's."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from casting_inspection.core.errors import InspectionError
from casting_inspection.core.files import atomic_path, write_json

INDEX = "painted.json"


@dataclass(frozen=True)
class PaintedIndex:
    kinds: list[str]  # chosen on
    held_out: str  # painted, never chosen on
    paths: list[str]
    sizes: list[tuple[int, int]]  # each photo's original (width, height)
    centres: dict[str, np.ndarray]  # kind -> (N, 2) defect centres, (row, col) fractions of the frame
    changes: dict[str, np.ndarray]  # kind -> (N,) largest change of grey level each defect makes in the prepared photo


@dataclass(frozen=True)
class PaintedSet:
    """The validation good photos, each painted once with each kind, as the network sees them."""

    index: PaintedIndex
    images: dict[str, torch.Tensor]  # kind -> uint8 (N, C, H, W)

    @property
    def kinds(self) -> list[str]:
        return self.index.kinds

    @property
    def held_out(self) -> str:
        return self.index.held_out


def save_images(out_dir: Path, kind: str, images: torch.Tensor) -> None:
    with atomic_path(Path(out_dir) / f"{kind}.npy") as tmp, open(tmp, "wb") as handle:
        np.save(handle, images.numpy())


def save_index(out_dir: Path, index: PaintedIndex) -> None:
    write_json(
        Path(out_dir) / INDEX,
        {
            "kinds": index.kinds,
            "held_out": index.held_out,
            "paths": index.paths,
            "sizes": [list(size) for size in index.sizes],
            "centres": {kind: np.round(value, 6).tolist() for kind, value in index.centres.items()},
            "changes": {kind: value.tolist() for kind, value in index.changes.items()},
        },
    )


def load_painted(painted_dir: Path) -> PaintedSet:
    index_path = Path(painted_dir) / INDEX
    if not index_path.exists():
        raise InspectionError(f"{index_path}: missing; run the paint stage first (dvc repro paint)")
    raw = json.loads(index_path.read_text())
    if "changes" not in raw:
        raise InspectionError(f"{index_path} comes from an older version; run the paint stage again (dvc repro paint)")
    kinds = [*raw["kinds"], raw["held_out"]]
    centres = {kind: np.array(raw["centres"][kind], dtype=np.float64).reshape(-1, 2) for kind in kinds}
    changes = {kind: np.array(raw["changes"][kind], dtype=np.int64) for kind in kinds}
    sizes = [tuple(size) for size in raw["sizes"]]
    index = PaintedIndex(raw["kinds"], raw["held_out"], raw["paths"], sizes, centres, changes)
    return PaintedSet(index, {kind: torch.from_numpy(np.load(Path(painted_dir) / f"{kind}.npy")) for kind in kinds})
