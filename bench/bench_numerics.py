"""What pinning the numerics costs: training epochs with the stages' pins (2 threads, AVX2 code paths) against
the machine's own settings (CASTING_NUMERICS=native), each in a fresh process on the prepared real data.

Usage (after `dvc repro prepare`): python bench/bench_numerics.py [--epochs 3] [--repeats 1]
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SCRIPT = """
import dataclasses, sys, time
from pathlib import Path
from casting_inspection.core.numerics import pin_numerics
pinned = pin_numerics()
import torch
from casting_inspection.core.params import load_section
from casting_inspection.modeling.training import train_model
params = dataclasses.replace(load_section("train"), epochs=int(sys.argv[1]))
out = Path(sys.argv[2])
train_model(params, Path("data/prepared"), out / "model.safetensors", out / "train.json", out / "live")
print("threads", torch.get_num_threads(), "capability", torch.backends.cpu.get_cpu_capability(), "pinned", pinned)
"""


def run(mode: str, epochs: int) -> tuple[list[float], str]:
    """Per-epoch seconds (from the training log) and the settings line, for one fresh process."""
    env = dict(os.environ, CASTING_NUMERICS=mode, PYTHONPATH="src")
    with tempfile.TemporaryDirectory() as scratch:
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(epochs), scratch], env=env, capture_output=True, text=True, check=True
        )
    seconds = [float(s) for s in re.findall(r"^epoch .*?([0-9.]+)s(?:  \*best)?$", result.stdout, re.M)]
    return seconds, result.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    if not Path("data/prepared/train.npy").exists():
        raise SystemExit("data/prepared is missing: run `dvc repro prepare` first")
    medians = {}
    for mode in ("reproducible", "native") * args.repeats:
        seconds, settings = run(mode, args.epochs)
        print(f"{mode:<12} epochs {', '.join(f'{s:.1f}' for s in seconds)} s  ({settings})", flush=True)
        medians.setdefault(mode, []).extend(seconds[1:] or seconds)  # the first epoch warms up
    pinned, native = statistics.median(medians["reproducible"]), statistics.median(medians["native"])
    print(f"median epoch: pinned {pinned:.1f} s, native {native:.1f} s: pinning costs {pinned / native - 1:+.0%}")


if __name__ == "__main__":
    main()
