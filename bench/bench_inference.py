"""Inference speed of the trained model: PyTorch eager and ONNX Runtime (float and int8), batch 1 and 64, on real test images.

Run after `make repro` (it reads models/ and data/). Prints throughput, p50/p95 latency and peak
memory; the single-image figure includes JPEG decoding and resizing (`images.load_image`).
Usage: PYTHONPATH=src python bench/bench_inference.py [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from casting_inspection.core.params import load_section  # noqa: E402
from casting_inspection.data.dataset import load_split  # noqa: E402
from casting_inspection.data.images import load_image  # noqa: E402
from casting_inspection.evaluation.guard import load_guard  # noqa: E402
from casting_inspection.export.onnx import _to_onnx  # noqa: E402
from casting_inspection.modeling.inspector import load_inspector  # noqa: E402
from casting_inspection.modeling.networks import ProbabilityNet  # noqa: E402
from casting_inspection.serving.inference import Inspector  # noqa: E402


def timings(fn, repeats: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def summarize(name: str, batch: int, seconds: list[float]) -> dict:
    p50 = statistics.median(seconds)
    p95 = float(np.percentile(seconds, 95))
    row = {
        "engine": name,
        "batch": batch,
        "images_per_s": round(batch / p50, 1),
        "p50_ms": round(p50 * 1000, 2),
        "p95_ms": round(p95 * 1000, 2),
    }
    print(
        f"{name:<28} batch {batch:>3}: {row['images_per_s']:>8.1f} img/s   p50 {row['p50_ms']:>7.2f} ms   p95 {row['p95_ms']:>7.2f} ms"
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for both engines; 0 = all cores")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    test = load_split(Path("data/prepared"), "test")
    model, _, anomaly, _ = load_inspector(Path("models/model.safetensors"), Path("models/anomaly.safetensors"), "cpu")
    temperature = json.loads(Path("models/operating_point.json").read_text())["temperature"]
    # what export turns into the ONNX graph: classifier, guard's novelty and the model of good parts
    shipped = ProbabilityNet(model, temperature, load_guard(Path("models/guard.safetensors")) or None, anomaly).eval()
    options = ort.SessionOptions()
    if args.threads:
        options.intra_op_num_threads = args.threads
    session = ort.InferenceSession("models/model.onnx", options, providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession("models/model.int8.onnx", options, providers=["CPUExecutionProvider"])
    # the classifier alone, without the guard and the model of good parts: what the shipped graph adds costs
    alone = _to_onnx(ProbabilityNet(model).eval(), test.images[:2].float() / 255, 18, ["defect_probability"])
    classifier = ort.InferenceSession(alone.SerializeToString(), options, providers=["CPUExecutionProvider"])
    prepare = load_section("prepare")
    jpegs = [Path("data/raw", p).read_bytes() for p in test.paths[:64]]

    rows = []
    print(
        f"torch {torch.__version__}, onnxruntime {ort.__version__}, {torch.get_num_threads()} threads, "
        f"input {tuple(test.images.shape[1:])}"
    )
    for batch in (1, 64):
        x = test.images[:batch].float() / 255
        with torch.inference_mode():
            rows.append(summarize("pytorch eager", batch, timings(lambda: shipped(x), args.repeats)))  # noqa: B023
        feed = {"image": x.numpy()}
        rows.append(summarize("onnxruntime", batch, timings(lambda: session.run(None, feed), args.repeats)))  # noqa: B023
        rows.append(summarize("onnxruntime classifier only", batch, timings(lambda: classifier.run(None, feed), args.repeats)))  # noqa: B023
        rows.append(summarize("onnxruntime int8", batch, timings(lambda: int8.run(None, feed), args.repeats)))  # noqa: B023

    counter = iter(range(10**9))

    def one_image_end_to_end():
        data = jpegs[next(counter) % len(jpegs)]
        array, _ = load_image(data, prepare)
        session.run(None, {"image": (array[None].astype(np.float32) / 255)})

    rows.append(summarize("onnxruntime + decode/resize", 1, timings(one_image_end_to_end, args.repeats)))
    # what predict, serve and watch run: decode, the photo checks, the graph (maps included) and the decision
    inspector = Inspector(Path("models/model.onnx"), args.threads)
    files = [(f"{i}.jpeg", data) for i, data in enumerate(jpegs)]
    for batch in (1, 64):
        chunk = files[:batch]
        rows.append(summarize("Inspector.inspect, JPEG in", batch, timings(lambda: inspector.inspect(chunk), args.repeats)))  # noqa: B023
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    onnx_mib = onnx_only_peak_mib(test.paths)
    print(
        f"peak resident memory: {peak_mib:.0f} MiB for this process (PyTorch and ONNX Runtime loaded); "
        f"{onnx_mib:.0f} MiB for ONNX Runtime alone deciding all {len(test.paths)} test JPEGs, one by one"
    )
    print(json.dumps({"rows": rows, "peak_rss_mib": round(peak_mib), "onnx_only_peak_rss_mib": round(onnx_mib)}))


def onnx_only_peak_mib(paths: list[str]) -> float:
    """Peak memory of a process that only decodes images and runs the ONNX model: what a deployment needs."""
    code = (
        "import sys, numpy as np, onnxruntime as ort\n"
        "from pathlib import Path\n"
        "from casting_inspection.data.images import load_image\n"
        "from casting_inspection.core.params import load_section\n"
        "params = load_section('prepare')\n"
        "session = ort.InferenceSession('models/model.onnx', providers=['CPUExecutionProvider'])\n"
        "for path in sys.stdin.read().split():\n"
        "    array, _ = load_image(Path('data/raw', path).read_bytes(), params)\n"
        "    session.run(None, {'image': array[None].astype(np.float32) / 255})\n"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent
        "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) / 1024)\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    result = subprocess.run(
        [sys.executable, "-c", code],
        input="\n".join(paths),
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": src},
        check=True,
    )
    return float(result.stdout.strip())


if __name__ == "__main__":
    main()
