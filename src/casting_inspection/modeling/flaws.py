"""A model of good parts that learns where a part departs from a good one: a small head on EfficientNet-Lite0's
early filters (the later of them tuned with it), trained on the train split's good photos only to find flaws drawn on them (`synthetic.py`, of no
particular form) and nothing on the intact surface around them. Its map is each patch's probability of a flaw; the
photo's score is the worst patch on the part. The idea is DRAEM's and CutPaste's (anomalib's family): no defect
photo is needed, so a new casting can start from good photos alone.

Beside PatchCore (a memory bank of good patches, `patchcore.py`) it shares the filters, the part's window and the
(score, map) interface, so the decision, the export and the serving path take either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from casting_inspection.core.errors import InspectionError
from casting_inspection.modeling.synthetic import FlawSettings, draw_flaws

if TYPE_CHECKING:  # patchcore.py loads this module's model: no import back at run time
    from casting_inspection.modeling.patchcore import PatchFeatures

VISIBLE = 0.08  # a flaw that moves the surface by this much (of the full grey range) is wholly a flaw to find


@dataclass(frozen=True)
class FlawTraining:
    """How the head is trained (anomaly.flaws in params.yaml)."""

    flaws: FlawSettings
    width: int  # channels of the head's two 3 x 3 convolutions
    tune: tuple[int, ...]  # Lite0 blocks whose filters train with the head (the others stay ImageNet's)
    epochs: int
    lr: float
    batch_size: int
    positive_weight: float  # a flaw's patches are few: each counts this many times an intact one
    lamp: tuple[float, float]  # each batch under a lamp level drawn from this range (a line change is no flaw)
    seed: int


class FlawNet(nn.Module):
    """Filters -> head -> per-patch flaw probability over the part's window -> (score, map) per image."""

    def __init__(self, features: PatchFeatures, width: int, window: torch.Tensor):
        super().__init__()
        self.features = features
        depth = features(torch.zeros(1, features.stem[0].in_channels, 32, 32)).shape[1]
        self.head = nn.Sequential(
            nn.Conv2d(depth, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 1, 1),
        )
        self.register_buffer("window", window.float())  # (h, w)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))[:, 0]  # autograd reaches only the blocks left trainable

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.judge(self.features(x))

    def judge(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(score, map) from the filters' maps: the flaw probability per patch within the window, and its peak."""
        heat = torch.sigmoid(self.head(features)[:, 0]) * self.window
        return heat.flatten(1).amax(1), heat


def _batch(good: torch.Tensor, index: torch.Tensor, training: FlawTraining, side: int, g: torch.Generator):
    """Good photos at the filters' input side, turned and flipped (exact: a round part has no upright), under one
    lamp level, some with a flaw (its size in pixels of that input)."""
    x = good[index].float() / 255
    if x.shape[-1] != side:
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    x = torch.rot90(x, int(torch.randint(4, (), generator=g)), dims=(-2, -1))
    if float(torch.rand((), generator=g)) < 0.5:
        x = x.flip(-1)
    lamp = training.lamp[0] + (training.lamp[1] - training.lamp[0]) * float(torch.rand((), generator=g))
    return draw_flaws((x * lamp).clamp(0, 1), training.flaws, g)


def fit_flawnet(training: FlawTraining, features: PatchFeatures, good: torch.Tensor, window: torch.Tensor) -> FlawNet:
    """Train the head, and the blocks `training.tune` names, on `good` (uint8, N C H W)."""
    if len(good) == 0:
        raise InspectionError("the flaw finder needs good training photos, and the train split has none")
    torch.manual_seed(training.seed)
    g = torch.Generator().manual_seed(training.seed)
    features.eval()  # BatchNorm keeps ImageNet's statistics; tuned blocks learn their weights only
    for parameter in features.parameters():
        parameter.requires_grad_(False)
    tuned = [p for block in training.tune for p in features.blocks[block].parameters()]
    for parameter in tuned:
        parameter.requires_grad_(True)
    model = FlawNet(features, training.width, window)
    steps = -(-len(good) // training.batch_size)
    optimizer = torch.optim.AdamW([*model.head.parameters(), *tuned], lr=training.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=training.lr, total_steps=training.epochs * steps)
    weight = torch.tensor(training.positive_weight)
    for epoch in range(1, training.epochs + 1):
        model.head.train()
        order, total = torch.randperm(len(good), generator=g), 0.0
        for step in tqdm(range(steps), desc=f"flaws {epoch}/{training.epochs}", unit="batch", leave=False, disable=None):
            index = order[step * training.batch_size : (step + 1) * training.batch_size]
            x, masks = _batch(good, index, training, features.input_size, g)
            logits = model.logits(x)
            target = (F.adaptive_max_pool2d(masks[:, None], logits.shape[-2:])[:, 0] / VISIBLE).clamp(0, 1)
            loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
        print(f"anomaly: flaws epoch {epoch}/{training.epochs}  loss {total / steps:.4f}")
    return model.eval()
