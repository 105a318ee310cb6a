"""Robustness of a checkpoint on the validation (or test) split re-taken under each line change.

Validation renderings are what may guide training choices; the test split is scored by the
evaluate stage. Usage: PYTHONPATH=src python bench/bench_robustness.py [--split val] [--checkpoint models/model.safetensors]
"""

import argparse
import json
import time
from pathlib import Path

import torch

from casting_inspection.core.params import load_section
from casting_inspection.data.dataset import load_split
from casting_inspection.evaluation.retake import render
from casting_inspection.evaluation.retaken_set import CHANGES, settings
from casting_inspection.evaluation.robustness import predict_renderings, robustness_metrics
from casting_inspection.modeling.checkpoint import load_checkpoint
from casting_inspection.modeling.predict import predict_logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, default=Path("models/model.safetensors"))
    parser.add_argument("--data", type=Path, default=Path("data/prepared"))
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--split", default="val", choices=["train", "val", "test"])
    parser.add_argument(
        "--operating-point",
        type=Path,
        default=Path("models/operating_point.json"),
        help="threshold and temperature the product decides with (from the evaluate stage)",
    )
    parser.add_argument("--threshold", type=float, help="override the operating point's threshold")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    params = load_section("robustness")
    operating_point = json.loads(args.operating_point.read_text()) if args.operating_point.exists() else {}
    threshold = args.threshold if args.threshold is not None else operating_point.get("threshold", 0.5)
    temperature = operating_point.get("temperature", 1.0)
    model, checkpoint = load_checkpoint(args.checkpoint)
    split = load_split(args.data, args.split)
    chosen = settings({change: getattr(params, change) for change in CHANGES})
    started = time.perf_counter()
    renders = render(
        args.raw,
        split.paths,
        chosen,
        params.seed,
        checkpoint["preprocessing"]["image_size"],
        checkpoint["preprocessing"]["color_mode"],
        params.workers,
    )
    rendered = time.perf_counter() - started

    def predict(images):
        return torch.sigmoid(predict_logits(model, images, 256, torch.device("cpu")) / temperature).double().numpy()

    clean = predict(split.images)
    labels = split.labels.numpy()
    report = robustness_metrics(predict_renderings(predict, renders), labels, chosen, threshold, clean)
    clean_errors = int(((clean >= threshold) != labels).sum())
    print(
        f"{args.checkpoint} on {args.split} ({len(labels)} images) at threshold {threshold:.4g}: clean errors {clean_errors}; "
        f"rendered {renders.shape[0] * renders.shape[1]} images in {rendered:.1f} s, scored in {time.perf_counter() - started - rendered:.1f} s"
    )
    print(f"{'change':<12}{'strength':>9}{'accuracy':>10}{'missed':>8}{'false rej':>10}")
    for change, levels in report.items():
        if change != "worst":
            for strength, cell in levels.items():
                print(f"{change:<12}{strength:>9}{cell['accuracy']:>10.4f}{cell['missed_defects']:>8}{cell['false_rejects']:>10}")
    print("worst:", report["worst"])
    if args.json:
        args.json.write_text(json.dumps({"clean_errors": clean_errors, **report}, indent=2))


if __name__ == "__main__":
    main()
