"""Score a model on the test split re-taken under each line change at each strength (see `perturbations`):
its own stage, so trying another strength re-runs only this and the report."""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from casting_inspection.core.files import write_json
from casting_inspection.core.params import RobustnessParams
from casting_inspection.data import drift
from casting_inspection.data.dataset import load_split
from casting_inspection.data.images import preprocess
from casting_inspection.evaluation.calibration import sigmoid
from casting_inspection.evaluation.guard import guard_reasons, load_guard
from casting_inspection.evaluation.metrics import count_errors
from casting_inspection.evaluation.model_files import ModelFiles
from casting_inspection.evaluation.perturbations import CHANGES, perturb, rng_for
from casting_inspection.modeling.checkpoint import load_checkpoint
from casting_inspection.modeling.predict import predict_logits, predict_logits_and_features, select_device


def settings(strengths: dict[str, list[float]]) -> list[tuple[str, float]]:
    """(change, strength) pairs in the order of CHANGES, from a mapping change -> strengths."""
    return [(change, float(strength)) for change in CHANGES for strength in strengths.get(change, [])]


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


def robustness_metrics(
    probabilities: np.ndarray,
    labels: np.ndarray,
    chosen: list[tuple[str, float]],
    threshold: float,
    clean_probabilities: np.ndarray,
    decided: np.ndarray | None = None,
) -> dict:
    """`probabilities` (settings, images). Per change and strength, on the parts the guard let through to a
    decision (`decided`, same shape; all when None): accuracy, misses, false rejects, and the flip rate — the
    share of parts whose decision differs from the one on the unchanged photo (repeatability, as in an
    attribute gauge R&R); then the worst case. The share the guard flagged is added by the caller."""
    labels = labels.astype(int)
    clean = (clean_probabilities >= threshold).astype(int)
    decided = np.ones(probabilities.shape, bool) if decided is None else decided
    report: dict = {}
    for (change, strength), p, kept in zip(chosen, probabilities, decided):
        predicted = (p >= threshold).astype(int)[kept]
        share = (lambda hits: round(float(hits.mean()), 6)) if kept.any() else (lambda hits: None)  # none decided
        report.setdefault(change, {})[f"{strength:g}"] = {
            "accuracy": share(predicted == labels[kept]),
            **dict(zip(("missed_defects", "false_rejects"), count_errors(labels[kept], predicted))),
            "flip_rate": share(predicted != clean[kept]),
        }
    cells = [(change, strength, cell) for change, levels in report.items() for strength, cell in levels.items()]
    worst = min(cells, key=lambda c: 2.0 if c[2]["accuracy"] is None else c[2]["accuracy"])
    report["worst"] = {
        "accuracy": worst[2]["accuracy"],
        "change": f"{worst[0]} {worst[1]}",
        "max_missed_defects": max(c[2]["missed_defects"] for c in cells),
    }
    return report


def predict_renderings(predict, renders: np.ndarray) -> np.ndarray:
    """Run `predict` (uint8 tensor -> probabilities) over each setting's images."""
    return np.stack([predict(torch.from_numpy(r)) for r in renders])


def evaluate_robustness(
    params: RobustnessParams,
    model_files: ModelFiles,
    *,
    prepared_dir: Path,
    raw_dir: Path,
    drift_reference_path: Path,
    out_path: Path,
) -> dict:
    """The test photos re-taken under every change and strength, decided at the shipped operating point, with the
    share of each rendering the input-drift check would flag."""
    checkpoint_path, operating_point_path, guard_path = model_files.checkpoint, model_files.operating_point, model_files.guard
    batch_size = params.batch_size
    device = select_device("auto")
    model, checkpoint = load_checkpoint(checkpoint_path, device)
    operating_point = json.loads(Path(operating_point_path).read_text())
    threshold, temperature = operating_point["threshold"], operating_point["temperature"]
    test = load_split(prepared_dir, "test")

    def predict(images: torch.Tensor) -> np.ndarray:
        return sigmoid(predict_logits(model, images, batch_size, device).double().numpy() / temperature)

    chosen = settings({change: getattr(params, change) for change in CHANGES})
    preprocessing = checkpoint["preprocessing"]
    renders = render(
        raw_dir, test.paths, chosen, params.seed, preprocessing["image_size"], preprocessing["color_mode"], params.workers
    )
    labels = test.labels.numpy().astype(int)
    rules, tensors = operating_point["guard"], load_guard(guard_path)

    def decide(images: torch.Tensor) -> tuple[np.ndarray, list[bool]]:  # one forward pass for both
        logits, features = predict_logits_and_features(model, images, batch_size, device)
        kept = [flag is None for flag in guard_reasons(rules, tensors, images, test.sizes, features)]
        return sigmoid(logits.double().numpy() / temperature), kept

    outcomes = [decide(torch.from_numpy(images)) for images in renders]
    probabilities, decided = np.stack([p for p, _ in outcomes]), np.array([kept for _, kept in outcomes])
    report = robustness_metrics(probabilities, labels, chosen, threshold, predict(test.images), decided)
    reference = json.loads(Path(drift_reference_path).read_text())
    for (change, strength), images, kept in zip(chosen, renders, decided):
        cell = report[change][f"{strength:g}"]
        cell["drift_flagged"] = round(drift.share_flagged(drift.image_statistics(images), reference), 4)
        cell["not_a_part"] = round(float(1 - kept.mean()), 4)  # parts the guard flagged: a false alarm each
    write_json(out_path, report)
    return report


def format_robustness(robustness: dict) -> str:
    header = ("change", "strength", "accuracy", "missed", "false rej", "flipped", "drift flag", "not a part")
    lines = [f"{header[0]:<12}" + "".join(f"{h:>11}" for h in header[1:])]

    def pct(value, digits: int) -> str:  # None: every part of that rendering was flagged, none decided
        return "n/a" if value is None else f"{value:.{digits}%}"

    for change, levels in robustness.items():
        if change == "worst":
            continue
        for strength, cell in levels.items():
            values = (
                pct(cell["accuracy"], 2),
                cell["missed_defects"],
                cell["false_rejects"],
                pct(cell["flip_rate"], 2),
                pct(cell.get("drift_flagged"), 0),
                pct(cell.get("not_a_part"), 1),
            )
            lines.append(f"{change:<12}{strength:>11}" + "".join(f"{str(v):>11}" for v in values))
    worst = robustness["worst"]
    lines.append(
        f"worst: {pct(worst['accuracy'], 2)} under {worst['change']}; at most {worst['max_missed_defects']} missed defects"
    )
    return "\n".join(lines)
