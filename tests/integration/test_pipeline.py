"""End to end: the real `dvc` CLI runs the pipeline's stages on a small generated archive in a temporary git repo."""

from __future__ import annotations

import json
import re
import sys

import onnx
import pandas as pd
import pytest
from ruamel.yaml import YAML

from browser import rendered_images
from casting_inspection.modeling.checkpoint import load_checkpoint
from helpers import copy_project, jpeg_bytes, part_image, project_env, run

pytestmark = pytest.mark.slow  # real processes, servers, browsers or dvc runs: skipped by `pytest -m "not slow"`

STAGES = [
    *("download", "prepare", "train", "paint", "anomaly", "departures", "evaluate"),
    *("retake", "retaken_departures", "robustness", "export", "report"),
]
PICTURES = {
    "sample_grid.png",
    "errors_test.png",
    "errors_val.png",
    "gradcam_correct.png",
    "evidence_on_part.png",
    "evidence_off_part.png",
    "not_a_part.png",
    "anomaly_test.png",
}


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def downstream(dot: str, stages: set[str]) -> set[str]:
    """Every stage that `dvc dag --dot` puts after any of `stages`: what re-runs when their outputs change."""
    edges = re.findall(r'"([^"]+)" -> "([^"]+)"', dot)
    found, frontier = set(), set(stages)
    while frontier:
        frontier = {after for before, after in edges if before in frontier} - found
        found |= frontier
    return found


