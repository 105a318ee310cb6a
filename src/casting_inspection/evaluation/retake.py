"""The test photos re-taken under each line change at each strength, from the original photos: a stage of its
own, because the renderings depend on the photos and the changes only, never on the model — an experiment
that changes training re-uses them instead of rendering 8,580 photos again."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from casting_inspection.core.files import atomic_dir, write_json
from casting_inspection.core.params import RobustnessParams
from casting_inspection.data.dataset import load_preprocessing, load_split
from casting_inspection.data.images import preprocess
from casting_inspection.evaluation.perturbations import perturb, rng_for
from casting_inspection.evaluation.retaken_set import CHANGES, INDEX, RENDERS, settings


def _one_thread() -> None:
    torch.set_num_threads(1)  # the workers share the cores among themselves


def _render_chunk(
    raw_dir: str, paths: list[str], chosen: list[tuple[str, float]], seed: int, image_size: int, color_mode: str
) -> np.ndarray:
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


def render(
    raw_dir: Path, paths: list[str], chosen: list[tuple[str, float]], seed: int, image_size: int, color_mode: str, workers: int
) -> np.ndarray:
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


def retake_test_photos(params: RobustnessParams, prepared_dir: Path, raw_dir: Path, out_dir: Path) -> int:
    """Render every change and strength of params for the test photos; returns how many renderings were written."""
    preprocessing = load_preprocessing(prepared_dir)
    paths = load_split(prepared_dir, "test").paths
    chosen = settings({change: getattr(params, change) for change in CHANGES})
    size, mode = preprocessing["image_size"], preprocessing["color_mode"]
    renders = render(raw_dir, paths, chosen, params.seed, size, mode, params.workers)
    index = {"settings": [list(s) for s in chosen], "seed": params.seed, "image_size": size, "color_mode": mode, "paths": paths}
    with atomic_dir(Path(out_dir)) as tmp:  # both files or neither: never renderings beside another run's index
        with open(tmp / RENDERS, "wb") as f:
            np.save(f, renders)
        write_json(tmp / INDEX, index)
    return renders.shape[0] * renders.shape[1]
