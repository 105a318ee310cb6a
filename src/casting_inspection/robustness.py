"""Score a model on a split re-taken under each line change at each strength (see `perturbations`)."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .images import preprocess
from .params import RobustnessParams
from .perturbations import CHANGES, perturb, rng_for


def settings(params: RobustnessParams) -> list[tuple[str, float]]:
    return [(change, float(strength)) for change in CHANGES for strength in getattr(params, change)]


def _one_thread() -> None:
    torch.set_num_threads(1)  # the workers share the cores among themselves


def _render_chunk(raw_dir: str, paths: list[str], chosen: list[tuple[str, float]], seed: int,
                  image_size: int, color_mode: str) -> np.ndarray:
    out = None
    for i, path in enumerate(paths):
        with Image.open(Path(raw_dir) / path) as image:
            image.load()
        for s, (change, strength) in enumerate(chosen):
            array = preprocess(perturb(image, change, strength, rng_for(seed, change, strength, path)), image_size, color_mode)
            if out is None:
                out = np.empty((len(chosen), len(paths), *array.shape), dtype=np.uint8)
            out[s, i] = array
    return out


def render(raw_dir: Path, paths: list[str], chosen: list[tuple[str, float]], seed: int, image_size: int,
           color_mode: str, workers: int) -> np.ndarray:
    """uint8 array (settings, images, C, H, W); each photo decoded once, chunks spread over `workers` processes."""
    chunks = [paths[i : i + 64] for i in range(0, len(paths), 64)]
    args = [(str(raw_dir), chunk, chosen, seed, image_size, color_mode) for chunk in chunks]
    if workers == 1:
        parts = [_render_chunk(*a) for a in args]
    else:
        # spawn, not fork: a child forked from a process whose torch thread pool is running can hang
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers or None, mp_context=spawn, initializer=_one_thread) as pool:
            parts = list(pool.map(_render_chunk, *zip(*args)))
    return np.concatenate(parts, axis=1)


def robustness_metrics(probabilities: np.ndarray, labels: np.ndarray, chosen: list[tuple[str, float]],
                       threshold: float, clean_probabilities: np.ndarray) -> dict:
    """`probabilities` (settings, images). Per change and strength: accuracy, misses, false rejects, and the
    flip rate — the share of parts whose decision differs from the one on the unchanged photo (repeatability,
    as in an attribute gauge R&R); then the worst case."""
    labels = labels.astype(int)
    clean = (clean_probabilities >= threshold).astype(int)
    report: dict = {}
    for (change, strength), p in zip(chosen, probabilities):
        predicted = (p >= threshold).astype(int)
        report.setdefault(change, {})[f"{strength:g}"] = {
            "accuracy": round(float((predicted == labels).mean()), 6),
            "missed_defects": int(((predicted == 0) & (labels == 1)).sum()),
            "false_rejects": int(((predicted == 1) & (labels == 0)).sum()),
            "flip_rate": round(float((predicted != clean).mean()), 6),
        }
    cells = [(change, strength, cell) for change, levels in report.items() for strength, cell in levels.items()]
    worst = min(cells, key=lambda c: c[2]["accuracy"])
    report["worst"] = {"accuracy": worst[2]["accuracy"], "change": f"{worst[0]} {worst[1]}",
                       "max_missed_defects": max(c[2]["missed_defects"] for c in cells)}
    return report


def predict_renderings(predict, renders: np.ndarray) -> np.ndarray:
    """Run `predict` (uint8 tensor -> probabilities) over each setting's images."""
    return np.stack([predict(torch.from_numpy(r)) for r in renders])
