"""Score the test split once: decision metrics (defective = positive) at the operating point chosen on
validation, calibration, curves, the predictions table, Grad-CAM galleries, input drift and the release gate."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from dvclive import Live
from sklearn import metrics as skm

from casting_inspection import CLASS_NAMES
from casting_inspection.core.decision import DECISIONS, DecisionRule
from casting_inspection.core.errors import InspectionError
from casting_inspection.core.files import atomic_path, write_json, write_text
from casting_inspection.core.overlay import overlay, tile_grid
from casting_inspection.core.params import EvaluateParams
from casting_inspection.data import drift
from casting_inspection.data.dataset import Split, load_split
from casting_inspection.data.images import ImageSpec
from casting_inspection.evaluation.calibrate import OperatingPoint, Scored, calibrate, costs_of
from casting_inspection.evaluation.calibration import calibration_metrics, sigmoid
from casting_inspection.evaluation.departures_set import Departures, departures_of, load_departures
from casting_inspection.evaluation.explain import evidence_on_part, gradcam, part_mask
from casting_inspection.evaluation.galleries import Tile, draw_tiles, evidence_chart
from casting_inspection.evaluation.guard import Decider, guard_reasons
from casting_inspection.evaluation.metrics import decision_metrics, review_metrics, shipped_by_change
from casting_inspection.evaluation.not_a_part import not_a_part_figures
from casting_inspection.evaluation.painted_set import PaintedSet, load_painted
from casting_inspection.modeling.inspector import load_inspector
from casting_inspection.modeling.predict import predict_logits_and_features, select_device

GALLERY_MOST = 36  # test parts in the anomaly gallery


@dataclasses.dataclass(frozen=True)
class EvaluateOutputs:
    """Where the evaluate stage writes: metrics, drift, plots, and the operating point and guard that ship."""

    metrics: Path
    drift: Path
    painted: Path
    plots: Path
    operating_point: Path
    guard: Path


def evaluate_model(
    params: EvaluateParams,
    checkpoint_path: Path,
    prepared_dir: Path,
    drift_reference_path: Path,
    out: EvaluateOutputs,
    anomaly_path: Path,
    painted_dir: Path,
    departures_path: Path,
) -> dict:
    """Calibrate on validation, write the operating point, then score the test split once with it."""
    device = select_device("auto")
    model, checkpoint, anomaly, anomaly_threshold = load_inspector(checkpoint_path, anomaly_path, device)
    train, val, test = (load_split(prepared_dir, split) for split in ("train", "val", "test"))
    scores = load_departures(departures_path, anomaly_path)
    val_anomaly = departures_of(scores, "val", val.images)
    point, val_scored = calibrate(params, model, checkpoint, (train, val), (anomaly_threshold, val_anomaly), device)
    point.save(out.operating_point, out.guard)
    logits, features = predict_logits_and_features(model, test.images, params.batch_size, device)
    logits = logits.double().numpy()
    scored = Scored(test.labels.numpy().astype(int), sigmoid(logits / point.temperature), sigmoid(logits))
    flags = guard_reasons(point.guard_rules, point.guard_tensors, test.images, test.sizes, features)
    results = test_figures(params, test, scored, val_scored, point, np.array([flag is None for flag in flags]))
    decide = Decider(model, point.temperature, point.rule, point.guard_rules, point.guard_tensors, params.batch_size, anomaly)
    departures, maps = departures_of(scores, "test", test.images), departures_of(scores, "test", test.images, maps=True)
    decisions = point.rule.decide_all(scored.probabilities, flags, None, departures)
    results["anomaly"] = anomaly_figures(scored.labels, departures, anomaly_threshold)
    results["anomaly"]["review_top"] = point.rule.anomaly_review  # below it, a part only this model rejects: a person looks
    results["combined"] = combined_figures(scored.labels, decisions)
    _anomaly_gallery(test, scored, decisions, departures, maps, point.rule, Path(out.plots) / "images" / "anomaly_test.png")
    write_json(out.painted, painted_figures(decide, load_painted(painted_dir), scores, params.painted_bands))
    spec = ImageSpec(**checkpoint["preprocessing"])
    results["not_a_part"] = not_a_part_figures(params, decide, test, val, flags, spec, Path(out.plots) / "images")
    results["line_test"] = line_test_figures(decide, load_split(prepared_dir, "line_test"), point.rule)
    threshold = point.rule.threshold
    evidence, results["explanations"] = _explain(
        params, model, test, val, scored.probabilities, val_scored.probabilities, threshold, Path(out.plots) / "images"
    )
    report = _plots(params, test, scored, point.rule, evidence, flags, Path(out.plots), departures)
    write_json(out.metrics, results)
    print(report)
    _drift(test, drift_reference_path, out.drift)
    _release_gate(params, results, out.metrics)
    return results


def _drift(test: Split, drift_reference_path: Path, drift_path: Path) -> None:
    reference = json.loads(Path(drift_reference_path).read_text())
    drift_report = drift.drift_report(drift.image_statistics(test.images), reference)
    write_json(drift_path, drift_report)
    print(
        drift.drift_warning(drift_report) or f"input drift: none on the test split (alarm share {reference['alarm_share']:.0%})"
    )


def anomaly_figures(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """The model of good parts alone on the test split: how well its score ranks defects above good parts, and what
    its threshold (set on validation good parts) rejects of each."""
    rejected = scores >= threshold
    return {
        "threshold": round(threshold, 6),
        "auroc": round(float(skm.roc_auc_score(labels, scores)), 4) if 0 < labels.sum() < len(labels) else None,
        "good_rejected": int((rejected & (labels == 0)).sum()),
        "defects_rejected": int((rejected & (labels == 1)).sum()),
        "defects": int(labels.sum()),
        "good": int((labels == 0).sum()),
    }


def combined_figures(labels: np.ndarray, decided: list[tuple[str, str | None]]) -> dict:
    """The shipped decision (guard, model of good parts, classifier, review band) on every test photo."""
    decisions = np.array([decision for decision, _ in decided])
    automatic = np.isin(decisions, ["ok", "defective"])
    return {
        "photos": len(decisions),
        "decided_automatically": round(float(automatic.mean()), 4),
        "missed_defects": int(((decisions == "ok") & (labels == 1)).sum()),
        "false_rejects": int(((decisions == "defective") & (labels == 0)).sum()),
        "false_reject_rate": round(float(((decisions == "defective") & (labels == 0)).sum() / max((labels == 0).sum(), 1)), 4),
        "review": int((decisions == "review").sum()),
        "not_a_part": int((decisions == "not_a_part").sum()),
    }


def painted_figures(decide: Decider, painted: PaintedSet, scores: Departures, bands: list[int]) -> dict:
    """The shipped decision (guard, model of good parts, classifier, review band) on defects painted on validation
    good parts: the share of each kind decided each way, and the share shipped within each band of the largest
    change of grey level a defect makes (`bands`: the edges between them). `ok` is a painted defect shipped.
    `scores`: the model of good parts' score of each painted photo (evaluation.departures)."""

    if not painted.index.paths:
        raise InspectionError("data/painted holds no painted photo: the validation split has no good part to paint")

    def shares(kind: str) -> dict:
        departures = departures_of(scores, f"painted/{kind}", painted.images[kind])
        decisions = np.array([decision for decision, _, _ in decide(painted.images[kind], painted.index.sizes, departures)])
        figures = {name: round(float(np.mean(decisions == name)), 4) for name in DECISIONS}
        return {**figures, "by_change": shipped_by_change(decisions == "ok", painted.index.changes[kind], bands)}

    return {
        "photos_per_kind": len(painted.index.paths),
        "painted": {kind: shares(kind) for kind in painted.kinds},
        "held_out": {"kind": painted.held_out, **shares(painted.held_out)},
    }


