"""The model of good parts' score on the validation, test, painted and re-taken photos, computed when that model or
those photos change, never when only the classifier does. An experiment on training then re-uses them: scoring the validation,
test and painted photos was half of evaluate's time, and the re-taken good parts nearly all of robustness's.

Two stages, so that each re-runs only for what it reads: `departures` scores the photos evaluate judges (validation,
test with its maps, each painted kind; robustness reads the test scores as taken), `retaken_departures` the re-taken
good test parts robustness judges. Each
score is `modeling.patchcore.anomaly_scores`'s, in the same batches: the same bytes as scoring in place. The files'
layout, and the fingerprints that tie them to the model and the photos, are departures_set.py's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from casting_inspection.data.dataset import load_preprocessing, load_split
from casting_inspection.evaluation.departures_set import MAPS, retaken_key, save_departures
from casting_inspection.evaluation.painted_set import load_painted
from casting_inspection.evaluation.retaken_set import load_retaken
from casting_inspection.modeling.patchcore import anomaly_scores, load_anomaly


def photo_sets(prepared_dir: Path, painted_dir: Path) -> dict[str, torch.Tensor]:
    """What evaluate judges with the model of good parts: validation, test, and each painted kind (`painted/KIND`)."""
    sets = {split: load_split(prepared_dir, split).images for split in ("val", "test")}
    painted = load_painted(painted_dir)
    return sets | {f"painted/{kind}": painted.images[kind] for kind in [*painted.kinds, painted.held_out]}


def retaken_sets(prepared_dir: Path, retaken_dir: Path, seed: int) -> dict[str, torch.Tensor]:
    """The good test parts re-taken under each line change and strength (a line change is no defect)."""
    test, preprocessing = load_split(prepared_dir, "test"), load_preprocessing(prepared_dir)
    made_for = {"seed": seed, "image_size": preprocessing["image_size"], "color_mode": preprocessing["color_mode"]}
    chosen, renders = load_retaken(retaken_dir, test.paths, made_for)
    good = test.labels.numpy() == 0
    return {retaken_key(*setting): torch.from_numpy(np.array(images[good])) for setting, images in zip(chosen, renders)}


def score_departures(anomaly_path: Path, sets: dict[str, torch.Tensor], batch_size: int, out_path: Path, maps=()) -> dict:
    """Score each named set and write every score (float64) and the maps of the sets `maps` names (float32);
    returns how many photos each set holds."""
    anomaly, _ = load_anomaly(anomaly_path)
    arrays = {}
    with torch.inference_mode():
        for name, images in sets.items():
            scores, heat = anomaly_scores(anomaly, images, batch_size)
            arrays[name] = scores
            if name in maps:
                arrays[name + MAPS] = heat
    save_departures(out_path, arrays, anomaly_path, sets)
    return {name: len(images) for name, images in sets.items()}
