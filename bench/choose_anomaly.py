"""Choose the model of good parts on validation evidence: for each feature setting, the share of painted defects
(on validation good parts) it decides ok at a threshold rejecting `anomaly.reject_share` of validation good parts,
its AUROC, how often its map peaks on the defect, and its cost per photo. The held-out kind is printed apart and
never ranks a setting (the rank is the mean share decided ok over `anomaly.painted.kinds`). Test photos are not read.

Usage: PYTHONPATH=src python bench/choose_anomaly.py [--settings 2,4@128 2,4@256 ...] (after `dvc repro prepare`)
A setting is TAPS@INPUT_SIZE[/CORESET[/PATCHES]]: EfficientNet-Lite0 blocks tapped, the side the photo is resized to,
the bank size, the good patches drawn before the coreset (the others from params.yaml's anomaly section).
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
from sklearn.metrics import roc_auc_score

from casting_inspection.core.params import load_section
from casting_inspection.data.dataset import load_preprocessing, load_split
from casting_inspection.evaluation.anomaly import fit_patchcore, painted_photos, peak_on_defect
from casting_inspection.modeling.patchcore import anomaly_scores


def parse(setting: str, base):
    taps, _, rest = setting.partition("@")
    size, coreset, patches = (rest.split("/") + ["", ""])[:3]
    return dataclasses.replace(
        base,
        taps=[int(t) for t in taps.split(",")],
        input_size=int(size),
        coreset=int(coreset or base.coreset),
        patches=int(patches or base.patches),
    )


def per_photo_ms(model, images: torch.Tensor, batch: int = 64, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        anomaly_scores(model, images[:batch], batch)
        times.append((time.perf_counter() - start) / batch * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=["4,10@128", "2,4@128", "1,2,4@128", "4,10@256", "2,4@256"])
    parser.add_argument("--data", type=Path, default=Path("data/prepared"))
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    args = parser.parse_args()
    base = load_section("anomaly")
    train, val = load_split(args.data, "train"), load_split(args.data, "val")
    good = val.labels == 0
    paths = [p for p, keep in zip(val.paths, good.tolist()) if keep]
    spec = load_preprocessing(args.data)
    kinds = [*base.painted.kinds, base.painted.held_out]
    painted = {kind: painted_photos(args.raw, paths, kind, base.painted.seed, spec) for kind in kinds}
    header = ["setting", "patches", "ms/photo", *kinds[:-1], f"{kinds[-1]} (held out)", "mean (chosen kinds)"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header), flush=True)
    for setting in args.settings:
        params = parse(setting, base)
        model = fit_patchcore(params, train.images[train.labels == 0])
        clean, _ = anomaly_scores(model, val.images[good], params.batch_size)
        threshold = float(np.quantile(clean, 1 - params.reject_share))
        cells, shares = [], []
        for kind in kinds:
            images, centres = painted[kind]
            scores, maps = anomaly_scores(model, images, params.batch_size)
            ok = float(np.mean(scores < threshold))
            auroc = roc_auc_score(np.r_[np.zeros(len(clean)), np.ones(len(scores))], np.r_[clean, scores])
            peak = float(np.mean(peak_on_defect(maps, centres, params.painted.peak_tolerance)))
            cells.append(f"{ok:.0%} ok, AUROC {auroc:.3f}, map {peak:.0%}")
            shares.append(ok)
        ms = per_photo_ms(model, val.images)
        mean = statistics.mean(shares[:-1])
        print(
            f"| {setting} | {params.patches:,} → {len(model.bank):,} | {ms:.1f} | " + " | ".join(cells) + f" | {mean:.0%} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
