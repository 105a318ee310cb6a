"""ONNX Runtime's timings in a process that never loads PyTorch, as a deployment runs the model.

PyTorch's worker threads keep spinning for a while after each of its operations; in the same process they take the
cores ONNX Runtime is being timed on (the shipped graph measured 3.8 ms a photo at batch 64 beside them, 1.9 ms
alone). `bench_inference.py` runs this script for every ONNX Runtime row; run alone it prints them as JSON.
Usage: PYTHONPATH=src python bench/ort_timings.py --repeats 30 [--classifier CLASSIFIER.onnx]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from casting_inspection.data.images import load_image
from casting_inspection.serving.inference import Inspector


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
        f"{name:<28} batch {batch:>3}: {row['images_per_s']:>8.1f} img/s   p50 {row['p50_ms']:>7.2f} ms   p95 {row['p95_ms']:>7.2f} ms",
        flush=True,
    )
    return row


def test_jpegs(count: int) -> list[tuple[str, bytes]]:
    """The first `count` decided test photos of the prepared manifest, as files."""
    with open("data/prepared/manifest.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == "test" and r["status"] == "ok"][:count]
    return [(r["path"], Path("data/raw", r["path"]).read_bytes()) for r in rows]


def ort_rows(repeats: int, threads: int, classifier: Path | None) -> list[dict]:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    sessions = {"onnxruntime": "models/model.onnx", "onnxruntime int8": "models/model.int8.onnx"}
    if classifier:
        sessions["onnxruntime classifier only"] = str(classifier)
    sessions = {name: ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]) for name, path in sessions.items()}
    inspector = Inspector(Path("models/model.onnx"), threads)
    files = test_jpegs(64)
    spec = inspector.spec
    images = np.stack([load_image(data, spec)[0] for _, data in files]).astype(np.float32) / 255
    rows = []
    for batch in (1, 64):
        feed = {"image": images[:batch]}
        for name, session in sessions.items():
            rows.append(summarize(name, batch, timings(lambda s=session, f=feed: s.run(None, f), repeats)))
    counter = iter(range(10**9))
    session = sessions["onnxruntime"]

    def one_image_end_to_end():
        array, _ = load_image(files[next(counter) % len(files)][1], spec)
        session.run(None, {"image": array[None].astype(np.float32) / 255})

    rows.append(summarize("onnxruntime + decode/resize", 1, timings(one_image_end_to_end, repeats)))
    # what predict, serve and watch run: decode, the photo checks, the graph (maps included) and the decision
    for batch in (1, 64):
        chunk = files[:batch]
        rows.append(summarize("Inspector.inspect, JPEG in", batch, timings(lambda c=chunk: inspector.inspect(c), repeats)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime's threads; 0 = all cores")
    parser.add_argument("--classifier", type=Path, help="the classifier alone as ONNX (bench_inference.py writes it)")
    args = parser.parse_args()
    print(json.dumps({"rows": ort_rows(args.repeats, args.threads, args.classifier)}))


if __name__ == "__main__":
    main()
