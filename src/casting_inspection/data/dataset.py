"""Read the prepared array cache: images as uint8 tensors (N, C, H, W) with their labels and paths."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from casting_inspection import CLASS_NAMES
from casting_inspection.core.errors import InspectionError


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # float32 (N,), 1 = defective
    paths: list[str]
    leaked: np.ndarray  # bool (N,): a byte-identical copy exists in the official train split
    near_duplicate: np.ndarray  # bool (N,): a near copy (pHash) exists in the train or validation split
    sizes: list[tuple[int, int]]  # each photo's original (width, height)

    @property
    def leak_free(self) -> np.ndarray:
        return ~(self.leaked | self.near_duplicate)

    def good(self) -> Split:
        """The good photos alone: all that a product with good photos only has to choose with."""
        keep = (self.labels == 0).numpy()
        rows = np.flatnonzero(keep)
        return Split(
            self.images[torch.from_numpy(keep)],
            self.labels[torch.from_numpy(keep)],
            [self.paths[i] for i in rows],
            self.leaked[keep],
            self.near_duplicate[keep],
            [self.sizes[i] for i in rows],
        )


def load_split(prepared_dir: Path, split: str) -> Split:
    prepared_dir = Path(prepared_dir)
    array_path = prepared_dir / f"{split}.npy"
    if not array_path.exists():
        raise InspectionError(f"{array_path}: missing; run the prepare stage first (dvc repro prepare)")
    manifest = pd.read_csv(prepared_dir / "manifest.csv", keep_default_na=False)
    if "near_duplicate_of" not in manifest:
        raise InspectionError(f"{prepared_dir / 'manifest.csv'} comes from an older version; run the prepare stage again")
    rows = manifest[manifest["split"] == split].sort_values("index")
    images = torch.from_numpy(np.load(array_path))
    if len(rows) != len(images):
        raise InspectionError(f"{array_path} does not match manifest.csv; run the prepare stage again")
    labels = torch.tensor([CLASS_NAMES.index(label) for label in rows["label"]], dtype=torch.float32)
    near = rows["near_duplicate_of"].astype(str).ne("").to_numpy()
    sizes = list(zip(pd.to_numeric(rows["width"]).astype(int), pd.to_numeric(rows["height"]).astype(int)))
    return Split(images, labels, rows["path"].tolist(), rows["leaked"].astype(str).eq("True").to_numpy(), near, sizes)


def load_preprocessing(prepared_dir: Path) -> dict:
    return json.loads((Path(prepared_dir) / "preprocessing.json").read_text())
