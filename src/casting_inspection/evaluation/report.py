"""The inspection report: one self-contained HTML page (pictures inlined) that a quality engineer opens.

Headline decision figures first, then pictures, then details; every figure is read from the metrics
and plots the pipeline wrote, so the page never disagrees with `dvc metrics show`.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from casting_inspection.core.errors import InspectionError  # noqa: E402
from casting_inspection.core.files import write_text  # noqa: E402

PICTURES = [
    (
        "sample_grid.png",
        "A sample of test parts",
        "True and predicted label with the defect probability; green = right, red = wrong.",
    ),
    (
        "errors_test.png",
        "Every test error, with where the network looked",
        "Grad-CAM of the decision taken, most confident errors first.",
    ),
    ("errors_val.png", "Validation errors", "The split that chose the threshold and the temperature."),
    (
        "gradcam_correct.png",
        "Right decisions, most and least confident",
        "Grad-CAM for the most and least confident correct parts of each class.",
    ),
    (
        "evidence_on_part.png",
        "Evidence on the part",
        "Share of each heatmap's mass inside the part, found in each image as a disc.",
    ),
    ("evidence_off_part.png", "Decisions whose evidence lies off the part", "Worth a look even when the decision is right."),
    (
        "not_a_part.png",
        "Not a part: what the guard flagged, and why",
        "Flagged test photos, then the generated not-a-part photos (MISSED = decided).",
    ),
]
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#1f2328}
h1{font-size:1.6em;margin-bottom:.2em} h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.8em}
.sub{color:#57606a} .cards{display:flex;flex-wrap:wrap;gap:12px;margin:1em 0}
.card{border:1px solid #d0d7de;border-radius:8px;padding:10px 14px;min-width:190px;flex:1}
.card b{font-size:1.7em;display:block} .card.bad b{color:#cf222e} .card.good b{color:#1a7f37}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em} td,th{border:1px solid #d0d7de;padding:4px 9px;text-align:right}
th{background:#f6f8fa} td:first-child,th:first-child{text-align:left} figure{margin:1.2em 0}
figure img{max-width:100%;border:1px solid #d0d7de} figcaption{color:#57606a;font-size:.9em}
pre{background:#f6f8fa;padding:10px;overflow-x:auto}
"""


def _read_json(path: Path) -> dict:
    if not path.exists():
        raise InspectionError(f"{path}: missing; run the pipeline first (dvc repro)")
    return json.loads(path.read_text())


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _figure_png(draw, size=(9, 3.2)) -> bytes:
    figure = plt.figure(figsize=size)
    draw(figure)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return buffer.getvalue()


def _training_curves(live_dir: Path) -> bytes:
    def draw(figure):
        for k, metric in enumerate(("loss", "accuracy")):
            axis = figure.add_subplot(1, 2, k + 1)
            for split in ("train", "val"):
                table = pd.read_csv(live_dir / "plots/metrics" / split / f"{metric}.tsv", sep="\t")
                axis.plot(table["step"] + 1, table[metric], marker="o", markersize=3, label=split)
            axis.set_xlabel("epoch")
            axis.set_title(metric)
            axis.legend()

    return _figure_png(draw)


def _reliability(evaluate_dir: Path) -> bytes:
    def draw(figure):
        axis = figure.add_subplot(1, 1, 1)
        axis.plot([0, 1], [0, 1], color="#8c959f", linestyle="--", label="calibrated")
        for name, label in (("calibration_raw.json", "raw network"), ("calibration.json", "temperature-scaled")):
            points = pd.DataFrame(json.loads((evaluate_dir / "plots/sklearn" / name).read_text())["calibration"])
            axis.plot(points["prob_pred"], points["prob_true"], marker="o", label=label)
        axis.set_xlabel("predicted defect probability")
        axis.set_ylabel("share defective")
        axis.legend()

    return _figure_png(draw, size=(4.5, 3.6))


def _pct(value, digits=2) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f} %"


def _number(value) -> str:
    return "n/a" if value is None else f"{value:g}"  # None: no defect photo in the test split to measure with


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _card(title: str, value: str, note: str, tone: str = "") -> str:
    return f'<div class="card {tone}">{title}<b>{value}</b><span class="sub">{note}</span></div>'


