"""Other ways to read the shipped model of good parts' map, on validation only: for each way of turning a photo's
map into its score, the share of each painted kind decided `ok` at the threshold that rejects
`anomaly.reject_share` of the unpainted validation good parts. Normalisations take their statistics from train
good photos. The test split is not read.

Usage (after `dvc repro paint anomaly`): PYTHONPATH=src python bench/map_scores.py [--train-photos 1200]
"""

from casting_inspection.core.numerics import pin_numerics

pin_numerics()

import argparse
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import uniform_filter

from casting_inspection.core.params import load_section
from casting_inspection.data.dataset import load_split
from casting_inspection.evaluation.painted_set import load_painted
from casting_inspection.modeling.patchcore import anomaly_scores, load_anomaly

RINGS = 12


def logit(maps: np.ndarray) -> np.ndarray:
    p = np.clip(maps, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def ring_of_each_cell(side: int, radius: float) -> np.ndarray:
    centres = (np.arange(side) + 0.5) / side - 0.5
    distance = np.sqrt(centres[:, None] ** 2 + centres[None, :] ** 2)
    return np.minimum((distance / radius * RINGS).astype(int), RINGS - 1)


def standardised(reference: np.ndarray, window: np.ndarray, rings: np.ndarray | None, spread: bool):
    """A score: the peak of each cell's logit less the good parts' mean there (per cell, or per ring), and divided
    by their spread when `spread`."""
    values = logit(reference)
    mean, std = values.mean(0), values.std(0) + 1e-3
    if rings is not None:
        for ring in range(RINGS):
            cells = (rings == ring) & window
            if cells.any():
                mean[cells], std[cells] = values[:, cells].mean(), values[:, cells].std() + 1e-3
    scale = std if spread else 1.0
    return lambda maps: np.where(window, (logit(maps) - mean) / scale, -np.inf).reshape(len(maps), -1).max(1)


def ways(reference: np.ndarray, window: np.ndarray, radius: float) -> dict:
    def flat(maps):
        return maps.reshape(len(maps), -1)

    rings = ring_of_each_cell(window.shape[0], radius)
    return {
        "the map's peak (shipped)": lambda maps: flat(maps).max(1),
        "mean of the two highest cells": lambda maps: np.sort(flat(maps), 1)[:, -2:].mean(1),
        "peak of the map averaged over 2 x 2 cells": lambda maps: flat(uniform_filter(maps, size=(1, 2, 2))).max(1),
        "peak of the map averaged over 3 x 3 cells": lambda maps: flat(uniform_filter(maps, size=(1, 3, 3))).max(1),
        "peak of each cell's logit less its mean over the train good maps": standardised(reference, window, None, False),
        "the same, also divided by the cell's spread": standardised(reference, window, None, True),
        f"the same per ring around the centre ({RINGS} rings) instead of per cell": standardised(reference, window, rings, True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-photos", type=int, default=1200, help="train good photos drawn for the statistics")
    parser.add_argument("--model", type=Path, default=Path("models/anomaly.safetensors"))
    args = parser.parse_args()
    params = load_section("anomaly")
    model, _ = load_anomaly(args.model)
    train, val = load_split(Path("data/prepared"), "train"), load_split(Path("data/prepared"), "val")
    good = train.images[train.labels == 0]
    drawn = good[torch.randperm(len(good), generator=torch.Generator().manual_seed(0))[: args.train_photos]]
    reference = anomaly_scores(model, drawn, params.batch_size)[1]
    clean = anomaly_scores(model, val.images[val.labels == 0], params.batch_size)[1]
    painted = load_painted(Path("data/painted"))
    kinds = [*painted.kinds, painted.held_out]
    maps = {kind: anomaly_scores(model, painted.images[kind], params.batch_size)[1] for kind in kinds}
    window = model.window.numpy() > 0
    print("| photo's score | " + " | ".join(kinds[:-1]) + f" | {kinds[-1]} (held out) | mean, chosen kinds |")
    print("|---|" + "---|" * (len(kinds) + 1))
    for name, score in ways(reference, window, params.window).items():
        threshold = np.quantile(score(clean), 1 - params.reject_share)
        shares = [float(np.mean(score(maps[kind]) < threshold)) for kind in kinds]
        cells = " | ".join(f"{share:.1%}" for share in shares)
        print(f"| {name} | {cells} | {np.mean(shares[:-1]):.1%} |", flush=True)


if __name__ == "__main__":
    main()