def test_repro_then_noop_then_experiment(reproduced_project, kaggle_zip, tmp_path):
    source, first = reproduced_project  # the project after its first `dvc repro`, and what that run printed
    repo = copy_project(source, tmp_path / "repo")
    env = project_env(CASTING_ARCHIVE=str(kaggle_zip))
    assert ran_stages(first) == STAGES

    data = json.loads((repo / "metrics/data.json").read_text())
    assert data["test"]["total"] == 17 and data["leaked"] == {"test_images": 1, "train_copies": 1}
    test = json.loads((repo / "metrics/test.json").read_text())
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "missed_defects", "false_rejects"):
        assert key in test and key in test["leak_free"]
    leak_free = data["near_duplicates"]["test_images_leak_free"]  # decided ones only: the guard's flags are apart
    assert leak_free - test["not_a_part"]["test_flagged"] <= test["leak_free"]["n"] <= leak_free <= 16
    assert test["accuracy_low95"] <= test["accuracy"] <= test["accuracy_high95"]
    review = test["review"]
    assert 0 < review["low"] <= test["threshold"] <= review["high"] < 1
    assert review["review"] == round((1 - review["automatic_share"]) * test["n"])
    assert review["val"]["review"] <= 0.02 * data["val"]["total"]  # at most review_share of the validation parts
    explanations = test["explanations"]
    assert set(explanations["evidence_on_part"]) == {"ok_front", "def_front", "errors"}
    assert 0.1 < explanations["part_area_share"] < 0.9
    assert PICTURES == {p.name for p in (repo / "plots/evaluate/images").iterdir()}
    report = (repo / "reports/index.html").read_text()
    drawn_count = len(PICTURES) + 3  # training curves, reliability diagram, the painted defects' maps
    assert report.count("<img") == drawn_count and report.count("data:image/png;base64,") == drawn_count
    drawn = rendered_images(repo / "reports/index.html")  # in a real browser: every picture decodes and has a size
    assert len(drawn) == drawn_count and all(image["decoded"] and image["width"] > 100 for image in drawn), drawn
    assert test["operating_point"] == "bayes" and 0 < test["threshold"] < 1
    assert {"line_defect_rate", "test_defect_rate"} == set(test["expected_cost_per_1000"])
    assert test["not_a_part"]["test_flagged"] <= 3  # generated parts like the training ones: a few at most
    assert test["at_threshold_0_5"]["n"] == 17 - test["not_a_part"]["test_flagged"]  # the flagged ones are apart
    assert test["escape_rate_upper95"] >= test["escape_rate"] and 0 < test["false_reject_rate_upper95"] <= 1
    calibration = test["calibration"]
    assert calibration["temperature"] > 0 and {"brier", "ece"} == set(calibration["after"]) == set(calibration["before"])
    operating_point = json.loads((repo / "models/operating_point.json").read_text())
    assert operating_point["temperature"] == pytest.approx(calibration["temperature"], rel=1e-4)
    assert operating_point["threshold"] == pytest.approx(test["threshold"], abs=1e-6)
    export = json.loads((repo / "metrics/export.json").read_text())
    assert export["onnx_label_agreement"] == 1.0 and export["onnx_max_abs_diff"] < 1e-4
    assert export["onnx_decision_flips"] == 0 and export["onnx_flip_rate"] == 0.0
    model = onnx.load(str(repo / "models/model.onnx"))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis
    assert {p.key for p in model.metadata_props} >= {"threshold", "review_band", "class_names", "image_size", "color_mode"}
    assert [o.name for o in model.graph.output] == ["defect_probability", "novelty", "anomaly", "anomaly_map"]
    anomaly = json.loads((repo / "metrics/anomaly.json").read_text())
    assert set(anomaly["painted"]) == {"hole", "crack", "scratch", "chip"} and anomaly["held_out"]["kind"] == "blob"
    pointed = [cell["map_peak_on_defect_rejected"] for cell in [*anomaly["painted"].values(), anomaly["held_out"]]]
    assert all(share is None or 0 <= share <= 1 for share in pointed)  # None: the model rejected none of that kind
    assert operating_point["anomaly_threshold"] == pytest.approx(anomaly["threshold"]) == test["anomaly"]["threshold"]
    assert export["onnx_anomaly_flips"] == export["onnx_outcome_flips"] == 0  # every threshold and band at once
    assert 0 <= export["int8"]["outcome_flips"] <= export["images_checked"]
    painted = json.loads((repo / "metrics/painted.json").read_text())  # the shipped decision on the painted defects
    assert set(painted["painted"]) == {"hole", "crack", "scratch", "chip"} and painted["held_out"]["kind"] == "blob"
    for cell in [*painted["painted"].values(), painted["held_out"]]:
        assert sum(cell[name] for name in ("ok", "defective", "review", "not_a_part")) == pytest.approx(1, abs=1e-3)
        bands = cell["by_change"].values()  # the same painted defects, by the change each makes
        assert sum(band["photos"] for band in bands) == painted["photos_per_kind"]
        shipped = sum(band["photos"] * band["ok"] for band in bands if band["photos"])
        assert shipped / painted["photos_per_kind"] == pytest.approx(cell["ok"], abs=1e-3)
    combined = test["combined"]
    assert combined["photos"] == 17 and combined["not_a_part"] == test["not_a_part"]["test_flagged"]
    assert combined["review"] + combined["not_a_part"] == round((1 - combined["decided_automatically"]) * 17)
    _, checkpoint = load_checkpoint(repo / "models/model.safetensors")
    assert checkpoint["class_names"] == ["ok_front", "def_front"] and checkpoint["config"]["version"] >= 2
    predictions = pd.read_csv(repo / "plots/evaluate/predictions.csv")
    assert len(predictions) == 17 and set(predictions["decision"]) <= {"ok", "defective", "review", "not_a_part"}
    flagged = predictions["decision"] == "not_a_part"
    assert flagged.sum() == test["not_a_part"]["test_flagged"] and predictions["not_a_part"].notna().eq(flagged).all()
    assert predictions["evidence_on_part"].between(0, 1).all()
    robustness = json.loads((repo / "metrics/robustness.json").read_text())
    assert set(robustness) == {"brightness", "contrast", "rotation", "shift", "blur", "jpeg", "worst"}
    for levels in (v for k, v in robustness.items() if k != "worst"):
        for cell in levels.values():
            decided = round(17 * (1 - cell["not_a_part"]))  # the figures are on the parts the guard let through
            assert (
                cell["accuracy"] is None
                if decided == 0
                else (cell["missed_defects"] + cell["false_rejects"] == round((1 - cell["accuracy"]) * decided))
            )
            assert 0 <= cell["drift_flagged"] <= 1 and (cell["flip_rate"] is None or 0 <= cell["flip_rate"] <= 1)
            assert 0 <= cell["anomaly_rejected_good"] <= 1
            assert 0 <= cell["anomaly_rejected_by_change"] <= 1  # most good parts are accepted as taken
    assert robustness["blur"]["1.6"]["drift_flagged"] > 0.5  # sharpness falls out of the training range
    for levels in (v for k, v in robustness.items() if k != "worst"):
        assert all(0 <= cell["not_a_part"] <= 1 for cell in levels.values())
    guard = test["not_a_part"]
    # the generated parts are near copies of one disc: halves of two of them stitched together look like one part
    # (on the real photos the torn frames are measured: bench/bench_torn.py); everything else is caught, none ok
    untorn_missed = [kind for kind in guard["material"]["missed"] if not kind.startswith("torn:")]
    assert len(untorn_missed) <= 0.1 * guard["material"]["n"], untorn_missed
    assert guard["material"]["decided_ok"] == 0 or not untorn_missed
    assert test["n"] + guard["test_flagged"] == 17  # every figure on the decided parts, the flagged ones apart
    drift = json.loads((repo / "metrics/drift.json").read_text())
    assert drift["n"] == 17 and {"brightness", "sharpness", "offset_x", "alarm"} <= set(drift)
    reference = json.loads(next(p.value for p in model.metadata_props if p.key == "drift_reference"))
    assert reference == json.loads((repo / "data/drift_reference.json").read_text())
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline"], repo)

    second = run(["dvc", "repro"], repo, env)
    assert ran_stages(second.stdout) == []
    assert (repo / "dvc.lock").read_text() == run(["git", "show", "HEAD:dvc.lock"], repo).stdout

    # a line change's rendering is the retake's concern alone (robustness follows its output): the rest stays up to date
    perturbations = repo / "src/casting_inspection/evaluation/perturbations.py"
    perturbations.write_text(perturbations.read_text() + "\n# a reviewer's note\n")
    status = json.loads(run(["dvc", "status", "--json"], repo, env).stdout)
    assert set(status) == {"retake"}, status
    run(["git", "checkout", str(perturbations)], repo)
    painted = repo / "src/casting_inspection/evaluation/painted.py"  # the painted defects judge; they never decide
    painted.write_text(painted.read_text() + "\n# a reviewer's note\n")
    assert set(json.loads(run(["dvc", "status", "--json"], repo, env).stdout)) == {"paint"}
    run(["git", "checkout", str(painted)], repo)

    # shared storage: push to a DVC remote (a local folder here), and a second clone pulls the same model
    remote = repo.parent / "remote"
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], repo)
    run(["git", "commit", "-qam", "DVC remote"], repo)
    run(["dvc", "push"], repo, env)
    clone = repo.parent / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], repo.parent)
    run(["dvc", "pull"], clone, project_env())  # no archive, no Kaggle: everything comes from the remote
    assert (clone / "models/model.safetensors").read_bytes() == (repo / "models/model.safetensors").read_bytes()
    assert (clone / "models/model.onnx").read_bytes() == (repo / "models/model.onnx").read_bytes()
    assert ran_stages(run(["dvc", "repro"], clone, project_env()).stdout) == []  # nothing to re-run

    # a line change of robustness's own touches the renderings and their decisions only: no retraining, no Grad-CAM
    params = YAML().load((repo / "params.yaml").read_text())
    params["robustness"]["jpeg"] = [20]
    YAML().dump(params, repo / "params.yaml")
    changed = set(json.loads(run(["dvc", "status", "--json"], repo, env).stdout))
    assert changed == {"retake", "robustness"}
    assert downstream(run(["dvc", "dag", "--dot"], repo, env).stdout, changed) == {"retaken_departures", "robustness", "report"}
    run(["git", "checkout", "params.yaml"], repo)

    experiment = run(["dvc", "exp", "run", "-S", "train.lr=1e-5"], repo, env)
    # the re-taken photos and the model of good parts' scores do not depend on the classifier: an experiment on
    # training re-uses them
    assert ran_stages(experiment.stdout) == ["train", "evaluate", "robustness", "export", "report"]
    # -S writes 1e-05, which only a YAML 1.2 loader reads as a number: the stage must have used it
    assert "1e-05" in (repo / "params.yaml").read_text()

    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], repo, env).stdout)
    changed = diff["metrics/train.json"]
    assert changed["val_loss"]["diff"] != 0
    params_diff = json.loads(run(["dvc", "params", "diff", "--json"], repo, env).stdout)
    assert params_diff["params.yaml"]["train.lr"]["new"] == 1e-05

    plots = json.loads(run(["dvc", "plots", "show", "--json"], repo, env).stdout)["data"]
    assert {"loss", "accuracy"} <= set(plots)
    assert any("confusion_matrix" in name for name in plots)
    assert any("roc" in name for name in plots)
    assert "calibration" in plots
    assert {f"plots/evaluate/images/{name}" for name in PICTURES} <= set(plots)
    pictures_diff = json.loads(run(["dvc", "plots", "diff", "--json", "HEAD"], repo, env).stdout)["data"]
    sample = pictures_diff["plots/evaluate/images/sample_grid.png"]
    assert {entry["revisions"][0] for entry in sample} == {"HEAD", "workspace"}  # both experiments' pictures, side by side

    # learning from the line: a plant's labelled folder joins training and gives a second test set
    run(["git", "checkout", "params.yaml"], repo)
    plant = repo.parent / "plant"
    for folder, defective in (("NG", True), ("OK", False)):
        (plant / folder).mkdir(parents=True)
        for i in range(10):
            (plant / folder / f"{i}.jpeg").write_bytes(jpeg_bytes(part_image(defective, seed=500 + i + 50 * defective)))
    cli = [sys.executable, "-m", "casting_inspection.serving.cli", "import-line", str(plant), "--map", "NG=defective"]
    imported = run(
        [*cli, "--map", "OK=ok", "--line", "data/line", "--model", "models/model.onnx", "--inspector", "qa"],
        repo,
        env,
        check=False,
    )
    skipped = [text for text in imported.stderr.splitlines() if text.startswith("skipped")]
    assert imported.returncode == (3 if skipped else 0) and all("not a part the model can judge" in t for t in skipped)
    recorded = 20 - len(skipped)  # what the model's guard calls not a part is left out, named
    # the line test set is evaluate's (later stages follow as above); a release gate the figures miss stops the run there
    gate = "evaluate.gate.max_false_reject_rate_upper95=0.05"
    with_line = run(["dvc", "exp", "run", "-S", gate, "evaluate"], repo, env, check=False)
    assert ran_stages(with_line.stdout) == ["prepare", "train", "paint", "anomaly", "departures", "evaluate"]  # retrained
    assert with_line.returncode != 0  # 8 good test parts cannot bound the false-reject rate below 5 %
    errors = [line for line in with_line.stderr.splitlines() if line.startswith("evaluate: error: release gate")]
    assert len(errors) == 1 and "false_reject_rate_upper95" in errors[0], with_line.stderr
    assert json.loads((repo / "metrics/test.json").read_text())["false_reject_rate_upper95"] > 0.05  # written first
    line = json.loads((repo / "metrics/data.json").read_text())["line"]
    assert recorded >= 15 and line["photos"] == recorded and line["line_test"] > 0
    assert line["train"] + line["val"] + line["line_test"] + line["dropped"] == recorded  # dropped: near copies of official ones
    line_test = json.loads((repo / "metrics/test.json").read_text())["line_test"]
    assert line_test["photos"] == line["line_test"] and "accuracy" in line_test
    manifest = pd.read_csv(repo / "data/prepared/manifest.csv", keep_default_na=False)
    used = manifest[(manifest["source"] == "line") & (manifest["status"] == "ok")]
    assert set(used["split"]) <= {"train", "val", "line_test"}  # never the official test split


def test_missing_archive_gives_one_line(project_copy, tmp_path):
    env = project_env(CASTING_ARCHIVE=str(tmp_path / "nowhere.zip"))
    result = run(["dvc", "repro", "download"], project_copy, env, check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("download: error:")]
    assert len(errors) == 1 and "nowhere.zip" in errors[0] and "no such file" in errors[0]
    assert "Traceback" not in result.stderr
