"""Stage evaluate: score the test split once with the trained checkpoint, at the operating point chosen on validation."""

from casting_inspection.core.numerics import pin_numerics

pin_numerics()  # before numpy and torch load: the same bytes on every machine

import argparse
import json
from pathlib import Path

from casting_inspection.core.params import load_section
from casting_inspection.core.stage import run_stage
from casting_inspection.evaluation.evaluate import EvaluateOutputs, evaluate_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="the prepared array cache")
    parser.add_argument("--drift-reference", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--drift", type=Path, required=True, help="input drift of the test split")
    parser.add_argument("--painted-metrics", type=Path, required=True, help="the shipped decision on painted defects")
    parser.add_argument("--plots", type=Path, required=True)
    parser.add_argument("--operating-point", type=Path, required=True, help="the decision threshold, shipped with the model")
    parser.add_argument("--guard", type=Path, required=True, help="the not-a-part guard's feature statistics")
    parser.add_argument("--anomaly", type=Path, required=True, help="the model of good parts (the anomaly stage)")
    parser.add_argument("--painted", type=Path, required=True, help="validation good photos with painted defects (paint stage)")
    parser.add_argument("--departures", type=Path, required=True, help="the model of good parts' scores (departures stage)")
    args = parser.parse_args()
    outputs = EvaluateOutputs(
        metrics=args.metrics,
        drift=args.drift,
        painted=args.painted_metrics,
        plots=args.plots,
        operating_point=args.operating_point,
        guard=args.guard,
    )
    results = evaluate_model(
        load_section("evaluate"),
        checkpoint_path=args.checkpoint,
        prepared_dir=args.data,
        drift_reference_path=args.drift_reference,
        out=outputs,
        anomaly_path=args.anomaly,
        painted_dir=args.painted,
        departures_path=args.departures,
    )
    print("evaluate: " + json.dumps({k: v for k, v in results.items() if k != "leak_free"}))


if __name__ == "__main__":
    run_stage("evaluate", main)