def _anomaly_gallery(test: Split, scored: Scored, decisions, departures, maps, rule: DecisionRule, path: Path) -> None:
    """The test parts only the model of good parts rejected (scrapped, or sent to a person inside its review band),
    then the shipped decision's errors, with their maps."""
    labels, names = scored.labels, np.array(CLASS_NAMES)
    lone = (scored.probabilities < rule.threshold) & (departures >= rule.anomaly_threshold)
    only_anomaly = [i for i, (d, _) in enumerate(decisions) if d in ("defective", "review") and lone[i]]
    errors = [i for i, (d, _) in enumerate(decisions) if (d == "ok" and labels[i]) or (d == "defective" and not labels[i])]
    chosen = list(dict.fromkeys(only_anomaly + errors))[:GALLERY_MOST]
    tiles = [
        (
            overlay(test.images[i].numpy(), maps[i], rule.anomaly_threshold),
            f"{names[labels[i]]} {decisions[i][0]} a={departures[i]:.2f}",
        )
        for i in chosen
    ]
    title = f"Test: {len(only_anomaly)} rejected by the model of good parts alone, {len(errors)} errors of the shipped decision"
    with atomic_path(path) as tmp:
        tile_grid(tiles, 6, title).save(tmp, format="PNG")


def line_test_figures(decide, line_test: Split, rule: DecisionRule) -> dict | None:
    """The plant's own held-out photos (data/line), decided as the shipped model decides; None when there are none."""
    if not line_test.paths:
        return None
    outcomes = decide(line_test.images, line_test.sizes)
    decided = np.array([flag is None for _, _, flag in outcomes])
    labels = line_test.labels.numpy().astype(int)[decided]
    probabilities = np.array([p for _, p, _ in outcomes])[decided]
    figures = {"photos": len(outcomes), "not_a_part": int((~decided).sum())}
    if len(labels):
        figures |= decision_metrics(labels, probabilities, rule.threshold)
        if rule.band is not None:
            figures["review"] = review_metrics(labels, probabilities, rule.band)
    return figures


