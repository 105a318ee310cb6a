"""Stage train: fit the network chosen by train.model; keep the epoch with the best validation loss."""

from casting_inspection.core.numerics import pin_numerics

pin_numerics()  # before numpy and torch load: the same bytes on every machine

import argparse
import json
from pathlib import Path

from casting_inspection.core.params import load_section
from casting_inspection.core.stage import run_stage
from casting_inspection.modeling.training import train_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="prepared array cache")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--live", type=Path, required=True, help="dvclive folder for per-epoch curves")
    args = parser.parse_args()
    summary = train_model(load_section("train"), args.data, args.checkpoint, args.metrics, args.live)
    if summary is not None:  # rank 0 (or a single process) reports; torchrun's other ranks stay quiet
        print("train: " + json.dumps(summary))


if __name__ == "__main__":
    run_stage("train", main)
