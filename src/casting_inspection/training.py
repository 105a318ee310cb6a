"""Train a network on the prepared array cache, pick the best epoch on validation, save a checkpoint."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from dvclive import Live
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import update_bn
from torchvision.transforms import v2
from tqdm import tqdm

from . import CLASS_NAMES
from .dataset import Split, load_preprocessing, load_split
from .errors import InspectionError
from .files import atomic_path, write_json
from .models import InspectionNet, ModelConfig, count_parameters
from .params import AugmentParams, TrainParams
from .perturbations import background_level


class RandomRot90(nn.Module):
    """A random multiple of 90 degrees: exact (no interpolation) for a part seen from the top."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.rot90(image, int(torch.randint(4, ())), dims=(-2, -1))


class RandomPlacement(v2.RandomAffine):
    """RandomAffine whose uncovered corners take each image's own background level, as on the line (not black)."""

    def transform(self, inpt, params):
        level = background_level(inpt)
        moved = self._call_kernel(v2.functional.affine, inpt - level, **params, interpolation=self.interpolation,
                                  fill=0.0, center=self.center)
        return moved + level


def build_augmentation(params: AugmentParams) -> nn.Module:
    steps: list[nn.Module] = []
    if params.flip:
        steps += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    if params.rotate90:
        steps.append(RandomRot90())
    if params.degrees or params.translate or params.scale:
        steps.append(RandomPlacement(degrees=params.degrees, translate=(params.translate, params.translate),
                                     scale=(1 - params.scale, 1 + params.scale) if params.scale else None,
                                     interpolation=v2.InterpolationMode.BILINEAR))
    if params.brightness or params.contrast:
        steps.append(v2.ColorJitter(brightness=params.brightness, contrast=params.contrast))
    if params.blur:
        steps.append(v2.GaussianBlur(kernel_size=2 * math.ceil(2 * params.blur) + 1, sigma=(0.1, params.blur)))  # +/- 2 sigma
    return v2.Compose(steps) if steps else v2.Identity()  # every augmentation off: the published recipes' setting


def augment_batch(augment: v2.Compose, images: torch.Tensor, group: int) -> torch.Tensor:
    """Float images (N, C, H, W); each group of `group` images shares one random draw.

    torchvision applies one draw to a whole batch tensor, and a draw per image costs more than the
    network's own step on two cores; small groups keep most of the variety at a fraction of the cost.
    """
    return torch.cat([augment(chunk) for chunk in images.split(group)])


def select_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise InspectionError("train.device=cuda but no CUDA device is visible; set train.device: auto or cpu")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


@dataclasses.dataclass(frozen=True)
class Job:
    """This process's place in a training job: rank 0 of 1 without torchrun."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:  # logs, dvclive and the checkpoint: once per job, from rank 0
        return self.rank == 0


def start_job(params: TrainParams) -> tuple[Job, torch.device]:
    """One process, or one of `torchrun`'s: gloo on the CPU, nccl on GPUs (one per process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not params.distributed:
        if world > 1:
            raise InspectionError(f"started by torchrun with WORLD_SIZE={world} but train.distributed is false; set it to true")
        return Job(), select_device(params.device)
    if world < 2 or "RANK" not in os.environ:
        raise InspectionError("train.distributed is true: launch with `torchrun --nproc_per_node N stages/train.py ...` "
                              "(N >= 2), or set it to false")
    if params.batch_size % world:
        raise InspectionError(f"train.batch_size={params.batch_size} must divide evenly among the {world} processes")
    device = select_device(params.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Job(dist.get_rank(), dist.get_world_size()), device


def seed_everything(seed: int, threads: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) to float in [0, 1], channels-last: on the CPU this net's BatchNorm and pooling run ~1.4x faster so."""
    return images.float().div_(255).contiguous(memory_format=torch.channels_last)


def _mixed_precision(device: torch.device):
    """bfloat16 autocast on CUDA (no loss scaling needed); full precision on the CPU, where it is deterministic."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Logits for uint8 images, in order; eval mode."""
    model.eval()
    with _mixed_precision(device):
        out = [model(to_input(images[i : i + batch_size].to(device))).float().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def _optimizer(params: TrainParams, model: nn.Module) -> torch.optim.Optimizer:
    if params.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=params.lr, weight_decay=params.weight_decay, momentum=0.9, nesterov=True)
    cls = torch.optim.AdamW if params.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)


