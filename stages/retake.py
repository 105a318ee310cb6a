"""Stage retake: the test photos re-taken under each line change at each strength (what robustness decides)."""

from casting_inspection.core.numerics import pin_numerics

pin_numerics()  # before numpy and torch load: the same bytes on every machine

import argparse
from pathlib import Path

from casting_inspection.core.params import load_section
from casting_inspection.core.stage import run_stage
from casting_inspection.evaluation.retake import retake_test_photos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="the prepared array cache (test paths, image size)")
    parser.add_argument("--raw", type=Path, required=True, help="the original photos, re-taken here")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    count = retake_test_photos(load_section("robustness"), args.data, args.raw, args.out)
    print(f"retake: {count} renderings in {args.out}")


if __name__ == "__main__":
    run_stage("retake", main)
