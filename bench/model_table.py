"""The model comparison table, from `dvc exp show --json` (never typed by hand).

One row for the committed default (HEAD) and one per experiment on it that DVC recorded (the
presets, sweeps): model, input, params, epochs, test figures at each run's own validation-chosen
threshold and robustness. Timings are not in the metrics (outputs hold no timings): train time and
throughput come from the stage logs and `bench/bench_inference.py`.
Usage (after the experiments ran): python bench/model_table.py [--all-commits]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def _metrics(entry: dict, path: str) -> dict:
    return ((entry.get("data") or {}).get("metrics") or {}).get(path, {}).get("data", {})


def _row(name: str, entry: dict) -> dict | None:
    data = entry.get("data") or {}
    params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
    train, test = _metrics(entry, "metrics/train.json"), _metrics(entry, "metrics/test.json")
    robustness = _metrics(entry, "metrics/robustness.json")
    if not test or not params:
        return None
    prepare, training = params["prepare"], params["train"]
    errors = test["missed_defects"] + test["false_rejects"]
    return {
        "experiment": name,
        "model": training["model"] + (f" ({training['cnn'].get('activation', 'relu')})" if training["model"] == "cnn" else ""),
        "input": f"{prepare['image_size']}×{prepare['image_size']}×{3 if prepare['color_mode'] == 'RGB' else 1}",
        "params": f"{train['params']:,}",
        "lr": f"{training['lr']:g}",
        "epochs": f"{train['epochs_run']} of {training['epochs']}",
        "val loss": f"{train['val_loss']:.4f}",
        "test accuracy": f"{100 * test['accuracy']:.2f} % ({test['n'] - errors}/{test['n']})",
        "missed / false rej.": f"{test['missed_defects']} / {test['false_rejects']}",
        "threshold": f"{test['threshold']:.3f}",
        "worst line change": f"{100 * robustness['worst']['accuracy']:.2f} %" if robustness else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--all-commits", action="store_true", help="experiments on every commit, not only HEAD's")
    args = parser.parse_args()
    cmd = ["dvc", "exp", "show", "--json"] + (["--all-commits"] if args.all_commits else [])
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed: {result.stderr.strip()}")
    rows = []
    commits = [c for c in json.loads(result.stdout) if c["rev"] != "workspace"]
    for position, commit in enumerate(commits):
        if position == 0:  # HEAD: the committed default
            base = _row(f"default (HEAD {commit['rev'][:7]})", commit)
            rows += [base] if base else []
        for experiment in commit.get("experiments") or []:
            for run in experiment.get("revs") or []:
                row = _row(run.get("name") or run["rev"][:7], run)
                if row:
                    rows.append(row)
    if not rows:
        sys.exit("no experiment with metrics yet: run some first (see README, Experiments)")
    header = list(rows[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row[h] for h in header) + " |")


if __name__ == "__main__":
    main()
