"""Torn, stitched and partial frames through the shipped model, as `predict` decides them: how many come back `ok`.

Frames are made from the validation split's original 300 x 300 photos (never test): halves of two parts side by side or one above the other,
a defective half beside a good half, swapped quarters, a frame whose bottom is the empty table. Each goes
through `Inspector.inspect` (the exported ONNX model with its guard) as a PNG the camera could have sent.
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
        out.append(("a whole validation photo (control)", a))
    return out


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
        print(f"  {kind:<45} ok {counts['ok'] / total:6.1%}  not_a_part {counts['not_a_part'] / total:6.1%}  {dict(counts)}")


if __name__ == "__main__":
    main()
