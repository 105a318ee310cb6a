"""A plant learning from its own camera, on the real data: the figures with and without its labelled photos.

Simulates the loop of the README's "Learning from the line" without a plant: `--photos` official-train
photos (never test ones, nor the train files identical to a test photo that prepare drops), re-taken by a second camera (each part turned 10-30 degrees, the lamp 20 % off
either way, softer focus, harder JPEG: `evaluation.perturbations.perturb` chained), are imported as line
photos with `casting-inspect import-line`; then `dvc repro export` runs in a clone of this repository (sharing
its DVC cache, so only what the new data changes runs). Both models — this checkout's and the retrained
one — then decide the same held-out line test photos with the shipped ONNX models, and both official test
figures are printed. The line test photos are re-takes of parts whose original photos both models trained
on: their figures are optimistic for a real second camera. Nothing in this checkout changes (its DVC cache
gains the clone's new outputs).

Usage (after `make repro`): python bench/simulate_line.py [--photos 400] [--seed 0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from casting_inspection.evaluation.perturbations import perturb
from casting_inspection.serving.inference import Inspector

PROJECT = Path(__file__).resolve().parents[1]
CLASSES = {"def_front": "defective", "ok_front": "ok"}


def retake(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The second camera: a turned part, a lamp 20 % brighter or darker, softer focus, JPEG at quality 50."""
    image = perturb(image, "rotation", float(rng.uniform(10, 30)), rng)
    image = perturb(image, "brightness", 0.2, rng)
    image = perturb(image, "blur", 1.2, rng)
    return perturb(image, "jpeg", 50, rng)


def render_plant(raw_dir: Path, manifest: Path, out: Path, photos: int, seed: int) -> None:
    """`photos` official-train photos that prepare kept (a dropped one is a copy of a test photo: its re-take
    would carry the test part into training), drawn at random, re-taken into out/<class folder>/."""
    table = pd.read_csv(manifest, keep_default_na=False)
    kept = table[(table["official_split"] == "train") & (table["status"] == "ok")]
    paths = sorted(raw_dir / path for path in kept["path"])
    rng = np.random.default_rng(seed)
    for path in rng.choice(np.array(paths, dtype=object), photos, replace=False):
        (out / path.parent.name).mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            retake(image.convert("L"), rng).save(out / path.parent.name / f"{path.stem}.png")


def run(cmd: list[str], cwd: Path, allowed: tuple[int, ...] = (0,)) -> None:
    print("$", " ".join(cmd), flush=True)
    result = subprocess.run(cmd, cwd=cwd)
    if result.returncode not in allowed:
        sys.exit(f"{' '.join(cmd[:2])} failed with exit status {result.returncode}")


def decide(model: Path, files: list[Path], labels: np.ndarray) -> dict:
    """The shipped decisions of one ONNX model on labelled photos."""
    results = Inspector(model).inspect([(f.name, f.read_bytes()) for f in files])
    decisions = np.array([r.decision for r in results])
    decided = np.isin(decisions, ["ok", "defective"])
    rejected = decisions == "defective"
    return {
        "photos": len(files),
        "decided": int(decided.sum()),
        "accuracy of decided": round(float((rejected[decided] == (labels[decided] == 1)).mean()), 4),
        "missed defects": int((decided & ~rejected & (labels == 1)).sum()),
        "false rejects": int((rejected & (labels == 0)).sum()),
        "review": int((decisions == "review").sum()),
        "not a part": int((decisions == "not_a_part").sum()),
    }


def official(repo: Path) -> dict:
    test = json.loads((repo / "metrics/test.json").read_text())
    return {
        "decided": test["n"],
        "accuracy": test["accuracy"],
        "missed defects": test["missed_defects"],
        "false rejects": test["false_rejects"],
        "not a part": test["not_a_part"]["test_flagged"],
    }


def simulate(photos: int, seed: int, work: Path) -> None:
    repo, plant = work / "repo", work / "plant"
    render_plant(PROJECT / "data/raw", PROJECT / "data/prepared/manifest.csv", plant, photos, seed)
    run(["git", "clone", "-q", str(PROJECT), str(repo)], work)
    run(["dvc", "cache", "dir", "--local", str(PROJECT / ".dvc/cache")], repo)
    run(["dvc", "checkout", "-q"], repo)
    maps = [arg for folder, verdict in CLASSES.items() for arg in ("--map", f"{folder}={verdict}")]
    run(
        ["casting-inspect", "import-line", str(plant), *maps, "--inspector", "simulation"], repo, allowed=(0, 3)
    )  # 3: some skipped
    run(["dvc", "repro", "export"], repo)
    manifest = pd.read_csv(repo / "data/prepared/manifest.csv", keep_default_na=False)
    line = manifest[manifest["source"] == "line"]
    print(
        "\nline photos:",
        line.groupby(["split", "label"]).size().to_dict(),
        "| dropped:",
        int((line["status"] == "dropped").sum()),
    )
    held_out = line[line["split"] == "line_test"]
    files = [repo / "data/line" / Path(p).relative_to("line") for p in held_out["path"]]
    labels = (held_out["label"] == "def_front").to_numpy().astype(int)
    rows = {
        "without (this checkout's model)": (decide(PROJECT / "models/model.onnx", files, labels), official(PROJECT)),
        "with (retrained on the line photos)": (decide(repo / "models/model.onnx", files, labels), official(repo)),
    }
    for name, (line_figures, official_figures) in rows.items():
        print(f"\n{name}\n  line test:     {line_figures}\n  official test: {official_figures}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=400, help="official-train photos re-taken as line photos")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="work in this (new) folder and keep it, instead of a temporary one")
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True)
        simulate(args.photos, args.seed, args.keep.resolve())
        return
    with tempfile.TemporaryDirectory() as work:
        simulate(args.photos, args.seed, Path(work))


if __name__ == "__main__":
    main()
