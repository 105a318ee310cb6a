"""Stage retaken_departures: the model of good parts' score on the good test parts re-taken under each line change."""

from casting_inspection.core.numerics import pin_numerics

pin_numerics()  # before numpy and torch load: the same bytes on every machine

import argparse
import json
from pathlib import Path

from casting_inspection.core.params import load_section
from casting_inspection.core.stage import run_stage
from casting_inspection.evaluation.departures import retaken_sets, score_departures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--anomaly", type=Path, required=True, help="the model of good parts (the anomaly stage)")
    parser.add_argument("--data", type=Path, required=True, help="the prepared array cache (test paths and labels)")
    parser.add_argument("--retaken", type=Path, required=True, help="the retake stage's renderings")
    parser.add_argument("--out", type=Path, required=True, help="the scores (safetensors)")
    args = parser.parse_args()
    sets = retaken_sets(args.data, args.retaken, load_section("robustness").seed)
    counts = score_departures(args.anomaly, sets, load_section("anomaly").batch_size, args.out)
    print("retaken_departures: " + json.dumps(counts))


if __name__ == "__main__":
    run_stage("retaken_departures", main)
