"""Wall time of the whole pipeline and test accuracy over several training seeds, with the default params.

Copies the pipeline into a temporary git repository, runs `dvc repro` there on the real archive
(stage times, peak memory), then `dvc exp run -S train.seed=N` for each further seed. The test
split chooses nothing here: every seed is reported.
Usage: python bench/bench_pipeline.py --archive ../shared/datasets/casting_data.zip [--seeds 42 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def sh(cmd: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def copy_project(dest: Path, env: dict) -> None:
    for name in ("dvc.yaml", "params.yaml", "stages", "src", ".gitignore"):
        source = PROJECT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, dest / name)
    for cmd in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "bench@localhost"],
        ["git", "config", "user.name", "bench"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.autostage", "true"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "bench"],
    ):
        sh(cmd, dest, env)


def stage_times(output: str) -> dict[str, float]:
    return {name: float(seconds) for name, seconds in re.findall(r"^(\w+): done in ([\d.]+) s$", output, re.M)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--archive", required=True, help="the Kaggle zip (or its folder)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2], help="train.seed values; the first is params.yaml's")
    args = parser.parse_args()
    env = dict(
        os.environ,
        CASTING_ARCHIVE=str(Path(args.archive).resolve()),
        DVC_NO_ANALYTICS="1",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        repo = Path(tmp)
        copy_project(repo, env)
        started = time.perf_counter()
        output = sh(["dvc", "repro"], repo, env)
        total = time.perf_counter() - started
        times = stage_times(output)
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(
            f"dvc repro, all stages: {total:.1f} s wall; per stage (in-process): "
            + ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
        )
        print(
            f"prepare -> export: {total - times.get('download', 0) - times.get('report', 0):.1f} s wall "
            "(total minus the in-process time of download and report)"
        )
        print(f"peak resident memory of the largest stage process: {peak_mib:.0f} MiB")
        train = json.loads((repo / "metrics/train.json").read_text())
        if train.get("classifier") is False:  # good photos only: no training seed to vary, the shipped decision is all
            combined = json.loads((repo / "metrics/test.json").read_text())["combined"]
            print(f"no classifier (train.classifier: false), good photos {train['good_photos']}; shipped decision: {combined}")
            return
        print(
            f"train: {times.get('train', 0) / train['epochs_run']:.1f} s/epoch (mean), {train['epochs_run']} epochs, {train['params']:,} params"
        )

        results = []
        for i, seed in enumerate(args.seeds):
            if i:
                sh(["dvc", "exp", "run", "-S", f"train.seed={seed}"], repo, env)
            test = json.loads((repo / "metrics/test.json").read_text())
            train = json.loads((repo / "metrics/train.json").read_text())
            worst = json.loads((repo / "metrics/robustness.json").read_text())["worst"]
            errors = test["missed_defects"] + test["false_rejects"]
            results.append(test["accuracy"])
            half = test["at_threshold_0_5"]
            print(
                f"seed {seed:>4}: threshold {test['threshold']:.3f}: test accuracy {test['accuracy']:.4%} ({test['n'] - errors}/{test['n']}), "
                f"missed defects {test['missed_defects']}, false rejects {test['false_rejects']}, "
                f"val accuracy {train['val_accuracy']:.4%}; "
                f"robustness worst {worst['accuracy']:.2%} ({worst['change']}), "
                f"at most {worst['max_missed_defects']} missed defects per change; at 0.5: "
                f"{half['n'] - half['missed_defects'] - half['false_rejects']}/{half['n']}"
            )
        print(f"median test accuracy over {len(results)} seeds: {statistics.median(results):.4%}")


if __name__ == "__main__":
    main()
