"""How many validation and test good parts have a near copy among the train split's good parts, by pHash, also
over the eight turns and mirrors of each photo (the data set's photos are turned, shifted and re-lit copies of fewer
shots: `prepare` looks for unturned copies only). The share within 10 and 20 bits, and the median distance.

Usage (after `dvc repro prepare`): PYTHONPATH=src python bench/near_copies.py [--hash-size 16]
"""

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from casting_inspection.data.near_duplicates import distances, perceptual_hashes


def grey(path: Path, side: int) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L").resize((side, side)))[None]


def nearest(photos: list[np.ndarray], reference: np.ndarray, hash_size: int, turned: bool) -> np.ndarray:
    """Each photo's smallest distance to the reference hashes, as taken or over its eight turns and mirrors."""
    best = None
    for k in range(4 if turned else 1):
        for mirror in (False, True) if turned else (False,):
            views = [np.rot90(p, k, axes=(1, 2)) for p in photos]
            views = [np.ascontiguousarray(v[:, :, ::-1] if mirror else v) for v in views]
            d = distances(perceptual_hashes(views, hash_size), reference).min(1)
            best = d if best is None else np.minimum(best, d)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hash-size", type=int, default=16)
    parser.add_argument("--side", type=int, default=128, help="photos are resized to this side before hashing")
    args = parser.parse_args()
    manifest = pd.read_csv("data/prepared/manifest.csv", keep_default_na=False)
    good = manifest[(manifest["status"] == "ok") & (manifest["label"] == "ok_front")]
    photos = {
        split: [grey(Path("data/raw") / p, args.side) for p in good[good["split"] == split]["path"]]
        for split in ("train", "val", "test")
    }
    reference = perceptual_hashes(photos["train"], args.hash_size)
    print(
        "| good parts | n | within 10 bits, as taken | within 10 bits, turned or mirrored | within 20 bits, turned or mirrored | median distance |"
    )
    print("|---|---|---|---|---|---|")
    for split in ("val", "test"):
        plain = nearest(photos[split], reference, args.hash_size, turned=False)
        turned = nearest(photos[split], reference, args.hash_size, turned=True)
        print(
            f"| {split} | {len(turned)} | {np.mean(plain <= 10):.0%} | {np.mean(turned <= 10):.0%} "
            f"| {np.mean(turned <= 20):.0%} | {np.median(turned):.0f} |"
        )


if __name__ == "__main__":
    main()