def test_figures(
    params: EvaluateParams, test: Split, scored: Scored, val: Scored, point: OperatingPoint, decided: np.ndarray
) -> dict:
    """metrics/test.json on the parts that were decided (the guard's flags are counted in `not_a_part`): at the
    operating point, on the leak-free subset, at 0.5, and the calibration."""
    labels, costs = scored.labels[decided], costs_of(params)
    probabilities, raw_probabilities = scored.probabilities[decided], scored.raw[decided]
    threshold, band, temperature = point.rule.threshold, point.rule.band, point.temperature
    results = decision_metrics(labels, probabilities, threshold)
    escape, false_reject = results["escape_rate"], results["false_reject_rate"]
    val_figures = decision_metrics(val.labels, val.probabilities, threshold)
    leak_free = test.leak_free[decided]
    results = {
        "operating_point": params.operating_point,
        "threshold": round(threshold, 6),
        **results,
        "expected_cost_per_1000": {
            "line_defect_rate": costs.per_1000(escape, false_reject),
            "test_defect_rate": costs.per_1000(escape, false_reject, labels.mean()),
        },
        "leak_free": decision_metrics(labels[leak_free], probabilities[leak_free], threshold),
        "at_threshold_0_5": decision_metrics(labels, probabilities, 0.5),
        "val_at_threshold": {k: val_figures[k] for k in ("missed_defects", "false_rejects", "accuracy")},
        "calibration": {
            "temperature": round(temperature, 6),
            "before": calibration_metrics(labels, raw_probabilities, params.calibration.bins),
            "after": calibration_metrics(labels, probabilities, params.calibration.bins),
        },
    }
    if band is not None:
        results["review"] = {
            "low": round(band[0], 6),
            "high": round(band[1], 6),
            **review_metrics(labels, probabilities, band),
            "val": review_metrics(val.labels, val.probabilities, band),
        }
    return results


