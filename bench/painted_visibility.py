"""Which painted defects does the shipped model of good parts let through? Each painted validation photo is compared
with the same photo unpainted (the paint stage paints every validation good part once per kind), so the defect's
footprint in the network's 128-pixel input is known exactly: how far it moves the grey level at most, and how that
compares with the surface's own roughness around it (the grey levels' spread in the 9 x 9 pixels centred on the
defect, unpainted). The share decided `ok` by the model of good parts alone is printed per band. Test photos are not read.

Usage: PYTHONPATH=src python bench/painted_visibility.py (after `dvc repro anomaly`).
"""

from casting_inspection.core.numerics import pin_numerics

pin_numerics()

import argparse
from pathlib import Path

import numpy as np

from casting_inspection.data.dataset import load_split
from casting_inspection.evaluation.painted_set import load_painted
from casting_inspection.modeling.patchcore import anomaly_scores, load_anomaly

BANDS = [0, 10, 20, 40, 80, 256]  # largest change of grey level in the 128-pixel input
RATIOS = [0, 1, 2, 4, 8, np.inf]  # that change over the surface's own spread around the defect


def footprint(painted: np.ndarray, clean: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per photo: the largest grey-level change the painting made, and that over the unpainted surface's spread
    in the 9 x 9 pixels around the defect's centre."""
    delta = np.abs(painted.astype(np.int16) - clean.astype(np.int16)).reshape(len(painted), -1).max(1)
    side = clean.shape[-1]
    spread = []
    for image, (row, col) in zip(clean[:, 0], centres):
        r, c = int(row * side), int(col * side)
        spread.append(image[max(r - 4, 0) : r + 5, max(c - 4, 0) : c + 5].astype(np.float64).std())
    return delta, delta / np.maximum(np.array(spread), 1.0)


def table(title: str, edges: list, values: dict, shipped: dict) -> None:
    labels = [f"{lo:g}–{hi:g}" for lo, hi in zip(edges[:-1], edges[1:])]
    print(f"\n{title}\n\n| kind | " + " | ".join(labels) + " |\n|---|" + "---|" * len(labels))
    for kind in values:
        band = np.digitize(values[kind], edges[1:-1])
        cells = []
        for b in range(len(labels)):
            inside = band == b
            cells.append(f"{shipped[kind][inside].mean():.0%} of {inside.sum()}" if inside.any() else "–")
        print(f"| {kind} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/prepared"))
    parser.add_argument("--painted", type=Path, default=Path("data/painted"))
    parser.add_argument("--model", type=Path, default=Path("models/anomaly.safetensors"))
    args = parser.parse_args()
    model, threshold = load_anomaly(args.model)
    val = load_split(args.data, "val")
    clean = val.images[val.labels == 0].numpy()
    painted = load_painted(args.painted)
    deltas, ratios, shipped = {}, {}, {}
    for kind in [*painted.kinds, painted.held_out]:
        images = painted.images[kind]
        scores, _ = anomaly_scores(model, images, 64)
        shipped[kind] = scores < threshold
        deltas[kind], ratios[kind] = footprint(images.numpy(), clean, painted.index.centres[kind])
        print(f"{kind}: {shipped[kind].mean():.1%} ok; median change {np.median(deltas[kind]):.0f} grey levels")
    table("Share decided ok by the largest change of grey level (128-pixel input):", BANDS, deltas, shipped)
    table("Share decided ok by that change over the surface's own spread around the defect:", RATIOS, ratios, shipped)


if __name__ == "__main__":
    main()
