"""Score the test split once: decision metrics (defective = positive), curves, a classification report,
robustness to line changes (the test photos re-taken, see `perturbations`) and input drift."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from dvclive import Live
from scipy.stats import beta, binomtest
from sklearn import metrics as skm

from . import CLASS_NAMES, drift
from .calibration import calibration_metrics, fit_temperature, sigmoid
from .dataset import load_split
from .errors import InspectionError
from .operating_point import choose_review_band, choose_threshold, cost_per_1000
from .explain import evidence_on_part, gradcam, part_mask
from .files import atomic_path, write_json, write_text
from .galleries import Tile, draw_tiles, evidence_chart
from .params import EvaluateParams
from .robustness import predict_renderings, render, robustness_metrics, settings
from .training import load_checkpoint, predict_logits, select_device


def upper_bound_95(failures: int, trials: int) -> float | None:
    """Exact (Clopper-Pearson) one-sided 95 % upper bound on a rate: 0 of 453 still allows 0.66 %."""
    if trials == 0:
        return None
    return 1.0 if failures >= trials else float(beta.ppf(0.95, failures + 1, trials - failures))


def interval_95(successes: int, trials: int) -> tuple[float | None, float | None]:
    """Exact (Clopper-Pearson) two-sided 95 % confidence interval on a proportion."""
    if trials == 0:
        return None, None
    interval = binomtest(successes, trials).proportion_ci(0.95, method="exact")
    return _round(interval.low), _round(interval.high)


def decision_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict:
    """The figures a quality engineer asks for: misses (defects accepted) and false rejects (good parts scrapped)."""
    labels = labels.astype(int)
    predicted = (probabilities >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    both_classes = len(np.unique(labels)) == 2
    return {
        "n": int(len(labels)),
        "accuracy": round(float(skm.accuracy_score(labels, predicted)), 6),
        "precision": round(float(skm.precision_score(labels, predicted, zero_division=0)), 6),
        "recall": round(float(skm.recall_score(labels, predicted, zero_division=0)), 6),
        "f1": round(float(skm.f1_score(labels, predicted, zero_division=0)), 6),
        "roc_auc": round(float(skm.roc_auc_score(labels, probabilities)), 6) if both_classes else None,
        "missed_defects": int(fn),
        "false_rejects": int(fp),
        "defects": int(tp + fn),
        "good_parts": int(tn + fp),
        # escape rate = defects shipped / defects; false-reject rate = good parts scrapped / good parts
        "escape_rate": round(float(fn / (tp + fn)), 6) if tp + fn else None,
        "escape_rate_upper95": _round(upper_bound_95(int(fn), int(tp + fn))),
        "false_reject_rate": round(float(fp / (tn + fp)), 6) if tn + fp else None,
        "false_reject_rate_upper95": _round(upper_bound_95(int(fp), int(tn + fp))),
        **_intervals("accuracy", int(tp + tn), len(labels)),
        **_intervals("recall", int(tp), int(tp + fn)),
        **_intervals("false_reject_rate", int(fp), int(tn + fp)),
    }


def _intervals(name: str, successes: int, trials: int) -> dict:
    low, high = interval_95(successes, trials)
    return {f"{name}_low95": low, f"{name}_high95": high}


def review_metrics(labels: np.ndarray, probabilities: np.ndarray, band: tuple[float, float]) -> dict:
    """Three-way decisions: how many parts are decided automatically, and what those automatic decisions miss."""
    labels = labels.astype(bool)
    low, high = band
    review = (probabilities >= low) & (probabilities < high)
    accepted, rejected = probabilities < low, probabilities >= high
    missed, false_rejects = int((accepted & labels).sum()), int((rejected & ~labels).sum())
    defects, good = int(labels.sum()), int((~labels).sum())
    return {
        "automatic_share": round(float(1 - review.mean()), 6),
        "review": int(review.sum()),
        "review_defects": int((review & labels).sum()),
        "missed_defects": missed,
        "false_rejects": false_rejects,
        # over all defects / good parts: those sent to a person count as caught / kept
        "escape_rate": round(missed / defects, 6) if defects else None,
        "escape_rate_upper95": _round(upper_bound_95(missed, defects)),
        "false_reject_rate": round(false_rejects / good, 6) if good else None,
        "false_reject_rate_upper95": _round(upper_bound_95(false_rejects, good)),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def evaluate_model(params: EvaluateParams, checkpoint_path: Path, prepared_dir: Path, raw_dir: Path,
                   drift_reference_path: Path, metrics_path: Path, robustness_path: Path, drift_path: Path,
                   plots_dir: Path, operating_point_path: Path) -> dict:
    device = select_device("auto")
    model, checkpoint = load_checkpoint(checkpoint_path, device)
    test, val = load_split(prepared_dir, "test"), load_split(prepared_dir, "val")

    def logits_of(images: torch.Tensor) -> np.ndarray:
        return predict_logits(model, images, params.batch_size, device).double().numpy()

    val_logits, test_logits = logits_of(val.images), logits_of(test.images)
    temperature = fit_temperature(val_logits, val.labels.numpy()) if params.calibration.temperature_scaling else 1.0

    def predict(images: torch.Tensor) -> np.ndarray:
        return sigmoid(logits_of(images) / temperature)

    labels = test.labels.numpy().astype(int)
    raw_probabilities, probabilities = sigmoid(test_logits), sigmoid(test_logits / temperature)
    val_labels, val_probabilities = val.labels.numpy().astype(int), sigmoid(val_logits / temperature)
    threshold = choose_threshold(params, val_labels, val_probabilities)

    band = choose_review_band(params, val_labels, val_probabilities, threshold)
    results = decision_metrics(labels, probabilities, threshold)
    leak_free = test.leak_free
    results = {"operating_point": params.operating_point, "threshold": round(threshold, 6), **results,
               "expected_cost_per_1000": {
                   "line_defect_rate": cost_per_1000(results["escape_rate"], results["false_reject_rate"], params.defect_rate, params),
                   "test_defect_rate": cost_per_1000(results["escape_rate"], results["false_reject_rate"], labels.mean(), params)},
               "leak_free": decision_metrics(labels[leak_free], probabilities[leak_free], threshold),
               "at_threshold_0_5": decision_metrics(labels, probabilities, 0.5),
               "val_at_threshold": {k: v for k, v in decision_metrics(val_labels, val_probabilities, threshold).items()
                                    if k in ("missed_defects", "false_rejects", "accuracy")},
               "calibration": {"temperature": round(temperature, 6),
                               "before": calibration_metrics(labels, raw_probabilities, params.calibration.bins),
                               "after": calibration_metrics(labels, probabilities, params.calibration.bins)}}
    if band is not None:
        results["review"] = {"low": round(band[0], 6), "high": round(band[1], 6),
                             **review_metrics(labels, probabilities, band),
                             "val": review_metrics(val_labels, val_probabilities, band)}

    predicted = (probabilities >= threshold).astype(int)
    names = np.array(CLASS_NAMES)
    evidence, results["explanations"] = _explain(params, model, test, val, probabilities, val_probabilities, threshold,
                                                 Path(plots_dir) / "images")
    with Live(str(plots_dir), dvcyaml=False, save_dvc_exp=False) as live:
        live.log_sklearn_plot("confusion_matrix", names[labels].tolist(), names[predicted].tolist(), name="confusion_matrix.json")
        live.log_sklearn_plot("precision_recall", labels, probabilities, name="precision_recall.json")
        # reliability diagrams: the raw network, and after temperature scaling
        live.log_sklearn_plot("calibration", labels, raw_probabilities, name="calibration_raw.json", n_bins=params.calibration.bins)
        live.log_sklearn_plot("calibration", labels, probabilities, name="calibration.json", n_bins=params.calibration.bins)
        fpr, tpr, thresholds = skm.roc_curve(labels, probabilities)
        # sklearn's first threshold is +inf, which strict JSON readers of `dvc plots` reject
        roc = pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": np.minimum(thresholds, 1.0)})
        live.log_plot("roc", roc, x="fpr", y="tpr", title="ROC (defective = positive)", x_label="false positive rate", y_label="true positive rate")
    (Path(plots_dir) / "metrics.json").unlink(missing_ok=True)  # dvclive's empty summary; the figures are in metrics_path
    report = skm.classification_report(labels, predicted, labels=[0, 1], target_names=list(CLASS_NAMES), digits=4)
    write_text(Path(plots_dir) / "classification_report.txt", report)
    table = pd.DataFrame({"path": test.paths, "label": names[labels], "defect_probability": probabilities.round(6),
                          "predicted": names[predicted], "evidence_on_part": evidence.round(4),
                          "leaked": test.leaked, "near_duplicate": test.near_duplicate})
    if band is not None:
        table.insert(4, "disposition", np.where(probabilities < band[0], "accept", np.where(probabilities >= band[1], "reject", "review")))
    with atomic_path(Path(plots_dir) / "predictions.csv") as tmp:
        table.to_csv(tmp, index=False)
    write_json(metrics_path, results)
    write_json(operating_point_path, {"threshold": threshold, "temperature": temperature,
                                      "review_band": list(band) if band is not None else None})
    print(report)

    reference = json.loads(Path(drift_reference_path).read_text())
    drift_report = drift.drift_report(drift.image_statistics(test.images), reference)
    write_json(drift_path, drift_report)
    print(drift.drift_warning(drift_report) or f"input drift: none on the test split (alarm share {reference['alarm_share']:.0%})")

    chosen = settings(params.robustness)
    renders = render(raw_dir, test.paths, chosen, params.robustness.seed, checkpoint["preprocessing"]["image_size"],
                     checkpoint["preprocessing"]["color_mode"], params.robustness.workers)
    robustness = robustness_metrics(predict_renderings(predict, renders), labels, chosen, threshold, probabilities)
    for (change, strength), images in zip(chosen, renders):
        flagged = drift.share_flagged(drift.image_statistics(torch.from_numpy(images)), reference)
        robustness[change][f"{strength:g}"]["drift_flagged"] = round(flagged, 4)
    write_json(robustness_path, robustness)
    print(format_robustness(robustness))
    _release_gate(params, results, metrics_path)
    return results


def _explain(params: EvaluateParams, model, test, val, probabilities: np.ndarray, val_probabilities: np.ndarray,
             threshold: float, images_dir: Path) -> tuple[np.ndarray, dict]:
    """Grad-CAM for every test decision, its share on the part, and the galleries; returns the per-part
    evidence share and the figures for the metrics."""
    config = params.explain
    labels, val_labels = test.labels.numpy().astype(int), val.labels.numpy().astype(int)
    predicted = (probabilities >= threshold).astype(int)
    heatmaps = gradcam(model, test.images, predicted)
    grey = test.images.float().mean(dim=1).round().to(torch.uint8).numpy()  # (N, H, W): colour images shown in grey
    masks = np.stack([part_mask(image) for image in grey])
    evidence = evidence_on_part(heatmaps, masks)
    wrong = predicted != labels
    flagged = evidence < config.min_evidence_on_part

    def mean(selection: np.ndarray) -> float | None:
        values = evidence[selection]
        return round(float(np.nanmean(values)), 4) if np.isfinite(values).any() else None

    shares = {CLASS_NAMES[k]: mean(labels == k) for k in (0, 1)} | {"errors": mean(wrong)}
    figures = {"evidence_on_part": shares, "part_area_share": round(float(masks.mean()), 4),
               "flagged_off_part": int(flagged.sum()), "flagged_off_part_errors": int((flagged & wrong).sum())}

    def tiles(split, split_probabilities, indices, with_heatmap=False) -> list[Tile]:
        return [Tile(split.images[i].float().mean(dim=0).round().to(torch.uint8).numpy(), int(split.labels[i]),
                     float(split_probabilities[i]), threshold, heatmaps[i] if with_heatmap else None,
                     f"on part {evidence[i]:.0%}" if with_heatmap else "") for i in indices]

    def most_confident_errors(split_labels, split_probabilities) -> np.ndarray:
        errors = np.flatnonzero((split_probabilities >= threshold) != split_labels)
        return errors[np.argsort(-np.abs(split_probabilities[errors] - threshold))][: config.max_gallery]

    rng = np.random.default_rng(config.seed)
    sample = np.sort(rng.choice(len(labels), min(config.sample_grid, len(labels)), replace=False))
    draw_tiles(tiles(test, probabilities, sample), f"Test sample: {len(sample)} parts at threshold {threshold:.3f}",
               images_dir / "sample_grid.png")
    test_errors = most_confident_errors(labels, probabilities)
    draw_tiles(tiles(test, probabilities, test_errors, with_heatmap=True),
               f"Test errors with Grad-CAM: {int(wrong.sum())} of {len(labels)}", images_dir / "errors_test.png")
    val_errors = most_confident_errors(val_labels, val_probabilities)
    draw_tiles(tiles(val, val_probabilities, val_errors),
               f"Validation errors: {int(((val_probabilities >= threshold) != val_labels).sum())} of {len(val_labels)}",
               images_dir / "errors_val.png")
    confident = []
    for k in (0, 1):
        right = np.flatnonzero((labels == k) & ~wrong)
        margin = np.abs(probabilities[right] - threshold)
        order = right[np.argsort(-margin)]
        confident += list(order[: config.confident]) + list(order[::-1][: config.confident])
    draw_tiles(tiles(test, probabilities, confident, with_heatmap=True),
               "Correct test parts with Grad-CAM: most and least confident of each class", images_dir / "gradcam_correct.png")
    draw_tiles(tiles(test, probabilities, np.flatnonzero(flagged)[: config.max_gallery], with_heatmap=True),
               f"Decisions with evidence off the part (< {config.min_evidence_on_part:.0%} on it): {int(flagged.sum())}",
               images_dir / "evidence_off_part.png")
    evidence_chart({name: value if value is not None else float("nan") for name, value in shares.items()},
                   figures["part_area_share"], config.min_evidence_on_part, images_dir / "evidence_on_part.png")
    return evidence, figures


def _release_gate(params: EvaluateParams, results: dict, metrics_path: Path) -> None:
    """Fail the stage, after every metric is written, when an exact upper bound is above its limit."""
    for key, limit in (("escape_rate_upper95", params.gate.max_escape_rate_upper95),
                       ("false_reject_rate_upper95", params.gate.max_false_reject_rate_upper95)):
        if results[key] is not None and results[key] > limit:
            raise InspectionError(f"release gate: test {key} = {results[key]:.4f} is above evaluate.gate.max_{key} = "
                                  f"{limit:g}; see {metrics_path} (the model is not fit to release)")


def format_robustness(robustness: dict) -> str:
    lines = [f"{'change':<12}{'strength':>9}{'accuracy':>10}{'missed':>8}{'false rej':>10}{'flipped':>9}{'drift flag':>11}"]
    for change, levels in robustness.items():
        if change == "worst":
            continue
        for strength, cell in levels.items():
            lines.append(f"{change:<12}{strength:>9}{cell['accuracy']:>10.2%}{cell['missed_defects']:>8}"
                         f"{cell['false_rejects']:>10}{cell['flip_rate']:>9.2%}{cell.get('drift_flagged', float('nan')):>11.0%}")
    worst = robustness["worst"]
    lines.append(f"worst: {worst['accuracy']:.2%} under {worst['change']}; at most {worst['max_missed_defects']} missed defects")
    return "\n".join(lines)