def _curves(live: Live, labels: np.ndarray, probabilities: np.ndarray) -> None:
    """Precision-recall and ROC (defective = positive)."""
    live.log_sklearn_plot("precision_recall", labels, probabilities, name="precision_recall.json")
    fpr, tpr, thresholds = skm.roc_curve(labels, probabilities)
    # sklearn's first threshold is +inf, which strict JSON readers of `dvc plots` reject
    roc = pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": np.minimum(thresholds, 1.0)})
    live.log_plot(
        "roc",
        roc,
        x="fpr",
        y="tpr",
        title="ROC (defective = positive)",
        x_label="false positive rate",
        y_label="true positive rate",
    )


def _plots(
    params: EvaluateParams,
    test: Split,
    scored: Scored,
    rule: DecisionRule,
    evidence: np.ndarray,
    flags: list[str | None],
    plots_dir: Path,
    departures: np.ndarray,
) -> str:
    """dvclive plots, the classification report and the per-part predictions table; returns the report text."""
    labels, names = scored.labels, np.array(CLASS_NAMES)
    probabilities, raw_probabilities = scored.probabilities, scored.raw
    predicted = (probabilities >= rule.threshold).astype(int)
    bins = params.calibration.bins
    with Live(str(plots_dir), dvcyaml=False, save_dvc_exp=False) as live:
        live.log_sklearn_plot("confusion_matrix", names[labels].tolist(), names[predicted].tolist(), name="confusion_matrix.json")
        if len(np.unique(labels)) == 2:  # a split without defect photos (a new product) has no curves
            _curves(live, labels, probabilities)
        # reliability diagrams: the raw network, and after temperature scaling
        live.log_sklearn_plot("calibration", labels, raw_probabilities, name="calibration_raw.json", n_bins=bins)
        live.log_sklearn_plot("calibration", labels, probabilities, name="calibration.json", n_bins=bins)
    (plots_dir / "metrics.json").unlink(missing_ok=True)  # dvclive's empty summary; the figures are in metrics/test.json
    report = skm.classification_report(labels, predicted, labels=[0, 1], target_names=list(CLASS_NAMES), digits=4)
    write_text(plots_dir / "classification_report.txt", report)
    table = pd.DataFrame(
        {
            "path": test.paths,
            "label": names[labels],
            "defect_probability": probabilities.round(6),
            "predicted": names[predicted],
            "evidence_on_part": evidence.round(4),
            "leaked": test.leaked,
            "near_duplicate": test.near_duplicate,
        }
    )
    table.insert(4, "decision", [decision for decision, _ in rule.decide_all(probabilities, flags, None, departures)])
    table.insert(5, "anomaly", departures.round(4))
    table["not_a_part"] = [flag or "" for flag in flags]  # why the guard flagged it; such a part is never decided
    with atomic_path(plots_dir / "predictions.csv") as tmp:
        table.to_csv(tmp, index=False)
    return report


def _explain(
    params: EvaluateParams,
    model,
    test,
    val,
    probabilities: np.ndarray,
    val_probabilities: np.ndarray,
    threshold: float,
    images_dir: Path,
) -> tuple[np.ndarray, dict]:
    """Grad-CAM for every test decision, its share on the part, and the galleries; returns the per-part
    evidence share and the figures for the metrics."""
    config = params.explain
    labels = test.labels.numpy().astype(int)
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
    figures = {
        "evidence_on_part": shares,
        "part_area_share": round(float(masks.mean()), 4),
        "flagged_off_part": int(flagged.sum()),
        "flagged_off_part_errors": int((flagged & wrong).sum()),
    }
    gallery = _Gallery(threshold, heatmaps, evidence, config.max_gallery)
    _draw_galleries(config, gallery, test, val, probabilities, val_probabilities, flagged, images_dir)
    evidence_chart(
        {name: value if value is not None else float("nan") for name, value in shares.items()},
        figures["part_area_share"],
        config.min_evidence_on_part,
        images_dir / "evidence_on_part.png",
    )
    return evidence, figures


