"""Stage departures: the model of good parts' score on the validation, test and painted photos evaluate judges."""

from casting_inspection.core.numerics import pin_numerics

pin_numerics()  # before numpy and torch load: the same bytes on every machine

import argparse
import json
from pathlib import Path

from casting_inspection.core.params import load_section
from casting_inspection.core.stage import run_stage
from casting_inspection.evaluation.departures import photo_sets, score_departures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--anomaly", type=Path, required=True, help="the model of good parts (the anomaly stage)")
    parser.add_argument("--data", type=Path, required=True, help="the prepared array cache")
    parser.add_argument("--painted", type=Path, required=True, help="validation good photos with painted defects (paint stage)")
    parser.add_argument("--out", type=Path, required=True, help="the scores (safetensors)")
    args = parser.parse_args()
    sets = photo_sets(args.data, args.painted)
    counts = score_departures(args.anomaly, sets, load_section("anomaly").batch_size, args.out, maps=("test",))
    print("departures: " + json.dumps(counts))


if __name__ == "__main__":
    run_stage("departures", main)
