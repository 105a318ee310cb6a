"""Stage anomaly: fit the model of good parts on the train split's good photos and judge it on painted defects."""

from casting_inspection.core.numerics import pin_numerics

pin_numerics()  # before numpy and torch load: the same bytes on every machine

import argparse
import json
from pathlib import Path

from casting_inspection.core.params import load_section
from casting_inspection.core.stage import run_stage
from casting_inspection.evaluation.anomaly import fit_anomaly


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="the prepared array cache")
    parser.add_argument("--painted", type=Path, required=True, help="validation good photos with painted defects (paint stage)")
    parser.add_argument("--model", type=Path, required=True, help="the fitted model of good parts")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--plots", type=Path, required=True, help="the painted defects with their maps")
    args = parser.parse_args()
    figures = fit_anomaly(load_section("anomaly"), args.data, args.painted, args.model, args.metrics, args.plots)
    print("anomaly: " + json.dumps(figures))


if __name__ == "__main__":
    run_stage("anomaly", main)
