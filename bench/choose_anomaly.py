"""Choose the model of good parts on validation evidence: for each setting (a flaw finder or PatchCore), the share of painted defects
(on validation good parts) it decides ok at a threshold rejecting `anomaly.reject_share` of validation good parts,
its AUROC, how often its map peaks on the defect, and its cost per photo. The held-out kind is printed apart and
never ranks a setting (the rank is the mean share decided ok over `anomaly.painted.kinds`). Test photos are not read.

Line changes are not defects: each validation good part is also re-taken from its original photo under every
change and strength of params.yaml's robustness section (as the retake stage re-takes the test split), and each
setting prints, per change, the share of those good parts it rejects and the share it rejects only after the change.

Usage: PYTHONPATH=src python bench/choose_anomaly.py [--settings 2,4@128 '{"flaws": {"tune": [4]}}' ...]
(after `dvc repro paint`). A PatchCore setting is TAPS@INPUT_SIZE[/CORESET[/PATCHES]]: EfficientNet-Lite0 blocks
tapped, the side the photo is resized to, the bank size, the good patches drawn before the coreset. A setting in
braces is laid over params.yaml's anomaly section as it stands (its method included: the flaw finder by default).
"""

from casting_inspection.core.numerics import pin_numerics

pin_numerics()

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from casting_inspection.core.params import load_section
from casting_inspection.data.dataset import load_preprocessing, load_split
from casting_inspection.evaluation.anomaly import fit_flaws, fit_patchcore, peak_on_defect
from casting_inspection.evaluation.painted_set import load_painted
from casting_inspection.evaluation.retake import render
from casting_inspection.evaluation.retaken_set import CHANGES, settings
from casting_inspection.evaluation.robustness import good_rejected
from casting_inspection.modeling.patchcore import anomaly_scores


def parse(setting: str, base):
    if setting.startswith("{"):
        override = json.loads(setting)
        flaws = dataclasses.replace(base.flaws, **override.pop("flaws", {}))
        return dataclasses.replace(base, flaws=flaws, **override)
    taps, _, rest = setting.partition("@")
    size, coreset, patches = (rest.split("/") + ["", ""])[:3]
    return dataclasses.replace(
        base,
        method="patchcore",
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


def _model(params, model) -> str:
    if params.method == "flaws":
        return f"flaws: head {params.flaws.width}, tuned blocks {params.flaws.tune}, {params.flaws.epochs} epochs"
    return f"patchcore: {params.patches:,} → {len(model.bank):,} patches"


def retaken_val_good(prepared: Path, raw: Path, paths: list[str]) -> tuple[list[tuple[str, float]], np.ndarray]:
    """The validation good photos re-taken under robustness's changes (settings, images, C, H, W)."""
    robustness, preprocessing = load_section("robustness"), load_preprocessing(prepared)
    chosen = settings({change: getattr(robustness, change) for change in CHANGES})
    size, mode = preprocessing["image_size"], preprocessing["color_mode"]
    return chosen, render(raw, paths, chosen, robustness.seed, size, mode, robustness.workers)


def line_changes(model, params, chosen, renders: np.ndarray, clean: np.ndarray, threshold: float) -> str:
    """Per change: good parts rejected when re-taken, and those rejected only after the change."""
    cells = []
    for (change, strength), images in zip(chosen, renders):
        scores, _ = anomaly_scores(model, torch.from_numpy(np.array(images)), params.batch_size)
        shares = good_rejected(scores, clean, threshold)  # the robustness stage's rule
        cells.append(
            f"{change} {strength:g}: {shares['anomaly_rejected_good']:.1%} ({shares['anomaly_rejected_by_change']:.1%} new)"
        )
    return "line changes, validation good parts rejected (only after the change): " + "; ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=["{}", "2,4@128", "1,2,4@128"])
    parser.add_argument("--data", type=Path, default=Path("data/prepared"))
    parser.add_argument("--painted", type=Path, default=Path("data/painted"))
    parser.add_argument("--raw", type=Path, default=Path("data/raw"), help="the original photos, for the line changes")
    args = parser.parse_args()
    base = load_section("anomaly")
    train, val = load_split(args.data, "train"), load_split(args.data, "val")
    good = val.labels == 0
    painted_set = load_painted(args.painted)
    kinds = [*painted_set.kinds, painted_set.held_out]
    painted = {kind: (painted_set.images[kind], painted_set.index.centres[kind]) for kind in kinds}
    chosen, renders = retaken_val_good(args.data, args.raw, [p for p, g in zip(val.paths, good.tolist()) if g])
    header = ["setting", "model", "ms/photo", *kinds[:-1], f"{kinds[-1]} (held out)", "mean (chosen kinds)"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header), flush=True)
    for setting in args.settings:
        params = parse(setting, base)
        fit = fit_flaws if params.method == "flaws" else fit_patchcore
        model = fit(params, train.images[train.labels == 0])
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
            f"| {setting} | {_model(params, model)} | {ms:.1f} | " + " | ".join(cells) + f" | {mean:.0%} |",
            flush=True,
        )
        print(line_changes(model, params, chosen, renders, clean, threshold), flush=True)


if __name__ == "__main__":
    main()
