"""Stage prepare: verify every image, find duplicates and leakage, split train/val, cache resized arrays."""

from casting_inspection.core.numerics import pin_numerics

pin_numerics()  # before numpy and torch load: the same bytes on every machine

import argparse
import json
import os
from pathlib import Path

from casting_inspection.core.params import load_section
from casting_inspection.core.stage import run_stage
from casting_inspection.data.prepare import prepare_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--drift-reference", type=Path, required=True, help="training range of the input-drift statistics")
    parser.add_argument("--line", type=Path, help="the plant's own labelled photos (casting-inspect review / import-line)")
    args = parser.parse_args()
    summary = prepare_dataset(
        load_section("prepare"),
        args.raw,
        args.out,
        args.metrics,
        args.drift_reference,
        workers=os.cpu_count() or 1,
        line_dir=args.line,
    )
    print("prepare: " + json.dumps(summary))


if __name__ == "__main__":
    run_stage("prepare", main)
