"""Score a model on the test split re-taken under each line change at each strength (the retake stage's
renderings): its own stage, so trying another strength re-runs only the retake, this and the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from casting_inspection.core.errors import InspectionError
from casting_inspection.core.files import write_json
from casting_inspection.core.params import RobustnessParams
from casting_inspection.data import drift
from casting_inspection.data.dataset import load_split
from casting_inspection.evaluation.calibration import sigmoid
from casting_inspection.evaluation.departures_set import departures_of, load_departures, retaken_key
from casting_inspection.evaluation.guard import guard_reasons, load_guard
from casting_inspection.evaluation.metrics import count_errors
from casting_inspection.evaluation.model_files import ModelFiles
from casting_inspection.evaluation.retaken_set import CHANGES, load_retaken, settings
from casting_inspection.modeling.checkpoint import has_classifier
from casting_inspection.modeling.inspector import load_inspector
from casting_inspection.modeling.predict import predict_logits, predict_logits_and_features, select_device


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


def good_rejected(retaken: np.ndarray, as_taken: np.ndarray, threshold: float) -> dict:
    """Good parts the model of good parts rejects re-taken: all of them, and those it accepts as taken (what the
    change alone costs; None when it accepts none of them)."""
    rejected, accepted = retaken >= threshold, as_taken < threshold
    return {
        "anomaly_rejected_good": round(float(np.mean(rejected)), 4),
        "anomaly_rejected_by_change": round(float(np.mean(rejected[accepted])), 4) if accepted.any() else None,
    }


def predict_renderings(predict, renders: np.ndarray) -> np.ndarray:
    """Run `predict` (uint8 tensor -> probabilities) over each setting's images."""
    return np.stack([predict(torch.from_numpy(r)) for r in renders])


def _retaken(params: RobustnessParams, retaken_dir: Path, paths: list[str], preprocessing: dict):
    """The retake stage's (change, strength) settings and renderings, refused when made for other settings."""
    made_for = {"seed": params.seed, "image_size": preprocessing["image_size"], "color_mode": preprocessing["color_mode"]}
    chosen, renders = load_retaken(retaken_dir, paths, made_for)
    if chosen != settings({change: getattr(params, change) for change in CHANGES}):
        raise InspectionError(f"{retaken_dir} holds other changes than params.yaml's robustness section: run `dvc repro retake`")
    return chosen, renders


def evaluate_robustness(
    params: RobustnessParams,
    model_files: ModelFiles,
    *,
    prepared_dir: Path,
    retaken_dir: Path,
    departures_path: Path,
    test_departures_path: Path,
    drift_reference_path: Path,
    out_path: Path,
) -> dict:
    """The test photos re-taken under every change and strength (the retake stage), decided at the shipped operating
    point, with the share of each rendering the input-drift check would flag and the good parts the model of good
    parts rejects: all of them, and those it accepts as taken (what the change alone costs)."""
    checkpoint_path, operating_point_path, guard_path = model_files.checkpoint, model_files.operating_point, model_files.guard
    batch_size = params.batch_size
    device = select_device("auto")
    model, checkpoint, _, anomaly_threshold = load_inspector(checkpoint_path, model_files.anomaly, device)
    operating_point = json.loads(Path(operating_point_path).read_text())
    threshold, temperature = operating_point["threshold"], operating_point["temperature"]
    test = load_split(prepared_dir, "test")

    def predict(images: torch.Tensor) -> np.ndarray:
        return sigmoid(predict_logits(model, images, batch_size, device).double().numpy() / temperature)

    chosen, renders = _retaken(params, retaken_dir, test.paths, checkpoint["preprocessing"])
    labels = test.labels.numpy().astype(int)
    rules, tensors = operating_point["guard"], load_guard(guard_path)
    good = labels == 0

    def decide(images: torch.Tensor) -> tuple[np.ndarray, list[bool]]:  # one forward pass for both
        logits, features = predict_logits_and_features(model, images, batch_size, device)
        kept = [flag is None for flag in guard_reasons(rules, tensors, images, test.sizes, features)]
        return sigmoid(logits.double().numpy() / temperature), kept

    scores = load_departures(departures_path, model_files.anomaly)
    as_taken = departures_of(load_departures(test_departures_path, model_files.anomaly), "test", test.images)[good]

    def good_scores(setting: tuple[str, float], images: np.ndarray, decided_by: np.ndarray) -> np.ndarray:
        if not has_classifier(checkpoint):  # the model of good parts decided them already: its score is the probability
            return decided_by[good]
        return departures_of(scores, retaken_key(*setting), np.array(images[good]))  # a line change is no defect

    outcomes = [decide(torch.from_numpy(np.array(images))) for images in renders]  # one setting in memory at a time
    probabilities, decided = np.stack([p for p, _ in outcomes]), np.array([kept for _, kept in outcomes])
    report = robustness_metrics(probabilities, labels, chosen, threshold, predict(test.images), decided)
    reference = json.loads(Path(drift_reference_path).read_text())
    for (change, strength), images, kept, decided_by in zip(chosen, renders, decided, probabilities):
        cell = report[change][f"{strength:g}"]
        cell["drift_flagged"] = round(drift.share_flagged(drift.image_statistics(images), reference), 4)
        cell["not_a_part"] = round(float(1 - kept.mean()), 4)  # parts the guard flagged: a false alarm each
        cell.update(good_rejected(good_scores((change, strength), images, decided_by), as_taken, anomaly_threshold))
    write_json(out_path, report)
    return report


def format_robustness(robustness: dict) -> str:
    header = (
        "change",
        "strength",
        "accuracy",
        "missed",
        "false rej",
        "flipped",
        "drift flag",
        "not a part",
        "anomalous",
        "by change",
    )
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
                pct(cell.get("anomaly_rejected_good"), 1),
                pct(cell.get("anomaly_rejected_by_change"), 1),
            )
            lines.append(f"{change:<12}{strength:>11}" + "".join(f"{str(v):>11}" for v in values))
    worst = robustness["worst"]
    lines.append(
        f"worst: {pct(worst['accuracy'], 2)} under {worst['change']}; at most {worst['max_missed_defects']} missed defects"
    )
    return "\n".join(lines)
