"""What an experiment on training costs: `dvc exp run -S train.seed=N` of the default, train to report,
at each given commit, in one run (the ratio is what to quote; these machines are noisy).

Each commit is checked out in a temporary git worktree that shares this project's DVC cache, so its
committed pipeline is restored (`dvc checkout`) instead of re-run; the commit's lock must be in the
cache (run `dvc repro` at it once). The experiment then re-runs what reads train's outputs.
Usage: python bench/bench_exp_run.py --revs 81cd3fb HEAD [--seed 1] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import re
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
        sys.exit(f"{' '.join(cmd)} (in {cwd}) failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout + result.stderr


def exp_run(rev: str, seed: int, env: dict) -> tuple[float, dict[str, float]]:
    """Wall seconds of one `dvc exp run` at `rev`, and each stage's own time."""
    with tempfile.TemporaryDirectory(prefix="exp-run-") as tmp:
        tree = Path(tmp) / "tree"
        sh(["git", "worktree", "add", "-q", "--detach", str(tree), rev], PROJECT, env)
        try:
            sh(["dvc", "cache", "dir", "--local", str(PROJECT / ".dvc/cache")], tree, env)
            sh(["dvc", "checkout", "-q"], tree, env)
            started = time.perf_counter()
            name = f"bench-exp-run-{os.getpid()}-{time.monotonic_ns()}"
            output = sh(["dvc", "exp", "run", "-n", name, "-S", f"train.seed={seed}"], tree, env)
            wall = time.perf_counter() - started
            sh(["dvc", "exp", "remove", name], tree, env)  # a timing, not an experiment to keep
        finally:
            sh(["git", "worktree", "remove", "--force", str(tree)], PROJECT, env)
    stages = {name: float(s) for name, s in re.findall(r"^(\w+): done in ([\d.]+) s$", output, re.M)}
    return wall, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--revs", nargs="+", required=True, help="commits to compare; the first is the baseline")
    parser.add_argument("--seed", type=int, default=1, help="train.seed of the experiment (the default's is 42)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    runs: dict[str, list] = {rev: [] for rev in args.revs}
    for _ in range(args.repeats):
        for rev in args.revs:
            wall, stages = exp_run(rev, args.seed, env)
            runs[rev].append(wall)
            print(f"{rev}: {wall:.1f} s wall; " + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items()), flush=True)
    base = statistics.median(runs[args.revs[0]])
    print("\n| commit | dvc exp run, train to report (median) | ratio |\n|---|---|---|")
    for rev in args.revs:
        wall = statistics.median(runs[rev])
        print(f"| {rev} | {wall:.1f} s | {wall / base:.2f} |")


if __name__ == "__main__":
    main()
