"""The model comparison table, from `dvc exp show --json` (never typed by hand).

One row for the committed default (HEAD) and one per experiment on it that DVC recorded (the
presets, sweeps): model, input, params, epochs, test figures at each run's own validation-chosen
threshold and robustness. Timings are not in the metrics (outputs hold no timings): train time and
throughput come from the stage logs and, with `--speed`, from timing each run's own shipped ONNX model
(found in the DVC cache by its hash) at batch 64 in this process, one after another, so the figures compare.
Usage (after the experiments ran): python bench/model_table.py [--all-commits] [--speed REPEATS]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


def _metrics(entry: dict, path: str) -> dict:
    return ((entry.get("data") or {}).get("metrics") or {}).get(path, {}).get("data", {})


def _row(name: str, entry: dict) -> dict | None:
    data = entry.get("data") or {}
    params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
    train, test = _metrics(entry, "metrics/train.json"), _metrics(entry, "metrics/test.json")
    robustness = _metrics(entry, "metrics/robustness.json")
    if not test or not params or "params" not in train:
        return None
    prepare, training = params["prepare"], params["train"]
    errors = test["missed_defects"] + test["false_rejects"]
    return {
        "experiment": name,
        "model": _model(training),
        "input": f"{prepare['image_size']}×{prepare['image_size']}×{3 if prepare['color_mode'] == 'RGB' else 1}",
        "params": f"{train['params']:,}",
        "lr": f"{training['lr']:g}",
        "epochs (best)": f"{train['epochs_run']} of {training['epochs']} ({train.get('best_epoch', '?')})",
        "val loss": f"{train['val_loss']:.4f}",
        "test accuracy": f"{100 * test['accuracy']:.2f} % ({test['n'] - errors}/{test['n']}{_flagged(test)})",
        "missed / false rej.": f"{test['missed_defects']} / {test['false_rejects']}",
        "threshold": f"{test['threshold']:.3f}",
        "worst line change": _worst(robustness),
        "strangers caught (decided ok)": _strangers(test),
    }


def _model(training: dict) -> str:
    if training["model"] == "cnn":
        return f"cnn ({training['cnn'].get('activation', 'relu')})"
    if training.get("weights") == "imagenet":
        return f"{training['model']} (ImageNet, {training.get('freeze', 0)} stages frozen)"
    return training["model"]


def _strangers(test: dict) -> str:
    """The generated not-a-part material: how much the run's guard catches, and how much it would pass as ok."""
    material = (test.get("not_a_part") or {}).get("material") or {}
    if not {"caught", "n", "decided_ok"} <= set(material):
        return ""
    return f"{material['caught']} of {material['n']} ({material['decided_ok']})"


def _flagged(test: dict) -> str:
    """Runs with the not-a-part guard score the parts they decide; say how many they did not."""
    flagged = (test.get("not_a_part") or {}).get("test_flagged")
    return f" decided; {flagged} not a part" if flagged is not None else ""


def _worst(robustness: dict) -> str:
    worst = robustness.get("worst") or {}
    if not worst:
        return ""
    return f"{100 * worst['accuracy']:.2f} %" + (f" ({worst['change']})" if worst.get("change") else "")


def onnx_images_per_second(entry: dict, cache: Path, repeats: int) -> str:
    """Median throughput at batch 64 of the run's `models/model.onnx`, read from the local DVC cache."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ort_timings import timings  # torch and the package load only when timing

    out = ((entry.get("data") or {}).get("outs") or {}).get("models/model.onnx") or {}
    digest = out.get("hash") or ""
    cached = cache / "files" / "md5" / digest[:2] / digest[2:]
    if not digest or not cached.is_file():
        return "not in the local cache"
    session = ort.InferenceSession(str(cached), providers=["CPUExecutionProvider"])
    _, channels, height, width = session.get_inputs()[0].shape
    feed = {"image": np.random.default_rng(0).random((64, channels, height, width), dtype=np.float32)}
    return f"{64 / statistics.median(timings(lambda: session.run(None, feed), repeats)):,.0f}"


def _with_speed(row: dict | None, entry: dict, cache: Path | None, repeats: int) -> list[dict]:
    if row and cache:
        row["ONNX img/s (b64)"] = onnx_images_per_second(entry, cache, repeats)
    return [row] if row else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--all-commits", action="store_true", help="experiments on every commit, not only HEAD's")
    parser.add_argument("--speed", type=int, metavar="REPEATS", default=0, help="time each ONNX model REPEATS times")
    args = parser.parse_args()
    if args.speed < 0:
        parser.error("--speed takes a positive number of repeats")
    cmd = ["dvc", "exp", "show", "--json"] + (["--all-commits"] if args.all_commits else [])
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed: {result.stderr.strip()}")
    cache = Path(subprocess.run(["dvc", "cache", "dir"], capture_output=True, text=True).stdout.strip()) if args.speed else None
    rows = []
    commits = [c for c in json.loads(result.stdout) if c["rev"] != "workspace"]
    for position, commit in enumerate(commits):
        if position == 0:  # HEAD: the committed default
            rows += _with_speed(_row(f"default (HEAD {commit['rev'][:7]})", commit), commit, cache, args.speed)
        for experiment in commit.get("experiments") or []:
            if (experiment.get("executor") or {}).get("state") in ("queued", "running", "failed"):
                continue  # such a run shows its baseline's metrics, not its own
            for run in experiment.get("revs") or []:
                rows += _with_speed(_row(run.get("name") or run["rev"][:7], run), run, cache, args.speed)
    if not rows:
        sys.exit("no experiment with metrics yet: run some first (see README, Experiments)")
    header = list(rows[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row[h] for h in header) + " |")


if __name__ == "__main__":
    main()
