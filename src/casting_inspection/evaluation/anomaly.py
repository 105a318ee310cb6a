"""Fit the model of good parts (modeling.patchcore) on the train split's good photos only, set its threshold at a
stated share of validation good parts rejected, and judge it on defects painted on validation good parts — one
kind painted but never chosen on, so its figure tells how the model meets a defect nobody showed it. The test
split is not read here: evaluate scores it once, with the classifier, as one decision.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from casting_inspection.core.files import atomic_path, write_json
from casting_inspection.core.overlay import overlay, tile_grid
from casting_inspection.core.params import AnomalyParams
from casting_inspection.data.dataset import load_split
from casting_inspection.evaluation.painted_set import load_painted
from casting_inspection.modeling.flaws import FlawNet, FlawTraining, fit_flawnet
from casting_inspection.modeling.patchcore import (
    PatchCore,
    PatchFeatures,
    anomaly_scores,
    greedy_coreset,
    part_window,
    save_patchcore,
)
from casting_inspection.modeling.synthetic import FlawSettings

GALLERY = 6  # painted photos of each kind shown with their maps


def under_lamp(images: torch.Tensor, lamp: list[float], seed: int) -> torch.Tensor:
    """Each photo once more under a lamp level drawn from [low, high], clipped as a camera clips: a brighter or
    dimmer lamp is a line change, not a defect, so its patches belong in the bank of good ones."""
    generator = torch.Generator().manual_seed(seed)
    factors = torch.empty(len(images)).uniform_(lamp[0], lamp[1], generator=generator)
    return (images.float() * factors.view(-1, 1, 1, 1)).clamp(0, 255).round().to(torch.uint8)


@torch.no_grad()
def fit_patchcore(params: AnomalyParams, good: torch.Tensor) -> PatchCore:
    """The memory bank: `params.patches` patches drawn from the good photos' windows (each photo as taken and under
    one lamp level), thinned to `params.coreset`."""
    features = PatchFeatures(params.taps, good.shape[1], params.input_size)
    good = torch.cat([good, under_lamp(good, params.lamp, params.seed)])
    described = torch.cat(
        [features(good[i : i + params.batch_size].float() / 255) for i in range(0, len(good), params.batch_size)]
    )
    window = part_window(described.shape[-1], params.window)
    patches = described.permute(0, 2, 3, 1)[:, window.bool()].reshape(-1, described.shape[1])
    generator = torch.Generator().manual_seed(params.seed)
    drawn = patches[torch.randperm(len(patches), generator=generator)[: params.patches]].contiguous()
    bank = drawn[greedy_coreset(drawn, params.coreset, params.seed)]
    return PatchCore(features, bank, window).eval()


def fit_flaws(params: AnomalyParams, good: torch.Tensor) -> FlawNet:
    """The flaw finder: its head trained on the good photos with flaws drawn on them (under the same lamp range)."""
    features = PatchFeatures(params.taps, good.shape[1], params.input_size)
    flaws = params.flaws
    training = FlawTraining(
        FlawSettings(flaws.share, tuple(flaws.contrast), tuple(flaws.size), flaws.radius),
        flaws.width,
        tuple(flaws.tune),
        flaws.epochs,
        flaws.lr,
        flaws.batch_size,
        flaws.positive_weight,
        tuple(params.lamp),
        params.seed,
    )
    with torch.no_grad():
        side = features(good[:1].float() / 255).shape[-1]
    return fit_flawnet(training, features, good, part_window(side, params.window))


def _spec(params: AnomalyParams, threshold: float) -> dict:
    spec = {"method": params.method, "taps": params.taps, "input_size": params.input_size, "threshold": threshold}
    return {**spec, "reject_share": params.reject_share, **({"width": params.flaws.width} if params.method == "flaws" else {})}


def peak_on_defect(maps: np.ndarray, centres: np.ndarray, tolerance: float) -> np.ndarray:
    """Per map, whether its highest patch lies within `tolerance` (a fraction of the frame) of the defect's centre."""
    side = maps.shape[-1]
    peak = maps.reshape(len(maps), -1).argmax(1)
    rows, cols = (peak // side + 0.5) / side, (peak % side + 0.5) / side
    return np.hypot(rows - centres[:, 0], cols - centres[:, 1]) <= tolerance + 1 / side


def painted_figures(scores: np.ndarray, clean: np.ndarray, threshold: float, on_defect: np.ndarray) -> dict:
    """One painted kind: the share passed as good, the AUROC against the unpainted parts, and how often the map points
    at the defect: on every painted part, and on those the model rejects (what a person is sent, and looks at)."""
    rejected = scores >= threshold
    labels = np.r_[np.zeros(len(clean)), np.ones(len(scores))]
    return {
        "decided_ok": round(float(np.mean(~rejected)), 4),
        "auroc": round(float(roc_auc_score(labels, np.r_[clean, scores])), 4),
        "map_peak_on_defect": round(float(np.mean(on_defect)), 4),
        "map_peak_on_defect_rejected": round(float(np.mean(on_defect[rejected])), 4) if rejected.any() else None,
    }


def fit_anomaly(
    params: AnomalyParams, prepared_dir: Path, painted_dir: Path, model_path: Path, metrics_path: Path, plots_dir: Path
) -> dict:
    train, val = load_split(prepared_dir, "train"), load_split(prepared_dir, "val")
    fit = fit_flaws if params.method == "flaws" else fit_patchcore
    model = fit(params, train.images[train.labels == 0])
    good = val.labels == 0
    clean, _ = anomaly_scores(model, val.images[good], params.batch_size)
    threshold = float(np.quantile(clean, 1 - params.reject_share))
    painted = load_painted(painted_dir)
    kinds, tiles = {}, []
    for kind in [*painted.kinds, painted.held_out]:
        images, centres = painted.images[kind], painted.index.centres[kind]
        scores, maps = anomaly_scores(model, images, params.batch_size)
        tiles += [
            (overlay(images[i].numpy(), maps[i], threshold), f"{kind}: {scores[i]:.3g}") for i in range(min(GALLERY, len(images)))
        ]
        kinds[kind] = painted_figures(scores, clean, threshold, peak_on_defect(maps, centres, params.painted.peak_tolerance))
    figures = {
        "threshold": round(threshold, 6),
        "val_good_rejected": round(float(np.mean(clean >= threshold)), 4),
        "method": params.method,
        "painted": {kind: kinds[kind] for kind in painted.kinds},
        "held_out": {"kind": painted.held_out, **kinds[painted.held_out]},
        "painted_photos_per_kind": len(painted.index.paths),
    }
    save_patchcore(model_path, model, _spec(params, threshold))
    write_json(metrics_path, figures)
    title = f"Painted on validation good parts (held out: {painted.held_out}); threshold {threshold:.3g}"
    with atomic_path(Path(plots_dir) / "painted.png") as tmp:
        tile_grid(tiles, GALLERY, title).save(tmp, format="PNG")
    return figures