class _Gallery:
    """Tiles of parts at the operating point, with the test split's Grad-CAM when asked."""

    def __init__(self, threshold: float, heatmaps: np.ndarray, evidence: np.ndarray, most: int):
        self.threshold, self.heatmaps, self.evidence, self.most = threshold, heatmaps, evidence, most

    def tiles(self, split, probabilities, indices, with_heatmap=False) -> list[Tile]:
        return [
            Tile(
                split.images[i].float().mean(dim=0).round().to(torch.uint8).numpy(),
                int(split.labels[i]),
                float(probabilities[i]),
                self.threshold,
                self.heatmaps[i] if with_heatmap else None,
                f"on part {self.evidence[i]:.0%}" if with_heatmap else "",
            )
            for i in indices
        ]

    def most_confident_errors(self, labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        errors = np.flatnonzero((probabilities >= self.threshold) != labels)
        return errors[np.argsort(-np.abs(probabilities[errors] - self.threshold))][: self.most]


def _draw_galleries(config, gallery: _Gallery, test, val, probabilities, val_probabilities, flagged, images_dir: Path) -> None:
    """The sample grid, both error galleries, the most and least confident right decisions, evidence off the part."""
    labels, val_labels, threshold = test.labels.numpy().astype(int), val.labels.numpy().astype(int), gallery.threshold
    wrong = (probabilities >= threshold).astype(int) != labels
    rng = np.random.default_rng(config.seed)
    sample = np.sort(rng.choice(len(labels), min(config.sample_grid, len(labels)), replace=False))
    draw_tiles(
        gallery.tiles(test, probabilities, sample),
        f"Test sample: {len(sample)} parts at threshold {threshold:.3f}",
        images_dir / "sample_grid.png",
    )
    draw_tiles(
        gallery.tiles(test, probabilities, gallery.most_confident_errors(labels, probabilities), with_heatmap=True),
        f"Test errors with Grad-CAM: {int(wrong.sum())} of {len(labels)}",
        images_dir / "errors_test.png",
    )
    draw_tiles(
        gallery.tiles(val, val_probabilities, gallery.most_confident_errors(val_labels, val_probabilities)),
        f"Validation errors: {int(((val_probabilities >= threshold) != val_labels).sum())} of {len(val_labels)}",
        images_dir / "errors_val.png",
    )
    confident = []
    for k in (0, 1):
        right = np.flatnonzero((labels == k) & ~wrong)
        order = right[np.argsort(-np.abs(probabilities[right] - threshold))]
        confident += list(order[: config.confident]) + list(order[::-1][: config.confident])
    draw_tiles(
        gallery.tiles(test, probabilities, confident, with_heatmap=True),
        "Correct test parts with Grad-CAM: most and least confident of each class",
        images_dir / "gradcam_correct.png",
    )
    draw_tiles(
        gallery.tiles(test, probabilities, np.flatnonzero(flagged)[: config.max_gallery], with_heatmap=True),
        f"Decisions with evidence off the part (< {config.min_evidence_on_part:.0%} on it): {int(flagged.sum())}",
        images_dir / "evidence_off_part.png",
    )


def _release_gate(params: EvaluateParams, results: dict, metrics_path: Path) -> None:
    """Fail the stage, after every metric is written, when an exact upper bound is above its limit."""
    for key, limit in (
        ("escape_rate_upper95", params.gate.max_escape_rate_upper95),
        ("false_reject_rate_upper95", params.gate.max_false_reject_rate_upper95),
    ):
        if results[key] is None and limit < 1:  # no defect (or no good) photo in the test split: nothing to bound
            raise InspectionError(
                f"release gate: the test split has no photo to bound {key} with; add them to test/ in the data "
                f"or set evaluate.gate.max_{key} to 1.0 (off); see {metrics_path}"
            )
        if results[key] is not None and results[key] > limit:
            raise InspectionError(
                f"release gate: test {key} = {results[key]:.4f} is above evaluate.gate.max_{key} = "
                f"{limit:g}; see {metrics_path} (the model is not fit to release)"
            )
