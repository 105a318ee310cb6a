"""Stage report: the inspection report, one self-contained HTML page under reports/."""

from casting_inspection.core.numerics import pin_numerics

pin_numerics()  # before numpy and torch load: the same bytes on every machine

import argparse
from pathlib import Path

from casting_inspection.core.stage import run_stage
from casting_inspection.evaluation.report import write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--metrics", type=Path, required=True, help="the folder of the pipeline's metrics")
    parser.add_argument("--plots", type=Path, required=True, help="the folder of the pipeline's plots")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    path = write_report(args.metrics, args.plots, args.out)
    print(f"report: {path.resolve().as_uri()}")


if __name__ == "__main__":
    run_stage("report", main)