def _cards(test: dict) -> str:
    """The headline: what the shipped configuration does to a part. With a review band, the parts in it go to a
    person, so the shipped and scrapped figures are those of the automatic decisions (the two-way figures beside)."""
    shipped = test.get("review") or test
    two_way = f"; without the review band: {test['missed_defects']}" if test.get("review") else ""
    cards = [
        _card(
            "Defective parts shipped",
            f"{shipped['missed_defects']} of {test['defects']}",
            f"escape rate {_pct(shipped['escape_rate'])}; 95 % upper bound {_pct(shipped['escape_rate_upper95'])}{two_way}",
            "bad" if shipped["missed_defects"] else "good",
        ),
        _card(
            "Good parts scrapped",
            f"{shipped['false_rejects']} of {test['good_parts']}",
            f"false-reject rate {_pct(shipped['false_reject_rate'])}; "
            f"95 % upper bound {_pct(shipped['false_reject_rate_upper95'])}",
            "bad" if shipped["false_rejects"] else "good",
        ),
    ]
    review = test.get("review")
    if review:
        cards.append(
            _card(
                "Sent to a person",
                f"{review['review']} parts",
                f"{review['review_defects']} of them defective; p in [{review['low']:.3f}, {review['high']:.3f}); "
                f"{_pct(review['automatic_share'], 1)} decided automatically",
            )
        )
    flagged = (test.get("not_a_part") or {}).get("test_flagged")
    if flagged is not None:
        cards.append(_card("Not a part", f"{flagged} photos", "never decided: the guard's reasons are below"))
    cards += [
        _card(
            "Accuracy", _pct(test["accuracy"]), f"95 % interval {_pct(test['accuracy_low95'])} – {_pct(test['accuracy_high95'])}"
        ),
        _card(
            "Expected cost per 1,000 parts",
            _number(test["expected_cost_per_1000"]["line_defect_rate"]),
            "in scrapped-good-part units, at the line's defect rate",
        ),
    ]
    return f'<div class="cards">{"".join(cards)}</div>'


def _headline(test: dict, train: dict) -> str:
    defects, missed = test["defects"], test["missed_defects"]
    if defects == 0:
        plain = "The test split holds no defect photo: what the model misses cannot be measured yet."
    elif missed == 0:
        plain = f"Zero misses in {defects} defects still allows a true escape rate of up to {_pct(test['escape_rate_upper95'])} (exact 95 % bound)."
    else:
        plain = (
            f"{missed} {'miss' if missed == 1 else 'misses'} in {defects} defects: the true escape rate may be as high as "
            f"{_pct(test['escape_rate_upper95'])} (exact 95 % bound)."
        )
    leak_free, at_half = test["leak_free"], test["at_threshold_0_5"]
    decisions = _table(
        ["test set", "parts", "accuracy", "missed defects", "false rejects", "recall (95 % interval)"],
        [
            [
                f"official split, threshold {test['threshold']:.3f} ({test['operating_point']})",
                test["n"],
                _pct(test["accuracy"]),
                missed,
                test["false_rejects"],
                f"{_pct(test['recall'])} ({_pct(test['recall_low95'])} – {_pct(test['recall_high95'])})",
            ],
            [
                "leak-free subset (no exact or near copy in train/val)",
                leak_free["n"],
                _pct(leak_free["accuracy"]),
                leak_free["missed_defects"],
                leak_free["false_rejects"],
                _pct(leak_free["recall"]),
            ],
            [
                "official split, threshold 0.5",
                at_half["n"],
                _pct(at_half["accuracy"]),
                at_half["missed_defects"],
                at_half["false_rejects"],
                _pct(at_half["recall"]),
            ],
        ],
    )
    return f"""<h1>Casting inspection report</h1>
<p class="sub">{test["n"]} test photos of cast impellers ({defects} defective, {test["good_parts"]} good); {_decider(train, test)},
chosen on the validation split, never on test.</p>
{_cards(test)}
<p>{html.escape(plain)}</p>
{decisions}"""


def _anomaly_review(top: float | None) -> str:
    if top is None:
        return ""
    return (
        f", except that a part only it rejects, with a score below {top:.3f} (set by the validation parts it alone "
        "rejected), goes to a person instead of the scrap bin"
    )


