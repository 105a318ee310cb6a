"""What the not-a-part guard costs `predict` per image: its photo checks (NumPy, batched) and its second ONNX
output (the novelty distance), against the same model exported without the guard.

Usage (after `make repro`): PYTHONPATH=src python bench/bench_guard.py [--repeats 50]
"""

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from casting_inspection.data.dataset import load_split
from casting_inspection.data.plausibility import implausible, photo_statistics  # noqa: E402
from casting_inspection.modeling.checkpoint import load_checkpoint
from casting_inspection.modeling.networks import ProbabilityNet
from casting_inspection.serving.inference import Inspector

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ort_timings import timings  # noqa: E402


def median_ms(call, repeats: int) -> float:
    return 1000 * statistics.median(timings(call, repeats, warmup=1))


def unguarded_session(checkpoint: Path, temperature: float, example: torch.Tensor) -> ort.InferenceSession:
    """The same network and temperature exported with one output, as before the guard."""
    model, _ = load_checkpoint(checkpoint)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "plain.onnx"
        torch.onnx.export(
            ProbabilityNet(model, temperature).eval(),
            (example,),
            str(path),
            input_names=["image"],
            dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    inspector = Inspector(Path("models/model.onnx"), threads=2)
    test = load_split(Path("data/prepared"), "test")
    temperature = json.loads(Path("models/operating_point.json").read_text())["temperature"]
    plain = unguarded_session(Path("models/model.safetensors"), temperature, test.images[:2].float() / 255)
    for batch in (1, 64):
        images = test.images[:batch].numpy()
        feed = {"image": images.astype(np.float32) / 255}
        guarded = median_ms(lambda: inspector.session.run(None, feed), args.repeats)  # noqa: B023
        unguarded = median_ms(lambda: plain.run(None, feed), args.repeats)  # noqa: B023
        probabilities, novelty = inspector.probabilities(images)

        def decide() -> list:
            photo_flags = implausible(photo_statistics(images), test.sizes[:batch], inspector.guard)  # noqa: B023
            return inspector.rule.decide_all(probabilities, photo_flags, novelty)  # noqa: B023

        checks = median_ms(decide, args.repeats)
        added = (guarded - unguarded + checks) / batch
        print(
            f"batch {batch:>2}: model {unguarded:.3f} ms without the guard, {guarded:.3f} ms with its second output; "
            f"photo checks and the decision rule {checks:.3f} ms; the guard adds {added:.3f} ms per image"
        )


if __name__ == "__main__":
    main()
