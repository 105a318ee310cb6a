"""Batched prediction with PyTorch: the device, the input layout and the logits, shared by training's
validation, evaluation, explanation and export."""

from __future__ import annotations

import torch
from torch import nn

from casting_inspection.core.errors import InspectionError


def select_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise InspectionError("train.device=cuda but no CUDA device is visible; set train.device: auto or cpu")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) to float in [0, 1], channels-last: on the CPU this net's BatchNorm and pooling run ~1.4x faster so."""
    return images.float().div_(255).contiguous(memory_format=torch.channels_last)


def mixed_precision(device: torch.device):
    """bfloat16 autocast on CUDA (no loss scaling needed); full precision on the CPU, where it is deterministic."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Logits for uint8 images, in order; eval mode."""
    model.eval()
    with mixed_precision(device):
        out = [model(to_input(images[i : i + batch_size].to(device))).float().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out)


@torch.no_grad()
def predict_logits_and_features(
    model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits and, for a network with pooled features (what the not-a-part guard measures), those features, from
    one forward pass: the head reads the very vector the guard does, so a second pass would compute it again.
    On the CPU the logits are bit-identical to `predict_logits` (the same operations on the same batches). On CUDA,
    where `predict_logits` runs in bfloat16, the features still come from a float32 pass: the guard's threshold
    was fitted on float32 features, and the shipped ONNX graph computes them so."""
    if not model.has_features:
        return predict_logits(model, images, batch_size, device), None
    if device.type == "cuda":
        return predict_logits(model, images, batch_size, device), predict_features(model, images, batch_size, device)
    model.eval()
    logits, features = [], []
    for i in range(0, len(images), batch_size):
        batch_logits, pooled = model.logits_and_pooled(to_input(images[i : i + batch_size].to(device)))
        logits.append(batch_logits.float().cpu())
        features.append(pooled.float().cpu())
    return torch.cat(logits), torch.cat(features)


@torch.no_grad()
def predict_features(model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """(N, D) float32 pooled features of uint8 images, in order; eval mode, full precision (what the guard fits)."""
    model.eval()
    return torch.cat(
        [model.pooled(to_input(images[i : i + batch_size].to(device))).float().cpu() for i in range(0, len(images), batch_size)]
    )