def _decider(train: dict, test: dict) -> str:
    if train.get("classifier") is False:
        return (
            "no classifier (train.classifier: false): the model of good parts decides alone, threshold "
            f"{test['threshold']:.3f} on its score (a share of validation good parts rejected)"
        )
    return (
        f"a {train['params']:,}-parameter network; decision threshold {test['threshold']:.3f} on the defect probability "
        f"({test['operating_point']})"
    )


def _robustness(robustness: dict, export: dict) -> str:
    rows = [
        [
            change,
            strength,
            _pct(cell["accuracy"]),
            cell["missed_defects"],
            cell["false_rejects"],
            _pct(cell["flip_rate"]),
            _pct(cell.get("drift_flagged"), 0),
            _pct(cell.get("anomaly_rejected_good"), 1),
            _pct(cell.get("anomaly_rejected_by_change"), 1),
        ]
        for change, levels in robustness.items()
        if change != "worst"
        for strength, cell in levels.items()
    ]
    rows.append(["PyTorch vs ONNX Runtime (one more operator)", "", "", "", "", _pct(export["onnx_flip_rate"]), "", "", ""])
    return f"""<h2>Does it hold when the line changes?</h2>
<p>The test photos re-taken under one camera or lighting change at a time. Flipped = decisions that differ from the
unchanged photo's (an attribute gauge R&amp;R view); drift flagged = share the input-drift check would warn about;
good rejected as anomalous = good parts whose score reaches the model of good parts' threshold (scrapped, or sent to a
person inside its review band; a line change is not a defect); rejected only after the change = the same share among
the good parts it accepts as taken: what the change alone costs.
Worst: {_pct(robustness["worst"]["accuracy"])} under {html.escape(robustness["worst"]["change"])}.</p>
{_table(["change", "strength", "accuracy", "missed defects", "false rejects", "flipped", "drift flagged", "good rejected as anomalous", "rejected only after the change"], rows)}"""


def _not_a_part(test: dict, robustness: dict) -> str:
    guard = test["not_a_part"]
    material = guard["material"]
    flagged = [
        f"{change} {strength}: {_pct(cell.get('not_a_part'), 1)}"
        for change, levels in robustness.items()
        if change != "worst"
        for strength, cell in levels.items()
    ]
    reasons = ", ".join(f"{reason} ({n})" for reason, n in guard["test_reasons"].items()) or "none"
    return f"""<h2>Not a part, not a decision</h2>
<p>A photo the model cannot judge (a dark or blown-out frame, a flat frame, a strip or crop, no part where parts are, a
torn or cut-up frame, or pooled features unlike every training photo) is <b>not_a_part</b>, never ok. The novelty threshold is set on validation
for a {_pct(guard["val_flagged_share"], 1)} false-alarm rate. Test split: {guard["test_flagged"]} of {test["n"] + guard["test_flagged"]}
photos flagged ({reasons}); the figures above are on the {test["n"]} decided. Generated not-a-part photos:
{material["caught"]} of {material["n"]} caught, {material["decided_ok"]} decided ok
{("(missed: " + html.escape(", ".join(material["missed"])) + ")") if material["missed"] else ""}.
Parts re-taken under line changes flagged: {html.escape("; ".join(flagged))}.</p>"""


