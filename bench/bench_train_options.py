"""Training options against today's default, on validation only: the best epoch's validation loss and
accuracy and the training time, per seed, each run a fresh train stage process (the stage's own numerics)
on the prepared real data. The test split is not read.

Usage (after `dvc repro prepare`):
  python bench/bench_train_options.py --seeds 42 1 2 \
      --option default= --option fast=train.epochs=10,train.cnn.stem_pool=true
An option is NAME=KEY=VALUE,KEY=VALUE... (values in YAML); `NAME=` is params.yaml as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ruamel.yaml import YAML

PROJECT = Path(__file__).resolve().parents[1]


def parse_option(text: str) -> tuple[str, dict]:
    name, _, sets = text.partition("=")
    overrides = {}
    for item in filter(None, re.split(r",(?=[a-z_.]+=)", sets)):
        key, _, value = item.partition("=")
        overrides[key] = YAML(typ="safe").load(value)
    return name, overrides


def train_once(overrides: dict, seed: int, prepared: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="train-option-") as tmp:
        yaml = YAML()
        params = yaml.load((PROJECT / "params.yaml").read_text())
        for key, value in {**overrides, "train.seed": seed}.items():
            *path, last = key.split(".")
            section = params
            for part in path:
                section = section[part]
            if last not in section:
                sys.exit(f"{key}: not a param in params.yaml")
            section[last] = value
        with open(Path(tmp) / "params.yaml", "w") as f:
            yaml.dump(params, f)
        cmd = [sys.executable, str(PROJECT / "stages/train.py"), "--data", str(prepared)]
        cmd += ["--checkpoint", f"{tmp}/m.safetensors", "--metrics", f"{tmp}/train.json", "--live", f"{tmp}/live"]
        result = subprocess.run(
            cmd, cwd=tmp, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(PROJECT / "src"))
        )
        if result.returncode:
            sys.exit(result.stdout[-2000:] + result.stderr[-2000:])
        seconds = float(re.search(r"train: ([\d.]+) s of training", result.stdout).group(1))
        return json.loads((Path(tmp) / "train.json").read_text()) | {"seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--option", action="append", required=True, help="NAME=KEY=VALUE,... (NAME= for params.yaml as is)")
    parser.add_argument("--prepared", type=Path, default=PROJECT / "data/prepared")
    args = parser.parse_args()
    options = [parse_option(text) for text in args.option]
    rows = {name: [] for name, _ in options}
    for seed in args.seeds:  # seeds outermost: a drift in machine speed touches every option alike
        for name, overrides in options:
            figures = train_once(overrides, seed, args.prepared)
            rows[name].append(figures)
            print(f"{name} seed {seed}: {json.dumps(figures)}", flush=True)
    print("\n| option | settings | val loss (median) | val accuracy (median) | best epochs | training s (median) | ratio |")
    print("|---|---|---|---|---|---|---|")
    base = statistics.median(r["seconds"] for r in rows[options[0][0]])
    for name, overrides in options:
        runs = rows[name]
        seconds = statistics.median(r["seconds"] for r in runs)
        settings = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "params.yaml"
        print(
            f"| {name} | {settings} | {statistics.median(r['val_loss'] for r in runs):.4f} "
            f"| {statistics.median(r['val_accuracy'] for r in runs):.4f} | {', '.join(str(r['best_epoch']) for r in runs)} "
            f"| {seconds:.1f} | {seconds / base:.2f} |"
        )


if __name__ == "__main__":
    main()
