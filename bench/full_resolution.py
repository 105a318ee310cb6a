"""Does the model of good parts see more at a finer input taken from the original photos? For each side, the train
split's good photos and the validation photos are read again from `data/raw` and resized to that side; each
validation good part is painted exactly as the paint stage paints it (same seed, same defect, same size on the part)
and then resized to that side. The flaw finder is trained as `params.yaml` says, with its drawn flaws scaled to the
same size on the part, and judged as `bench/choose_anomaly.py` judges it. Test photos are not read.

Usage: PYTHONPATH=src python bench/full_resolution.py [--sides 256 128] [--epochs 6] (after `dvc repro paint`).
"""

from casting_inspection.core.numerics import pin_numerics

pin_numerics()

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from casting_inspection.core.params import load_section
from casting_inspection.data.dataset import load_preprocessing, load_split
from casting_inspection.data.images import preprocess
from casting_inspection.evaluation.anomaly import fit_flaws, peak_on_defect
from casting_inspection.evaluation.painted import paint, rng_for
from casting_inspection.evaluation.painted_set import load_painted
from casting_inspection.modeling.patchcore import anomaly_scores


def read(raw: Path, paths: list[str], side: int, mode: str) -> torch.Tensor:
    arrays = []
    for path in paths:
        with Image.open(raw / path) as image:
            arrays.append(preprocess(image, side, mode))
    return torch.from_numpy(np.stack(arrays))


def painted(raw: Path, paths: list[str], kind: str, seed: int, spec: dict, side: int) -> torch.Tensor:
    """As the paint stage paints (defect sizes in pixels of the pipeline's input), resized to `side`."""
    arrays = []
    for path in paths:
        with Image.open(raw / path) as image:
            image.load()
        photo, _ = paint(image, kind, rng_for(seed, kind, path), image.size[0] / spec["image_size"])
        arrays.append(preprocess(photo, side, spec["color_mode"]))
    return torch.from_numpy(np.stack(arrays))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", type=int, nargs="+", default=[256, 128])
    parser.add_argument("--epochs", type=int, default=None, help="flaw finder epochs (default: params.yaml)")
    parser.add_argument("--data", type=Path, default=Path("data/prepared"))
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--painted", type=Path, default=Path("data/painted"))
    args = parser.parse_args()
    base, spec = load_section("anomaly"), load_preprocessing(args.data)
    train, val = load_split(args.data, "train"), load_split(args.data, "val")
    train_good = [p for p, label in zip(train.paths, train.labels.tolist()) if label == 0]
    val_good = [p for p, label in zip(val.paths, val.labels.tolist()) if label == 0]
    index = load_painted(args.painted).index
    kinds = [*index.kinds, index.held_out]
    header = ["side", "ms/photo", "train s", *kinds[:-1], f"{kinds[-1]} (held out)", "mean (chosen kinds)"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header), flush=True)
    for side in args.sides:
        factor = side / spec["image_size"]
        flaws = dataclasses.replace(
            base.flaws,
            size=[s * factor for s in base.flaws.size],
            epochs=args.epochs or base.flaws.epochs,
        )
        params = dataclasses.replace(base, input_size=side, flaws=flaws)
        good = read(args.raw, train_good, side, spec["color_mode"])
        start = time.perf_counter()
        model = fit_flaws(params, good)
        seconds = time.perf_counter() - start
        clean, _ = anomaly_scores(model, read(args.raw, val_good, side, spec["color_mode"]), params.batch_size)
        threshold = float(np.quantile(clean, 1 - params.reject_share))
        cells, shares = [], []
        for kind in kinds:
            images = painted(args.raw, index.paths, kind, base.painted.seed, spec, side)
            scores, maps = anomaly_scores(model, images, params.batch_size)
            ok = float(np.mean(scores < threshold))
            auroc = roc_auc_score(np.r_[np.zeros(len(clean)), np.ones(len(scores))], np.r_[clean, scores])
            peak = float(np.mean(peak_on_defect(maps, index.centres[kind], params.painted.peak_tolerance)))
            cells.append(f"{ok:.1%} ok, AUROC {auroc:.3f}, map {peak:.0%}")
            shares.append(ok)
        batch = images[:64]
        times = []
        for _ in range(3):
            tick = time.perf_counter()
            anomaly_scores(model, batch, 64)
            times.append((time.perf_counter() - tick) / len(batch) * 1e3)
        mean = statistics.mean(shares[:-1])
        print(
            f"| {side} | {statistics.median(times):.1f} | {seconds:.0f} | " + " | ".join(cells) + f" | {mean:.1%} |", flush=True
        )


if __name__ == "__main__":
    main()
