"""Defects painted on the validation split's good photos, through the shipped model as `predict` decides them.

Each kind of `evaluation/painted.py` (the held-out kind too) is painted once on every validation good photo at the
camera's resolution, encoded as PNG and decided by `Inspector.inspect` (the exported ONNX model: classifier, model
of good parts and guard together). Prints the share of each kind that comes back `ok`, `review`, `not_a_part` or
`defective`. The test split is never painted.
Usage (after `make repro`): python bench/bench_painted.py [--model models/model.onnx] [--seed 1]
"""

from __future__ import annotations

import argparse
import io
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from casting_inspection.evaluation.painted import KINDS, paint, rng_for  # noqa: E402
from casting_inspection.serving.inference import Inspector  # noqa: E402


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models/model.onnx")
    parser.add_argument("--seed", type=int, default=1, help="painting seed (the paint stage paints with its own)")
    parser.add_argument("--limit", type=int, default=0, help="at most this many photos per kind (0 = all)")
    args = parser.parse_args()
    inspector = Inspector(args.model)
    manifest = pd.read_csv(ROOT / "data/prepared/manifest.csv")
    paths = manifest[(manifest["split"] == "val") & (manifest["label"] == "ok_front")]["path"].tolist()
    paths = paths[: args.limit] if args.limit else paths
    originals = {path: Image.open(ROOT / "data/raw" / path).convert("L") for path in paths}
    print(f"model {inspector.version}; {len(paths)} validation good photos per kind, painting seed {args.seed}")
    for kind in ("none", *KINDS):
        items = []
        for path, image in originals.items():
            painted = image if kind == "none" else paint(image, kind, rng_for(args.seed, kind, path), image.size[0] / 128)[0]
            items.append((path, png(painted)))
        counts = Counter(result.decision or "skipped" for result in inspector.inspect(items))
        total = sum(counts.values())
        shares = "  ".join(f"{name} {counts[name] / total:6.1%}" for name in ("ok", "defective", "review", "not_a_part"))
        print(f"  {kind:<8} {shares}", flush=True)


if __name__ == "__main__":
    main()