def _scheduler(params: TrainParams, optimizer, total_steps: int):
    if params.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=params.lr, total_steps=total_steps)
    if params.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if params.schedule == "plateau":  # stepped once per epoch on the validation loss
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=2)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device) -> None:
    """Re-estimate BatchNorm statistics for the current weights.

    With Adam at a high learning rate the weights move faster than BatchNorm's running averages
    follow, so eval-mode outputs swing from epoch to epoch (validation accuracy fell to the class
    prior here while batch-statistics accuracy was 99 %). Fresh statistics make each epoch's
    validation loss mean what it says, and so early stopping and best-epoch choice too.
    """
    batches = (to_input(images[i : i + batch_size]) for i in range(0, len(images), batch_size))
    with torch.no_grad():
        update_bn(batches, model, device)


def _evaluate(model, split: Split, batch_size: int, device) -> tuple[float, float]:
    logits = predict_logits(model, split.images, batch_size, device)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, split.labels).item()
    accuracy = ((logits > 0).float() == split.labels).float().mean().item()
    return loss, accuracy


def train_model(params: TrainParams, prepared_dir: Path, checkpoint_path: Path, metrics_path: Path,
                live_dir: Path) -> dict | None:
    """Returns the summary on rank 0 (or without torchrun), None on the other ranks."""
    job, device = start_job(params)
    try:
        return _train(params, job, device, prepared_dir, checkpoint_path, metrics_path, live_dir)
    finally:
        if job.world > 1:
            dist.destroy_process_group()