def _anomaly(anomaly: dict, painted: dict, test: dict, plots_dir: Path) -> str:
    """The model of good parts: painted defects of forms the data set lacks (one kind never chosen on), alone and in the
    shipped decision, the test split scored once, the combined decision, and where the maps point."""
    shipped = {**painted["painted"], anomaly["held_out"]["kind"]: painted["held_out"]}
    rows = [
        [
            kind + (" (held out)" if kind == anomaly["held_out"]["kind"] else ""),
            _pct(cell["decided_ok"], 1),
            f"{cell['auroc']:.3f}",
            _pct(cell["map_peak_on_defect"], 0),
            _pct(cell.get("map_peak_on_defect_rejected"), 1),  # 99.6 % is not 100 %
            _pct(shipped[kind]["ok"], 1),
            _pct(shipped[kind]["review"] + shipped[kind]["not_a_part"], 1),
        ]
        for kind, cell in [*anomaly["painted"].items(), (anomaly["held_out"]["kind"], anomaly["held_out"])]
    ]
    alone, combined = test["anomaly"], test["combined"]
    auroc = "n/a" if alone["auroc"] is None else f"{alone['auroc']:.3f}"
    return f"""<h2>A model of good parts</h2>
<p>Fitted on the train split's good photos only, it flags whatever departs from every good part seen, at a threshold
that rejects {_pct(anomaly["val_good_rejected"], 1)} of validation good parts. A part is <b>defective</b> when it or the
classifier says so{_anomaly_review(alone.get("review_top"))}. Defects painted on {anomaly["painted_photos_per_kind"]} validation good parts, each kind alone,
decided by the anomaly model alone ("map on defect": its highest patch lies on the defect, on every painted part and on
those it rejects) and by the shipped decision (shipped: decided <b>ok</b>; to a person: review or not a part):</p>
{_table(["kind", "anomaly model: ok", "AUROC", "map on defect", "map on defect, rejected", "shipped decision: ok", "to a person"], rows)}
<p>What contrast gets through: the share of painted defects the shipped decision ships <b>ok</b> (of how many; at most:
its 95 % upper bound), by the largest change of grey level a defect makes in the network's input. A flaw painted dark
on a dark vane may change almost nothing.</p>
{_by_change(shipped, anomaly["held_out"]["kind"])}
<p>Test split, scored once: AUROC of the anomaly score alone {auroc}; it alone rejects {alone["good_rejected"]} of
{alone["good"]} good parts and {alone["defects_rejected"]} of {alone["defects"]} defects. The shipped decision:
{_pct(combined["decided_automatically"], 1)} decided automatically, {combined["missed_defects"]} missed defects,
{combined["false_rejects"]} false rejects ({_pct(combined["false_reject_rate"], 2)}), {combined["review"]} to a person,
{combined["not_a_part"]} not a part.</p>
{_img((plots_dir / "anomaly/painted.png").read_bytes(), "painted defects with their anomaly maps")}
{_img((plots_dir / "evaluate/images/anomaly_test.png").read_bytes(), "test parts with their anomaly maps")}"""


def _by_change(shipped: dict, held_out: str) -> str:
    """Share shipped per band of grey-level change, per painted kind, with its 95 % upper bound: a band of few
    defects bounds little."""

    def cell(band: dict) -> str:
        if not band["photos"]:
            return "–"
        return f"{_pct(band['ok'], 0)} of {band['photos']} (at most {_pct(band['ok_upper95'], 0)})"

    bands = list(next(iter(shipped.values()))["by_change"])
    rows = [
        [kind + (" (held out)" if kind == held_out else ""), *(cell(figures["by_change"][band]) for band in bands)]
        for kind, figures in shipped.items()
    ]
    return _table(["kind", *(f"change {band} grey levels" for band in bands)], rows)


def _line(data: dict, test: dict) -> str:
    """The plant's own photos: how many joined training, and the line test set beside the official one."""
    line, scored = data.get("line", {}), test.get("line_test")
    if not line.get("photos"):
        return (
            "<h2>Photos from the line</h2><p>None yet: label the photos waiting for a person with "
            "<code>casting-inspect review</code>, or add a labelled folder with <code>casting-inspect import-line</code>.</p>"
        )
    figures = (
        "none held out"
        if not scored
        else (
            f"{scored['photos']} held out as the line test set: accuracy {_pct(scored.get('accuracy'))}, "
            f"{scored.get('missed_defects', 0)} missed defects, {scored.get('false_rejects', 0)} false rejects, "
            f"{scored['not_a_part']} not a part"
        )
    )
    return f"""<h2>Photos from the line</h2>
<p>{line["photos"]} photos labelled by the plant's inspectors (agreed verdicts only): {line["train"]} joined training,
{line["val"]} validation; {line["dropped"]} dropped as copies of official photos. {html.escape(figures)}.</p>"""


def _trust(test: dict, evaluate_dir: Path, classifier: bool) -> str:
    calibration, explanations = test["calibration"], test["explanations"]
    evidence = explanations["evidence_on_part"]
    if not classifier:
        return """<h2>Can each decision be trusted?</h2>
<p>No classifier (train.classifier: false): the score is the model of good parts' flaw probability, chosen on good
photos alone and calibrated on no defect; no Grad-CAM. Its maps show where it looked (the anomaly gallery).</p>"""
    return f"""<h2>Can each decision be trusted?</h2>
<p>Temperature {calibration["temperature"]:.3f} (fitted on validation). Expected calibration error
{_pct(calibration["before"]["ece"])} before, {_pct(calibration["after"]["ece"])} after; Brier score
{calibration["before"]["brier"]:.5f} before, {calibration["after"]["brier"]:.5f} after.</p>
{_img(_reliability(evaluate_dir), "reliability diagram")}
<p>Grad-CAM mass on the part: good parts {_pct(evidence.get("ok_front"), 1)}, defective parts {_pct(evidence.get("def_front"), 1)},
errors {_pct(evidence.get("errors"), 1)}; the part covers {_pct(explanations["part_area_share"], 1)} of the image.
{explanations["flagged_off_part"]} decisions have most of their evidence off the part ({explanations["flagged_off_part_errors"]} of them errors).</p>"""


