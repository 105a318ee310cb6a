"""Torn, stitched, partial and painted-over frames through the shipped model, as `predict` decides them: how many
come back `ok`.

Frames are made from the validation split's original 300 x 300 photos (never test): halves of two parts side by side or one above the other,
a defective half beside a good half, swapped quarters, a frame whose bottom is the empty table, the hub or a patch of
the rim painted over in the table's grey. Each goes through `Inspector.inspect` (the exported ONNX model with its guard)
as a PNG the camera could have sent. It also prints the most blocks inside a flat patch (the guard's flat check) that
the prepared photos of each split and the re-taken test photos show.
Usage (after `make repro`): python bench/bench_torn.py [--per-kind 100] [--model models/model.onnx]
"""

from __future__ import annotations

import argparse
import io
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from casting_inspection.data.background import background_level  # noqa: E402
from casting_inspection.data.plausibility import photo_statistics  # noqa: E402
from casting_inspection.serving.inference import Inspector  # noqa: E402

SIDE = 300


def frames(images: np.ndarray, labels: np.ndarray, n: int, seed: int) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    big = lambda i: images[i]  # noqa: E731  (the camera's own 300 x 300 frames)
    good, bad = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    out = []
    for _ in range(n):
        a, b = big(rng.integers(len(images))), big(rng.integers(len(images)))
        cut, h = int(rng.integers(int(SIDE * 0.3), int(SIDE * 0.7))), SIDE // 2
        out.append(("halves of two parts, side by side", np.concatenate([a[:, :cut], b[:, cut:]], axis=1)))
        out.append(("halves of two parts, one above the other", np.concatenate([a[:cut], b[cut:]], axis=0)))
        d, g = big(rng.choice(bad)), big(rng.choice(good))
        out.append(("a defective half beside a good half", np.concatenate([d[:, :cut], g[:, cut:]], axis=1)))
        out.append(("quarters swapped", np.block([[a[h:, h:], a[h:, :h]], [a[:h, h:], a[:h, :h]]])))
        partial = a.copy()
        partial[cut:] = int(np.median(a[:4]))
        out.append(("bottom of the frame is the empty table", partial))
        out.append(("the hub painted over in the table's grey", painted_over(a, 0.0, int(rng.integers(30, 50)))))
        out.append(("a patch of the rim painted over in the table's grey", painted_over(a, 0.33, int(rng.integers(15, 25)))))
        out.append(("a whole validation photo (control)", a))
    return out


def painted_over(image: np.ndarray, distance: float, radius: int) -> np.ndarray:
    """A disc of `radius` px filled with the table's level, `distance` (a fraction of the side) right of the part's
    centre: what a label, tape or an editor's fill leaves."""
    statistics = photo_statistics(image[None, None])
    cy = (0.5 + float(statistics["offset_y"][0])) * SIDE
    cx = (0.5 + float(statistics["offset_x"][0]) + distance) * SIDE
    rows, cols = np.ogrid[:SIDE, :SIDE]
    out = image.copy()
    out[(rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2] = int(background_level(image[None])[0, 0, 0])
    return out


def flat_maxima() -> None:
    """The guard's flat statistic on real photos: the most blocks inside a flat patch, per split and line change."""
    for split in ("train", "val", "test"):
        flat = photo_statistics(np.load(ROOT / f"data/prepared/{split}.npy"))["flat"]
        print(f"  flat blocks, {split:<5} photos: most {flat.max():.0f}, photos with any {int((flat > 0).sum())} of {len(flat)}")
    renders = np.load(ROOT / "data/retaken/renders.npy", mmap_mode="r")
    index = pd.read_json(ROOT / "data/retaken/index.json", typ="series")
    for (change, strength), photos in zip(index["settings"], renders):
        flat = photo_statistics(np.asarray(photos))["flat"]
        print(f"  flat blocks, test re-taken, {change} {strength:g}: most {flat.max():.0f}")


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, "PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-kind", type=int, default=100)
    parser.add_argument("--model", type=Path, default=ROOT / "models/model.onnx")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    inspector = Inspector(args.model)
    manifest = pd.read_csv(ROOT / "data/prepared/manifest.csv")
    rows = manifest[manifest["split"] == "val"]
    val = np.stack([np.asarray(Image.open(ROOT / "data/raw" / path).convert("L")) for path in rows["path"]])
    labels = (rows["label"] == "def_front").to_numpy().astype(int)
    items = frames(val, labels, args.per_kind, args.seed)
    results = inspector.inspect([(kind, png(array)) for kind, array in items])
    decisions: dict[str, Counter] = {}
    for (kind, _), result in zip(items, results):
        decisions.setdefault(kind, Counter())[result.decision or "skipped"] += 1
    print(f"model {inspector.version}; {args.per_kind} frames per kind from validation photos, decided as predict does")
    for kind, counts in decisions.items():
        total = sum(counts.values())
        print(f"  {kind:<52} ok {counts['ok'] / total:6.1%}  not_a_part {counts['not_a_part'] / total:6.1%}  {dict(counts)}")
    flat_maxima()


if __name__ == "__main__":
    main()
