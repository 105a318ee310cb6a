"""Which painted defects does the shipped model of good parts let through? The paint stage records how far each
defect moves the grey level of the network's 128-pixel input at most; here that change is also compared with the
unpainted surface's own roughness around the defect (the grey levels' spread in the 9 x 9 pixels centred on it).
The share decided `ok` by the model of good parts alone is printed per band. Test photos are not read.

Usage: PYTHONPATH=src python bench/painted_visibility.py (after `dvc repro anomaly`).
"""

from casting_inspection.core.numerics import pin_numerics

pin_numerics()

import argparse
from pathlib import Path

import numpy as np

from casting_inspection.data.dataset import load_split
from casting_inspection.evaluation.metrics import shipped_by_change
from casting_inspection.evaluation.painted_set import load_painted
from casting_inspection.modeling.patchcore import anomaly_scores, load_anomaly

BANDS = [10, 20, 40, 80]  # edges between bands of the largest change of grey level (evaluate's rule, finer)
RATIOS = [0, 1, 2, 4, 8, np.inf]  # that change over the surface's own spread around the defect


def over_roughness(changes: np.ndarray, clean: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Per photo: the defect's largest grey-level change (the paint stage's figure) over the unpainted surface's
    spread in the 9 x 9 pixels around the defect's centre."""
    side = clean.shape[-1]
    spread = []
    for image, (row, col) in zip(clean[:, 0], centres):
        r, c = int(row * side), int(col * side)
        spread.append(image[max(r - 4, 0) : r + 5, max(c - 4, 0) : c + 5].astype(np.float64).std())
    return changes / np.maximum(np.array(spread), 1.0)


def print_table(title: str, labels: list[str], rows: dict[str, list[str]]) -> None:
    print(f"\n{title}\n\n| kind | " + " | ".join(labels) + " |\n|---|" + "---|" * len(labels))
    for kind, cells in rows.items():
        print(f"| {kind} | " + " | ".join(cells) + " |")


def by_change(deltas: dict, shipped: dict) -> None:
    """Bands of grey-level change as evaluate draws them (metrics.shipped_by_change)."""
    figures = {kind: shipped_by_change(shipped[kind], deltas[kind], BANDS) for kind in deltas}
    labels = list(next(iter(figures.values())))
    rows = {
        kind: [f"{c['ok']:.0%} of {c['photos']}" if c["photos"] else "–" for c in bands.values()]
        for kind, bands in figures.items()
    }
    print_table("Share decided ok by the largest change of grey level (128-pixel input):", labels, rows)


def by_ratio(ratios: dict, shipped: dict) -> None:
    labels = [f"{lo:g}–{hi:g}" for lo, hi in zip(RATIOS[:-1], RATIOS[1:])]
    rows = {}
    for kind, values in ratios.items():
        band = np.digitize(values, RATIOS[1:-1])
        rows[kind] = [
            f"{shipped[kind][band == b].mean():.0%} of {(band == b).sum()}" if (band == b).any() else "–"
            for b in range(len(labels))
        ]
    print_table("Share decided ok by that change over the surface's own spread around the defect:", labels, rows)


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
        deltas[kind] = painted.index.changes[kind]
        ratios[kind] = over_roughness(deltas[kind], clean, painted.index.centres[kind])
        print(f"{kind}: {shipped[kind].mean():.1%} ok; median change {np.median(deltas[kind]):.0f} grey levels")
    by_change(deltas, shipped)
    by_ratio(ratios, shipped)


if __name__ == "__main__":
    main()