def _pictures(images_dir: Path, plots_dir: Path, train: dict) -> str:
    pictures = "".join(
        f"<figure><h3>{html.escape(title)}</h3>{_img((images_dir / name).read_bytes(), title)}<figcaption>{html.escape(note)}</figcaption></figure>"
        for name, title, note in PICTURES
    )
    return f"""<h2>Pictures</h2>
{pictures}
<h3>Training</h3>
{_training(plots_dir, train)}"""


def _training(plots_dir: Path, train: dict) -> str:
    if train.get("classifier") is False:
        good = train["good_photos"]
        return (
            f"<p>No classifier (train.classifier: false): the model of good parts, fitted on {good['train']:,} good "
            f"train photos and thresholded on {good['val']:,} good validation photos, decides alone.</p>"
        )
    return f"""{_img(_training_curves(plots_dir / "train"), "training curves")}
<p class="sub">Best epoch {train["best_epoch"]} of {train["epochs_run"]}, validation loss {train["val_loss"]}.</p>"""


def _details(data: dict, test: dict, drift: dict, export: dict, evaluate_dir: Path) -> str:
    splits = [[s, data[s]["ok_front"], data[s]["def_front"], data[s]["total"]] for s in ("train", "val", "test")]
    return f"""<h2>Details</h2>
<h3>Data</h3>
{_table(["split", "ok", "defective", "total"], splits)}
<p>{data["leaked"]["test_images"]} test photos have a byte-identical copy in the official train split (those copies were
{"dropped" if data["dropped"] else "kept"}); {data["near_duplicates"]["test_images"]} have a near copy by perceptual hash.
The leak-free subset above leaves out both ({test["leak_free"]["n"]} parts). The photos are augmented copies of fewer shots, so
even the leak-free subset still shares parts with training; published accuracies on the official split share the leak.</p>
<h3>Input drift on the test split</h3>
<p>{html.escape(", ".join(drift["alarm"]) or "no statistic outside its training range")} ({drift["n"]} photos).</p>
<h3>Classification report at the chosen threshold</h3>
<pre>{html.escape((evaluate_dir / "classification_report.txt").read_text())}</pre>
<h3>Export</h3>
<p>ONNX model of {export["onnx_bytes"] / 1e3:,.0f} kB; largest probability difference from PyTorch {export["onnx_max_abs_diff"]:.1e};
{export["onnx_decision_flips"]} decision flips on {export["images_checked"]} test photos.</p>"""


def write_report(metrics_dir: Path, plots_dir: Path, out_path: Path) -> Path:
    data, train, test, robustness, drift, export, anomaly, painted = (
        _read_json(metrics_dir / f"{n}.json")
        for n in ("data", "train", "test", "robustness", "drift", "export", "anomaly", "painted")
    )
    evaluate_dir, images_dir = plots_dir / "evaluate", plots_dir / "evaluate/images"
    missing = [name for name, *_ in PICTURES if not (images_dir / name).exists()]
    if missing:
        raise InspectionError(f"{images_dir}: missing {', '.join(missing)}; run the evaluate stage again (dvc repro evaluate)")
    body = "\n".join(
        [
            _headline(test, train),
            _anomaly(anomaly, painted, test, plots_dir),
            _not_a_part(test, robustness),
            _line(data, test),
            _robustness(robustness, export),
            _trust(test, evaluate_dir, train.get("classifier") is not False),
            _pictures(images_dir, plots_dir, train),
            _details(data, test, drift, export, evaluate_dir),
        ]
    )
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Casting inspection report</title>'
        f"<style>{CSS}</style></head><body>{body}</body></html>\n"
    )
    write_text(out_path, page)
    return out_path