def _train(params: TrainParams, job: Job, device: torch.device, prepared_dir: Path, checkpoint_path: Path,
           metrics_path: Path, live_dir: Path) -> dict | None:
    seed_everything(params.seed, params.threads)
    train, val = load_split(prepared_dir, "train"), load_split(prepared_dir, "val")
    pixels = to_input(train.images).transpose(0, 1).flatten(1)  # (C, N*H*W)
    mean, std = pixels.mean(dim=1).tolist(), pixels.std(dim=1).tolist()
    config = ModelConfig.from_params(params, in_channels=train.images.shape[1], image_size=train.images.shape[-1],
                                     mean=mean, std=std)
    model = InspectionNet(config, imagenet_weights=params.weights == "imagenet").to(device)
    model = model.to(memory_format=torch.channels_last)
    train_images, train_labels = train.images.to(device), train.labels.to(device)
    augment = build_augmentation(params.augment)
    optimizer = _optimizer(params, model)
    loss_fn = nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(params.seed)
    calibration_images = train_images[torch.randperm(len(train_images), generator=generator)[: params.bn_recalibration].to(device)]
    n_params = count_parameters(model)
    batch_size = params.batch_size // job.world  # per process; the job's batch stays train.batch_size
    shard_size = -(-len(train_images) // job.world)
    steps_per_epoch = -(-shard_size // batch_size)
    scheduler = _scheduler(params, optimizer, params.epochs * steps_per_epoch)
    network = model
    if job.world > 1:
        torch.manual_seed(params.seed + job.rank)  # each process draws its own augmentation
        network = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    say = print if job.main else (lambda *args, **kwargs: None)
    say(f"train: {params.model} with {n_params:,} parameters on {device}"
        + (f" x {job.world} processes" if job.world > 1 else "") + f", {len(train_images)} train / {len(val.images)} val images")

    best = {"val_loss": float("inf")}
    best_state = None
    started = time.perf_counter()
    epoch_seconds = []
    live = Live(str(live_dir), dvcyaml=False, save_dvc_exp=False) if job.main else None
    try:
        for epoch in range(1, params.epochs + 1):
            epoch_start = time.perf_counter()
            model.train()
            order = torch.randperm(len(train_images), generator=generator)  # the same on every process
            if job.world > 1:  # each process takes every world-th image, wrapping so all take equally many steps
                order = order.repeat(2)[: shard_size * job.world][job.rank :: job.world]
            order = order.to(device)
            seen = loss_sum = correct = 0
            bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{params.epochs}", unit="batch", leave=False,
                       disable=None if job.main else True)  # a bar on a terminal, none in logs: the epoch line says it all
            for step in bar:
                index = order[step * batch_size : (step + 1) * batch_size]
                x = augment_batch(augment, train_images[index].float().div_(255), params.augment.group)
                x = x.clamp_(0, 1).contiguous(memory_format=torch.channels_last)
                y = train_labels[index]
                with _mixed_precision(device):
                    logits = network(x).float()
                loss = loss_fn(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if params.schedule != "plateau":
                    scheduler.step()
                seen += len(y)
                loss_sum += loss.item() * len(y)
                correct += ((logits.detach() > 0).float() == y).sum().item()
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
            if job.world > 1:  # the job's training loss and accuracy, over every process's images
                totals = torch.tensor([seen, loss_sum, correct], dtype=torch.float64)
                dist.all_reduce(totals)
                seen, loss_sum, correct = totals.tolist()
            if params.bn_recalibration:  # the same images on every process: identical statistics
                recalibrate_batchnorm(model, calibration_images, params.batch_size, device)
            # every process scores the whole validation split with the same weights, so all stop together
            val_loss, val_acc = _evaluate(model, val, params.batch_size, device)
            if params.schedule == "plateau":
                scheduler.step(val_loss)
            epoch_seconds.append(time.perf_counter() - epoch_start)
            if live is not None:
                for name, value in (("train/loss", loss_sum / seen), ("train/accuracy", correct / seen),
                                    ("val/loss", val_loss), ("val/accuracy", val_acc),
                                    ("lr", optimizer.param_groups[0]["lr"])):
                    live.log_metric(name, value)
                live.next_step()
            improved = val_loss < best["val_loss"]
            if improved:
                best = {"epoch": epoch, "val_loss": val_loss, "val_accuracy": val_acc}
                best_state = copy.deepcopy(model.state_dict())
            say(f"epoch {epoch:>3}/{params.epochs}  train loss {loss_sum / seen:.4f} acc {correct / seen:.4f}  "
                f"val loss {val_loss:.4f} acc {val_acc:.4f}  {epoch_seconds[-1]:.1f}s{'  *best' if improved else ''}")
            if epoch - best["epoch"] >= params.patience:
                say(f"early stop: no val-loss improvement for {params.patience} epochs")
                break
    finally:
        if live is not None:
            live.end()
    if not job.main:
        return None

    checkpoint = {
        "state_dict": {k: v.cpu() for k, v in best_state.items()},
        "config": dataclasses.asdict(config),
        "class_names": list(CLASS_NAMES),
        "preprocessing": load_preprocessing(prepared_dir),
        "epoch": best["epoch"],
        "train_params": dataclasses.asdict(params),
    }
    with atomic_path(checkpoint_path) as tmp:
        torch.save(checkpoint, tmp)
    summary = {
        "best_epoch": best["epoch"],
        "epochs_run": len(epoch_seconds),
        "val_loss": round(best["val_loss"], 6),
        "val_accuracy": round(best["val_accuracy"], 6),
        "params": n_params,
        "train_seconds": round(time.perf_counter() - started, 1),
        "seconds_per_epoch": round(float(np.median(epoch_seconds)), 2),
    }
    write_json(metrics_path, summary)
    return summary


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> tuple[InspectionNet, dict]:
    """Rebuild the trained network; `weights_only=True` so a checkpoint cannot run code on load."""
    path = Path(path)
    if not path.exists():
        raise InspectionError(f"{path}: missing; run the train stage first (dvc repro train)")
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    model = InspectionNet(ModelConfig(**checkpoint["config"]))
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device, memory_format=torch.channels_last).eval(), checkpoint
