"""Stage paint: defects of forms the data set lacks, painted on the validation split's good photos (never test)."""

from casting_inspection.core.numerics import pin_numerics

pin_numerics()  # before numpy and torch load: the same bytes on every machine

import argparse
import json
from pathlib import Path

from casting_inspection.core.params import load_section
from casting_inspection.core.stage import run_stage
from casting_inspection.evaluation.painted import paint_validation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="the prepared array cache (which photos are validation)")
    parser.add_argument("--raw", type=Path, required=True, help="the original photos (defects are painted on them)")
    parser.add_argument("--out", type=Path, required=True, help="the painted photos, one array per kind, and their index")
    args = parser.parse_args()
    summary = paint_validation(load_section("anomaly").painted, args.data, args.raw, args.out)
    print("paint: " + json.dumps(summary))


if __name__ == "__main__":
    run_stage("paint", main)
