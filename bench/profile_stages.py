"""Where the time of train, evaluate and robustness goes, on the prepared real data.

Train: the parts of one epoch (augmentation, forward, backward, optimiser, BatchNorm re-estimation,
validation), timed batch by batch with the stage's own setup and numerics. Evaluate and robustness:
each stage function once under cProfile, its own functions by cumulative time. Outputs go to a
temporary folder; nothing in the workspace changes.
Usage: PYTHONPATH=src python bench/profile_stages.py [--epochs 2] [--stages train evaluate robustness]
(after `dvc repro`: it reads data/prepared, data/retaken and the committed model files)
"""

from casting_inspection.core.numerics import pin_numerics

pin_numerics()

import argparse
import cProfile
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from casting_inspection.core.params import load_section
from casting_inspection.data.dataset import load_split
from casting_inspection.evaluation.evaluate import EvaluateOutputs, evaluate_model
from casting_inspection.evaluation.model_files import ModelFiles
from casting_inspection.evaluation.robustness import evaluate_robustness
from casting_inspection.modeling.augmentation import augment_batch
from casting_inspection.modeling.training import (
    Job,
    _evaluate,
    _setup,
    model_config,
    recalibrate_batchnorm,
    seed_everything,
)

PREPARED = Path("data/prepared")
MODEL = ModelFiles(
    Path("models/model.safetensors"),
    Path("models/operating_point.json"),
    Path("models/guard.safetensors"),
    Path("models/anomaly.safetensors"),
)


def profile_epoch(run, params, device, val) -> dict[str, float]:
    """Seconds per part of one epoch, the same steps `run_epoch` and `_fit` take."""
    parts = dict.fromkeys(("augmentation", "forward", "backward", "optimiser"), 0.0)
    run.model.train()
    order = torch.randperm(len(run.images), generator=run.generator)
    loss_fn = nn.BCEWithLogitsLoss()
    for step in range(run.steps):
        t0 = time.perf_counter()
        index = order[step * run.batch_size : (step + 1) * run.batch_size]
        x = augment_batch(run.augment, run.images[index].float().div_(255), params.augment.group)
        x = x.clamp_(0, 1).contiguous(memory_format=torch.channels_last)
        t1 = time.perf_counter()
        loss = loss_fn(run.network(x).float(), run.labels[index])
        t2 = time.perf_counter()
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        run.optimizer.step()
        run.scheduler.step()
        loss.item()
        t4 = time.perf_counter()
        for name, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            parts[name] += seconds
    t0 = time.perf_counter()
    if params.bn_recalibration:
        recalibrate_batchnorm(run.model, run.recalibration_images, params.batch_size, device)
    t1 = time.perf_counter()
    _evaluate(run.model, val, params.batch_size, device)
    parts |= {"batchnorm re-estimation": t1 - t0, "validation": time.perf_counter() - t1}
    return parts


def profile_train(epochs: int) -> None:
    params, device = load_section("train"), torch.device("cpu")
    seed_everything(params.seed)
    train, val = load_split(PREPARED, "train"), load_split(PREPARED, "val")
    run = _setup(params, Job(), device, train, model_config(params, train))
    epochs_parts = [profile_epoch(run, params, device, val) for _ in range(epochs)]
    total = statistics.median(sum(p.values()) for p in epochs_parts)
    print(f"\ntrain: {len(train.images)} images, batch {params.batch_size}, {run.steps} steps; median of {epochs} epochs")
    print("| part of an epoch | s | share |\n|---|---|---|")
    for name in epochs_parts[0]:
        seconds = statistics.median(p[name] for p in epochs_parts)
        print(f"| {name} | {seconds:.2f} | {seconds / total:.0%} |")
    print(f"| epoch | {total:.2f} | 100% |")


def profile_call(name: str, call, top: int) -> None:
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    call()
    profiler.disable()
    wall = time.perf_counter() - started
    stats = pstats.Stats(profiler)
    rows = [
        (cumulative, f"{Path(file).parent.name}/{Path(file).name}:{function}")
        for (file, _, function), (_, _, _, cumulative, _) in stats.stats.items()
        if "casting_inspection" in file and cumulative >= 0.02 * wall
    ]
    print(f"\n{name}: {wall:.1f} s in the stage function (its own functions at >= 2 % cumulative)")
    print("| function | s | share |\n|---|---|---|")
    for cumulative, label in sorted(rows, reverse=True)[:top]:
        print(f"| {label} | {cumulative:.2f} | {cumulative / wall:.0%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2, help="training epochs timed")
    parser.add_argument("--stages", nargs="+", default=["train", "evaluate", "robustness"])
    parser.add_argument("--top", type=int, default=25, help="rows per cProfile table")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="profile-") as tmp:
        out = Path(tmp)
        if "train" in args.stages:
            profile_train(args.epochs)
        if "evaluate" in args.stages:
            outputs = EvaluateOutputs(
                out / "test.json",
                out / "drift.json",
                out / "painted.json",
                out / "plots",
                out / "operating_point.json",
                out / "guard.safetensors",
            )
            profile_call(
                "evaluate",
                lambda: evaluate_model(
                    load_section("evaluate"),
                    MODEL.checkpoint,
                    PREPARED,
                    Path("data/drift_reference.json"),
                    outputs,
                    MODEL.anomaly,
                    Path("data/painted"),
                    Path("data/departures.safetensors"),
                ),
                args.top,
            )
        if "robustness" in args.stages:
            profile_call(
                "robustness",
                lambda: evaluate_robustness(
                    load_section("robustness"),
                    MODEL,
                    prepared_dir=PREPARED,
                    retaken_dir=Path("data/retaken"),
                    departures_path=Path("data/retaken_departures.safetensors"),
                    drift_reference_path=Path("data/drift_reference.json"),
                    out_path=out / "robustness.json",
                ),
                args.top,
            )


if __name__ == "__main__":
    main()
