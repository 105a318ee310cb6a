"""Stage robustness: the test photos re-taken under each line change, decided at the shipped operating point."""

from casting_inspection.core.numerics import pin_numerics
from casting_inspection.evaluation.model_files import ModelFiles

pin_numerics()  # before numpy and torch load: the same bytes on every machine

import argparse
from pathlib import Path

from casting_inspection.core.params import load_section
from casting_inspection.core.stage import run_stage
from casting_inspection.evaluation.robustness import evaluate_robustness, format_robustness


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--operating-point", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="the prepared array cache (test paths and labels)")
    parser.add_argument("--retaken", type=Path, required=True, help="the retake stage's renderings")
    parser.add_argument("--drift-reference", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--guard", type=Path, required=True, help="the not-a-part guard's feature statistics")
    parser.add_argument("--anomaly", type=Path, required=True, help="the model of good parts (the anomaly stage)")
    parser.add_argument(
        "--departures", type=Path, required=True, help="its scores of the re-taken good parts (retaken_departures stage)"
    )
    parser.add_argument(
        "--test-departures", type=Path, required=True, help="its scores of the test photos as taken (departures stage)"
    )
    args = parser.parse_args()
    params = load_section("robustness")
    report = evaluate_robustness(
        params,
        ModelFiles(checkpoint=args.checkpoint, operating_point=args.operating_point, guard=args.guard, anomaly=args.anomaly),
        prepared_dir=args.data,
        retaken_dir=args.retaken,
        departures_path=args.departures,
        test_departures_path=args.test_departures,
        drift_reference_path=args.drift_reference,
        out_path=args.metrics,
    )
    print(format_robustness(report))


if __name__ == "__main__":
    run_stage("robustness", main)
