"""Train a network on the prepared array cache, keep the epoch with the best validation loss, save a checkpoint.

Reads top to bottom: `train_model` sets up the job, `_fit` runs the epochs (`run_epoch`, then validation,
logging and early stopping), `_save` writes the checkpoint and the summary.
"""

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
from tqdm import tqdm

from casting_inspection import CLASS_NAMES
from casting_inspection.core.errors import InspectionError
from casting_inspection.core.files import write_json
from casting_inspection.core.params import TrainParams
from casting_inspection.data.dataset import Split, load_preprocessing, load_split
from casting_inspection.modeling.augmentation import augment_batch, augmentation_from
from casting_inspection.modeling.checkpoint import save_checkpoint
from casting_inspection.modeling.networks import CnnConfig, EfficientNetLite0, InspectionNet, ModelConfig, count_parameters
from casting_inspection.modeling.predict import mixed_precision, predict_logits, select_device, to_input


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
        raise InspectionError(
            "train.distributed is true: launch with `torchrun --nproc_per_node N stages/train.py ...` "
            "(N >= 2), or set it to false"
        )
    if params.batch_size % world:
        raise InspectionError(f"train.batch_size={params.batch_size} must divide evenly among the {world} processes")
    device = select_device(params.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Job(dist.get_rank(), dist.get_world_size()), device


def seed_everything(seed: int) -> None:
    """Seeds and deterministic kernels; the thread count and vector unit are pinned by core.numerics."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def model_config(params: TrainParams, train: Split) -> ModelConfig:
    """The plain config of the network train.model names, with the training split's mean and std."""
    pixels = to_input(train.images).transpose(0, 1).flatten(1)  # (C, N*H*W)
    return ModelConfig(
        params.model,
        train.images.shape[1],
        train.images.shape[-1],
        params.input_norm,
        pixels.mean(dim=1).tolist(),
        pixels.std(dim=1).tolist(),
        CnnConfig(**dataclasses.asdict(params.cnn)),
        list(params.mlp.hidden),
    )


def _optimizer(params: TrainParams, model: nn.Module) -> torch.optim.Optimizer:
    trainable = [p for p in model.parameters() if p.requires_grad]  # not the frozen stages (train.freeze)
    if params.optimizer == "sgd":
        return torch.optim.SGD(trainable, lr=params.lr, weight_decay=params.weight_decay, momentum=0.9, nesterov=True)
    cls = torch.optim.AdamW if params.optimizer == "adamw" else torch.optim.Adam
    return cls(trainable, lr=params.lr, weight_decay=params.weight_decay)


def _scheduler(params: TrainParams, optimizer, total_steps: int):
    if params.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=params.lr, total_steps=total_steps)
    if params.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if params.schedule == "plateau":  # stepped once per epoch on the validation loss
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=2)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def recalibrate_batchnorm(model: InspectionNet, images: torch.Tensor, batch_size: int, device: torch.device) -> None:
    """Re-estimate BatchNorm statistics for the current weights.

    With Adam at a high learning rate the weights move faster than BatchNorm's running averages
    follow, so eval-mode outputs swing from epoch to epoch (validation accuracy fell to the class
    prior here while batch-statistics accuracy was 99 %). Fresh statistics make each epoch's
    validation loss mean what it says, and so early stopping and best-epoch choice too.
    """
    batches = (to_input(images[i : i + batch_size]) for i in range(0, len(images), batch_size))
    if not model.frozen and not isinstance(model.backbone, EfficientNetLite0):
        with torch.no_grad():  # torch's own, in train mode: what the committed models were trained with
            update_bn(batches, model, device)
        return
    # frozen stages keep their pretrained statistics; drop-connect would skew the ones estimated
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight.requires_grad]
    was_training, momenta = model.training, {layer: layer.momentum for layer in layers}
    model.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a plain average over all batches
        layer.train()
    with torch.no_grad():
        for batch in batches:
            model(batch.to(device))
    for layer in layers:
        layer.momentum = momenta[layer]
    model.train(was_training)


def _evaluate(model, split: Split, batch_size: int, device) -> tuple[float, float]:
    logits = predict_logits(model, split.images, batch_size, device)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, split.labels).item()
    accuracy = ((logits > 0).float() == split.labels).float().mean().item()
    return loss, accuracy


def check_finite(name: str, value: float, epoch: int, lr: float) -> None:
    """A NaN or infinite loss means the weights are gone: stop with what to change instead of training on."""
    if not math.isfinite(value):
        raise InspectionError(f"training diverged: {name} is {value} at epoch {epoch}; lower train.lr (now {lr:g})")


