"""Our default network against re-implementations of two published recipes, in one process on the same data.

- "vgg224": a VGG-style CNN (3 conv/pool blocks, dense 128) on 224x224x3, BCE, Adam lr 1e-4, batch 16;
- "resnet18_224": torchvision ResNet-18 from scratch (no pretrained weights are reachable here),
  224 px, ImageNet normalisation, cross-entropy over 2 classes, Adam lr 1e-3, weight decay 1e-4, batch 16;
- "ours": the default model and recipe from params.yaml at its own input size.

Each trains on the same train images for `--epochs` (a fraction is allowed: 0.25 = a quarter of an
epoch) and is then scored on the validation split; training throughput gives the time per epoch.
Inference throughput is measured at batch 64. Run after `make repro` (reads data/raw, data/prepared).
Usage: PYTHONPATH=src python bench/bench_reference.py [--epochs 0.25]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from torchvision.models import resnet18

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from casting_inspection.core.params import load_section  # noqa: E402
from casting_inspection.data.dataset import load_split  # noqa: E402
from casting_inspection.modeling.augmentation import (
    augment_batch,
    augmentation_from,  # noqa: E402
)
from casting_inspection.modeling.networks import InspectionNet, count_parameters  # noqa: E402
from casting_inspection.modeling.training import model_config, seed_everything  # noqa: E402

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def vgg224() -> nn.Module:
    def block(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]

    return nn.Sequential(
        *block(3, 32),
        *block(32, 64),
        *block(64, 128),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128 * 14 * 14, 128),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(128, 1),
    )


class ImageNetNormalized(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


def load_rgb224(paths: list[str]) -> torch.Tensor:
    arrays = [
        np.asarray(
            Image.open(io.BytesIO(Path("data/raw", p).read_bytes())).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
        )
        for p in paths
    ]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def train_for(
    model, images, labels, batch_size, optimizer, loss_kind, n_images, augment=None, group=1, channels_last=False
) -> float:
    """Train on the first `n_images` of a seeded shuffle; return images per second."""
    model.train()
    order = torch.randperm(len(images))[:n_images]
    start = time.perf_counter()
    for i in range(0, len(order), batch_size):
        index = order[i : i + batch_size]
        x = images[index].float().div_(255)
        if augment is not None:  # as the train stage does it
            x = augment_batch(augment, x, group).clamp_(0, 1)
        out = model(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
        if loss_kind == "ce":
            loss = nn.functional.cross_entropy(out, labels[index].long())
        else:
            loss = nn.functional.binary_cross_entropy_with_logits(out.reshape(-1), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return len(order) / (time.perf_counter() - start)


@torch.inference_mode()
def score(model, images, labels, loss_kind, channels_last=False) -> tuple[float, float]:
    """Validation accuracy and inference images/s at batch 64."""
    model.eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    start = time.perf_counter()
    outs = [
        model(images[i : i + 64].float().div_(255).contiguous(memory_format=memory_format)) for i in range(0, len(images), 64)
    ]
    speed = len(images) / (time.perf_counter() - start)
    out = torch.cat(outs)
    predicted = out.argmax(1) if loss_kind == "ce" else (out.reshape(-1) > 0).long()
    return (predicted == labels.long()).float().mean().item(), speed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=float, default=0.25, help="training epochs per recipe (fractions allowed)")
    args = parser.parse_args()
    seed_everything(0)
    train, val = load_split(Path("data/prepared"), "train"), load_split(Path("data/prepared"), "val")
    n_images = max(16, int(len(train.images) * args.epochs))
    print(
        f"{torch.get_num_threads()} threads; each recipe trains on {n_images} images ({args.epochs} epoch), scored on {len(val.images)} val images"
    )
    started = time.perf_counter()
    train224, val224 = load_rgb224(train.paths), load_rgb224(val.paths)
    print(f"decoding {len(train224) + len(val224)} JPEGs at 224x224x3: {time.perf_counter() - started:.1f} s")

    params = load_section("train")
    ours = InspectionNet(model_config(params, train))
    ours = ours.to(memory_format=torch.channels_last)  # as the train stage runs it
    recipes = {
        "vgg224": (vgg224(), train224, val224, 16, 1e-4, 0.0, "bce", None),
        "resnet18_224": (ImageNetNormalized(resnet18(weights=None, num_classes=2)), train224, val224, 16, 1e-3, 1e-4, "ce", None),
        "ours": (
            ours,
            train.images,
            val.images,
            params.batch_size,
            params.lr,
            params.weight_decay,
            "bce",
            augmentation_from(dataclasses.asdict(params.augment)),
        ),
    }
    rows = []
    for name, (model, tr, va, batch, lr, wd, loss_kind, augment) in recipes.items():
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
        train_speed = train_for(
            model,
            tr,
            train.labels,
            batch,
            optimizer,
            loss_kind,
            n_images,
            augment,
            params.augment.group,
            channels_last=name == "ours",
        )
        accuracy, infer_speed = score(model, va, val.labels, loss_kind, channels_last=name == "ours")
        rows.append(
            {
                "recipe": name,
                "input": "x".join(map(str, tr.shape[1:])),
                "params": count_parameters(model),
                "train_img_per_s": round(train_speed, 1),
                "epoch_s": round(len(train.images) / train_speed, 1),
                "val_acc_so_far": round(accuracy, 4),
                "infer_img_per_s_b64": round(infer_speed, 1),
            }
        )
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows).set_index("recipe")
    for column in ("train_img_per_s", "infer_img_per_s_b64"):
        table[column.replace("img_per_s", "x_vs_ours").replace("_b64", "")] = (table.loc["ours", column] / table[column]).round(1)
    print(table.to_string())


if __name__ == "__main__":
    main()
