"""Inference speed of the trained model: PyTorch eager and ONNX Runtime (float and int8), batch 1 and 64, on real test images.

Run after `make repro` (it reads models/ and data/). Prints throughput, p50/p95 latency and peak
memory; the single-image figure includes JPEG decoding and resizing (`images.load_image`). Every ONNX
Runtime row is timed in a process that never loads PyTorch (`ort_timings.py`), as a deployment runs it.
Usage: PYTHONPATH=src python bench/bench_inference.py [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # PyTorch's idle threads sleep while the other process is timed

import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from casting_inspection.data.dataset import load_split  # noqa: E402
from casting_inspection.evaluation.guard import load_guard  # noqa: E402
from casting_inspection.export.onnx import _to_onnx  # noqa: E402
from casting_inspection.modeling.inspector import load_inspector  # noqa: E402
from casting_inspection.modeling.networks import ProbabilityNet  # noqa: E402
from ort_timings import summarize, timings  # noqa: E402


def ort_rows(classifier: torch.nn.Module, example: torch.Tensor, repeats: int, threads: int) -> list[dict]:
    """The ONNX Runtime rows, from `ort_timings.py` in its own process; the classifier alone goes along as a file."""
    with tempfile.TemporaryDirectory() as scratch:
        alone = Path(scratch) / "classifier.onnx"
        alone.write_bytes(_to_onnx(classifier, example, 18, ["defect_probability"]).SerializeToString())
        command = [sys.executable, str(Path(__file__).with_name("ort_timings.py")), "--repeats", str(repeats)]
        command += ["--threads", str(threads), "--classifier", str(alone)]
        src = str(Path(__file__).resolve().parents[1] / "src")
        result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": src})
    if result.returncode != 0:
        sys.exit(f"ort_timings.py failed:\n{result.stderr[-3000:]}")
    *lines, rows = result.stdout.strip().splitlines()
    print("\n".join(lines), flush=True)
    return json.loads(rows)["rows"]


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
    print(
        f"torch {torch.__version__}, onnxruntime {ort.__version__}, {torch.get_num_threads()} threads, "
        f"input {tuple(test.images.shape[1:])}"
    )
    rows = []
    for batch in (1, 64):
        x = test.images[:batch].float() / 255
        with torch.inference_mode():
            rows.append(summarize("pytorch eager", batch, timings(lambda: shipped(x), args.repeats)))  # noqa: B023
    # the classifier alone, without the guard and the model of good parts: what the shipped graph adds costs
    rows += ort_rows(ProbabilityNet(model).eval(), test.images[:2].float() / 255, args.repeats, args.threads)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    onnx_mib = onnx_only_peak_mib(test.paths)
    print(
        f"peak resident memory: {peak_mib:.0f} MiB for this process (PyTorch loaded); "
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