@dataclasses.dataclass
class Run:
    """What every epoch of one training job works with."""

    model: nn.Module  # the network itself (its state is what is saved)
    network: nn.Module  # what the step calls: the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: object
    augment: nn.Module
    images: torch.Tensor  # uint8 train images on the device
    labels: torch.Tensor
    recalibration_images: torch.Tensor
    generator: torch.Generator
    batch_size: int  # per process
    shard_size: int  # images per process per epoch
    steps: int  # per epoch


def _setup(params: TrainParams, job: Job, device: torch.device, train: Split, config: ModelConfig) -> Run:
    model = InspectionNet(config, imagenet_weights=params.weights == "imagenet").to(device)
    model.freeze(params.freeze)
    model = model.to(memory_format=torch.channels_last)
    images, labels = train.images.to(device), train.labels.to(device)
    optimizer = _optimizer(params, model)
    generator = torch.Generator().manual_seed(params.seed)
    recalibration = images[torch.randperm(len(images), generator=generator)[: params.bn_recalibration].to(device)]
    batch_size = params.batch_size // job.world  # per process; the job's batch stays train.batch_size
    shard_size = -(-len(images) // job.world)
    steps = -(-shard_size // batch_size)
    scheduler = _scheduler(params, optimizer, params.epochs * steps)
    network = model
    if job.world > 1:
        torch.manual_seed(params.seed + job.rank)  # each process draws its own augmentation
        network = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return Run(
        model,
        network,
        optimizer,
        scheduler,
        augmentation_from(dataclasses.asdict(params.augment)),
        images,
        labels,
        recalibration,
        generator,
        batch_size,
        shard_size,
        steps,
    )


def run_epoch(run: Run, params: TrainParams, job: Job, epoch: int, device: torch.device) -> tuple[float, float]:
    """One pass over the (sharded) training split; the job's mean loss and accuracy."""
    run.model.train()
    order = torch.randperm(len(run.images), generator=run.generator)  # the same on every process
    if job.world > 1:  # each process takes every world-th image, wrapping so all take equally many steps
        order = order.repeat(2)[: run.shard_size * job.world][job.rank :: job.world]
    order = order.to(device)
    loss_fn = nn.BCEWithLogitsLoss()
    seen = loss_sum = correct = 0
    bar = tqdm(
        range(run.steps), desc=f"epoch {epoch}/{params.epochs}", unit="batch", leave=False, disable=None if job.main else True
    )  # a bar on a terminal, none in logs: the epoch line says it all
    for step in bar:
        index = order[step * run.batch_size : (step + 1) * run.batch_size]
        x = augment_batch(run.augment, run.images[index].float().div_(255), params.augment.group)
        x = x.clamp_(0, 1).contiguous(memory_format=torch.channels_last)
        y = run.labels[index]
        with mixed_precision(device):
            logits = run.network(x).float()
        loss = loss_fn(logits, y)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        if params.schedule != "plateau":
            run.scheduler.step()
        seen += len(y)
        loss_sum += loss.item() * len(y)
        correct += ((logits.detach() > 0).float() == y).sum().item()
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
    if job.world > 1:  # the job's training loss and accuracy, over every process's images
        totals = torch.tensor([seen, loss_sum, correct], dtype=torch.float64)
        dist.all_reduce(totals)
        seen, loss_sum, correct = totals.tolist()
    return loss_sum / seen, correct / seen


def train_model(
    params: TrainParams, prepared_dir: Path, checkpoint_path: Path, metrics_path: Path, live_dir: Path
) -> dict | None:
    """Returns the summary on rank 0 (or without torchrun), None on the other ranks."""
    if not params.classifier:
        return no_classifier(params, prepared_dir, checkpoint_path, metrics_path, live_dir)
    job, device = start_job(params)
    try:
        seed_everything(params.seed)
        train, val = load_split(prepared_dir, "train"), load_split(prepared_dir, "val")
        _check_classes(train)
        config = model_config(params, train)
        run = _setup(params, job, device, train, config)
        if job.main:
            print(
                f"train: {params.model} with {count_parameters(run.model):,} parameters on {device}"
                + (f" x {job.world} processes" if job.world > 1 else "")
                + f", {len(train.images)} train / {len(val.images)} val images"
            )
        best, best_state, epoch_seconds = _fit(run, params, job, device, val, live_dir)
        if not job.main:
            return None
        return _save(run, params, config, best, best_state, epoch_seconds, prepared_dir, checkpoint_path, metrics_path)
    finally:
        if job.world > 1:
            dist.destroy_process_group()


def _check_classes(train: Split) -> None:
    if not 0 < int(train.labels.sum()) < len(train.labels):
        missing = CLASS_NAMES[0] if train.labels.sum() else CLASS_NAMES[1]
        raise InspectionError(
            f"the train split has no {missing} photo: a classifier cannot learn one class; check train/{missing}/ in "
            "the data, or, for a product with good photos only, set train.classifier: false (the model of good parts "
            "then decides alone)"
        )


def no_classifier(params: TrainParams, prepared_dir: Path, checkpoint_path: Path, metrics_path: Path, live_dir: Path) -> dict:
    """train.classifier: false (a product with good photos only): no network is trained. The checkpoint carries
    what the later stages need without one: the class names, the preprocessing and these params."""
    if params.distributed:
        raise InspectionError("train.distributed needs train.classifier: true; there is nothing to train")
    train, val = load_split(prepared_dir, "train"), load_split(prepared_dir, "val")
    info = {
        "classifier": False,
        "class_names": list(CLASS_NAMES),
        "preprocessing": load_preprocessing(prepared_dir),
        "epoch": 0,
        "train_params": dataclasses.asdict(params),
    }
    save_checkpoint(checkpoint_path, {}, None, info)
    good = {name: int((split.labels == 0).sum()) for name, split in (("train", train), ("val", val))}
    summary = {"classifier": False, "good_photos": good}
    with Live(str(live_dir), dvcyaml=False, save_dvc_exp=False) as live:
        live.summary = summary
    write_json(metrics_path, summary)
    print(
        f"train: no classifier (train.classifier: false); the model of good parts decides alone ({good['train']} good train photos)"
    )
    return summary


def _fit(run: Run, params: TrainParams, job: Job, device, val: Split, live_dir: Path) -> tuple[dict, dict, list]:
    """The epochs: train, recalibrate BatchNorm, validate, log, keep the best, stop early."""
    say = print if job.main else (lambda *args, **kwargs: None)
    best, best_state, epoch_seconds = {"epoch": 0, "val_loss": float("inf")}, None, []
    live = Live(str(live_dir), dvcyaml=False, save_dvc_exp=False) if job.main else None
    try:
        for epoch in range(1, params.epochs + 1):
            started = time.perf_counter()
            train_loss, train_acc = run_epoch(run, params, job, epoch, device)
            check_finite("the training loss", train_loss, epoch, params.lr)
            if params.bn_recalibration:  # the same images on every process: identical statistics
                recalibrate_batchnorm(run.model, run.recalibration_images, params.batch_size, device)
            # every process scores the whole validation split with the same weights, so all stop together
            val_loss, val_acc = _evaluate(run.model, val, params.batch_size, device)
            check_finite("the validation loss", val_loss, epoch, params.lr)
            if params.schedule == "plateau":
                run.scheduler.step(val_loss)
            epoch_seconds.append(time.perf_counter() - started)
            if live is not None:
                for name, value in (
                    ("train/loss", train_loss),
                    ("train/accuracy", train_acc),
                    ("val/loss", val_loss),
                    ("val/accuracy", val_acc),
                    ("lr", run.optimizer.param_groups[0]["lr"]),
                ):
                    live.log_metric(name, value)
                live.next_step()
            improved = val_loss < best["val_loss"]
            if improved:
                best = {"epoch": epoch, "val_loss": val_loss, "val_accuracy": val_acc}
                best_state = copy.deepcopy(run.model.state_dict())
            say(
                f"epoch {epoch:>3}/{params.epochs}  train loss {train_loss:.4f} acc {train_acc:.4f}  "
                f"val loss {val_loss:.4f} acc {val_acc:.4f}  {epoch_seconds[-1]:.1f}s{'  *best' if improved else ''}"
            )
            if epoch - best["epoch"] >= params.patience:
                say(f"early stop: no val-loss improvement for {params.patience} epochs")
                break
    finally:
        if live is not None:
            live.end()
    return best, best_state, epoch_seconds


def _save(
    run: Run,
    params: TrainParams,
    config: ModelConfig,
    best: dict,
    best_state: dict,
    epoch_seconds: list,
    prepared_dir: Path,
    checkpoint_path: Path,
    metrics_path: Path,
) -> dict:
    info = {
        "class_names": list(CLASS_NAMES),
        "preprocessing": load_preprocessing(prepared_dir),
        "epoch": best["epoch"],
        "train_params": dataclasses.asdict(params),
    }
    save_checkpoint(checkpoint_path, best_state, config, info)
    summary = {
        "best_epoch": best["epoch"],
        "epochs_run": len(epoch_seconds),
        "val_loss": round(best["val_loss"], 6),
        "val_accuracy": round(best["val_accuracy"], 6),
        "params": count_parameters(run.model),
    }
    write_json(metrics_path, summary)  # timings stay in the log: an output depends on its inputs only
    print(f"train: {sum(epoch_seconds):.1f} s of training, {float(np.median(epoch_seconds)):.2f} s per epoch (median)")
    return summary
