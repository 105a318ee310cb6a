"""Stage export: ONNX with a dynamic batch axis, checked against PyTorch with onnxruntime."""

from casting_inspection.core.numerics import pin_numerics
from casting_inspection.evaluation.model_files import ModelFiles

pin_numerics()  # before numpy and torch load: the same bytes on every machine

import argparse
import json
from pathlib import Path

from casting_inspection.core.params import load_section
from casting_inspection.core.stage import run_stage
from casting_inspection.export.onnx import export_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--operating-point", type=Path, required=True)
    parser.add_argument("--drift-reference", type=Path, required=True, help="stored in the ONNX metadata for drift warnings")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--int8", type=Path, required=True, help="the int8 edge model (export.int8)")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--guard", type=Path, required=True, help="the not-a-part guard's feature statistics")
    parser.add_argument("--anomaly", type=Path, required=True, help="the model of good parts (the anomaly stage)")
    args = parser.parse_args()
    results = export_onnx(
        load_section("export"),
        ModelFiles(checkpoint=args.checkpoint, operating_point=args.operating_point, guard=args.guard, anomaly=args.anomaly),
        drift_reference_path=args.drift_reference,
        prepared_dir=args.data,
        onnx_path=args.onnx,
        int8_path=args.int8,
        metrics_path=args.metrics,
    )
    print("export: " + json.dumps(results))


if __name__ == "__main__":
    run_stage("export", main)
