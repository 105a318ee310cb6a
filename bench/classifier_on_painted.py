"""Whether the classifier sees the painted defects at all, on validation only: its calibrated defect probability on
the unpainted validation good parts and on each painted kind, and, among the painted parts the shipped decision lets
through, how many the classifier ranks above the 99th percentile of good parts. If it ranked them high, a joint rule
on the classifier's probability and the model of good parts' score could catch some; if not, no such rule can. The
test split is not read.

Usage (after `dvc repro departures evaluate`): PYTHONPATH=src python bench/classifier_on_painted.py
"""

from casting_inspection.core.numerics import pin_numerics

pin_numerics()

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from casting_inspection.data.dataset import load_split
from casting_inspection.evaluation.painted_set import load_painted
from casting_inspection.modeling.checkpoint import load_checkpoint
from casting_inspection.modeling.predict import predict_logits


def probabilities(model, images: torch.Tensor, temperature: float) -> np.ndarray:
    logits = predict_logits(model, images, 128, torch.device("cpu")).numpy().ravel()
    return 1 / (1 + np.exp(-logits / temperature))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."))
    root = parser.parse_args().root
    point = json.loads((root / "models/operating_point.json").read_text())
    model, checkpoint = load_checkpoint(root / "models/model.safetensors")
    val = load_split(root / "data/prepared", "val")
    good = np.asarray(val.labels).astype(int) == checkpoint["class_names"].index("ok_front")
    with safe_open(str(root / "data/departures.safetensors"), "pt") as handle:
        scores = {key: handle.get_tensor(key).numpy() for key in handle.keys() if key == "val" or key.startswith("painted/")}
    good_p = probabilities(model, val.images, point["temperature"])[good]
    top = np.quantile(good_p, 0.99)
    print(f"validation good parts ({good.sum()}): probability median {np.median(good_p):.1e}, 90th percentile "
          f"{np.quantile(good_p, 0.9):.1e}, 99th {top:.1e}")  # fmt: skip
    painted = load_painted(root / "data/painted")
    for kind, images in painted.images.items():
        p, s = probabilities(model, images, point["temperature"]), scores[f"painted/{kind}"]
        shipped = (p < point["threshold"]) & (s < point["anomaly_threshold"])
        print(f"{kind:8s} probability median {np.median(p):.1e}, 90th percentile {np.quantile(p, 0.9):.1e}; "
              f"passed both thresholds {shipped.mean():.1%}, of which above the good parts' 99th percentile "
              f"{(p[shipped] > top).mean():.1%}")  # fmt: skip


if __name__ == "__main__":
    main()
