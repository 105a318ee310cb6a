"""The trained network on disk: weights in safetensors (no code runs on load; the bytes depend only on the
tensors and the metadata), with a plain, versioned model config beside them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from casting_inspection.core.errors import InspectionError
from casting_inspection.core.files import atomic_path
from casting_inspection.modeling.networks import InspectionNet, ModelConfig

META_KEY = "casting_inspection"  # one metadata entry: a single JSON string keeps the header's bytes in one order


def save_checkpoint(path: Path, state_dict: dict, config: ModelConfig | None, info: dict) -> None:
    """`info`: what else travels with the weights (class names, preprocessing, best epoch, train params). No config
    and no tensors: a checkpoint without a classifier (train.classifier: false)."""
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()}
    metadata = {META_KEY: json.dumps({"config": config.to_dict() if config else None, **info}, sort_keys=True)}
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def read_checkpoint(path: Path) -> tuple[dict, dict]:
    """The tensors and the metadata, or a one-line error naming the file."""
    path = Path(path)
    if not path.exists():
        raise InspectionError(f"{path}: missing; run the train stage first (dvc repro train)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = json.loads((handle.metadata() or {})[META_KEY])
        return load_file(str(path)), metadata
    except (SafetensorError, KeyError, ValueError, OSError) as exc:
        raise InspectionError(
            f"{path}: not a checkpoint of this project ({type(exc).__name__}); train again (dvc repro train)"
        ) from None


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> tuple[InspectionNet, dict]:
    """Rebuild the trained network and return it (eval mode) with the checkpoint's metadata."""
    tensors, metadata = read_checkpoint(path)
    if not has_classifier(metadata):
        raise InspectionError(f"{path}: holds no classifier (train.classifier: false); the model of good parts decides alone")
    model = InspectionNet(ModelConfig.from_dict(metadata["config"]))
    model.load_state_dict(tensors)
    return model.to(device, memory_format=torch.channels_last).eval(), metadata


def has_classifier(metadata: dict) -> bool:
    """False for a checkpoint of a product with good photos only (train.classifier: false)."""
    return metadata.get("classifier", True) is not False
