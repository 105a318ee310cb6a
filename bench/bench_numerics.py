"""What pinning the numerics costs, and whether it holds: training epochs with the stages' pins (2 threads,
AVX2 code paths) against the machine's own settings (CASTING_NUMERICS=native), each in a fresh process on
the prepared real data; then the same short training as another machine would run it — one core
(`taskset -c 0`) and an environment asking for other threads and instruction sets — whose weights must
hash the same. `intel-only` is the same pins with MKL's AVX2 branch, which MKL honours on Intel CPUs only.

Usage (after `dvc repro prepare`): python bench/bench_numerics.py [--epochs 3] [--repeats 1]
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SCRIPT = """
import dataclasses, json, os, sys, time
from pathlib import Path
from casting_inspection.core import numerics
numerics.PINNED.update(json.loads(os.environ.get("BENCH_PINS", "{}")))
pinned = numerics.pin_numerics()
import torch
from casting_inspection.core.params import load_section
from casting_inspection.modeling.training import train_model
params = dataclasses.replace(load_section("train"), epochs=int(sys.argv[1]))
out = Path(sys.argv[2])
train_model(params, Path("data/prepared"), out / "model.safetensors", out / "train.json", out / "live")
import hashlib
digest = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()[:16]
print("threads", torch.get_num_threads(), "capability", torch.backends.cpu.get_cpu_capability(), "pinned", pinned,
      "weights", digest)
"""
ELSEWHERE = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "ATEN_CPU_CAPABILITY": "default",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "OPENBLAS_CORETYPE": "Prescott",
}  # what another machine's setup may say
INTEL_ONLY = {"MKL_CBWR": "AVX2,STRICT", "OPENBLAS_NUM_THREADS": "2"}  # MKL's AVX2 branch: honoured on Intel CPUs only


def run(mode: str, epochs: int, prefix: tuple = (), **extra: str) -> tuple[list[float], str]:
    """Per-epoch seconds (from the training log) and the settings line, for one fresh process."""
    env = dict(os.environ, CASTING_NUMERICS=mode, PYTHONPATH="src", **extra)
    with tempfile.TemporaryDirectory() as scratch:
        result = subprocess.run(
            [*prefix, sys.executable, "-c", SCRIPT, str(epochs), scratch], env=env, capture_output=True, text=True, check=True
        )
    seconds = [float(s) for s in re.findall(r"^epoch .*?([0-9.]+)s(?:  \*best)?$", result.stdout, re.M)]
    return seconds, result.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per timed run; 0 = only the same-bytes check")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    if not Path("data/prepared/train.npy").exists():
        raise SystemExit("data/prepared is missing: run `dvc repro prepare` first")
    medians = {}
    variants = {"pinned": ("reproducible", {}), "intel-only": ("reproducible", INTEL_ONLY), "native": ("native", {})}
    for name in list(variants) * args.repeats if args.epochs else ():
        mode, pins = variants[name]
        seconds, settings = run(mode, args.epochs, BENCH_PINS=json.dumps(pins))
        print(f"{name:<12} epochs {', '.join(f'{s:.1f}' for s in seconds)} s  ({settings})", flush=True)
        medians.setdefault(name, []).extend(seconds[1:] or seconds)  # the first epoch warms up
    if medians:
        pinned, intel, native = (statistics.median(medians[name]) for name in variants)
        print(
            f"median epoch: pinned {pinned:.1f} s, MKL's Intel-only AVX2 branch {intel:.1f} s, native {native:.1f} s: "
            f"the vendor-independent pins cost {pinned / intel - 1:+.0%} against the Intel-only ones, {pinned / native - 1:+.0%} against native"
        )
    here = run("reproducible", 1)[1].split()[-1]
    elsewhere = run("reproducible", 1, ("taskset", "-c", "0"), **ELSEWHERE)[1].split()[-1]
    print(
        f"one epoch, 2 cores: weights {here}; 1 core with {ELSEWHERE}: weights {elsewhere}; "
        + ("identical" if here == elsewhere else "DIFFERENT")
    )


if __name__ == "__main__":
    main()
