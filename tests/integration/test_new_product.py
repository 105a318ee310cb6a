"""A new product with good photos only, end to end: the real `dvc` CLI on a generated archive without a single defect
photo, then `casting-inspect predict` on the exported model (a file of its own: the test runs beside the main pipeline
test, in the other test process)."""

from __future__ import annotations

import copy
import io
import json
import sys

import numpy as np
import onnx
import pandas as pd
import pytest

from helpers import FAST_PARAMS, kaggle_files, merge, project_env, run, write_params, write_zip

pytestmark = pytest.mark.slow  # real processes, servers, browsers or dvc runs: skipped by `pytest -m "not slow"`


def test_a_product_with_good_photos_only(project_copy, tmp_path):
    """A new casting: not one defect photo. The classifier cannot learn and says how to go on; with
    train.classifier=false the model of good parts decides alone, through the same files and rule, its threshold,
    review band and guard chosen on good photos, and evaluate reports what good photos alone can tell."""
    files = {name: data for name, data in kaggle_files().items() if "/def_front/" not in name}
    repo, env = project_copy, project_env(CASTING_ARCHIVE=str(write_zip(tmp_path / "good.zip", files)))
    refused = run(["dvc", "repro", "train"], repo, env, check=False)
    errors = [line for line in refused.stderr.splitlines() if line.startswith("train: error:")]
    assert refused.returncode != 0 and len(errors) == 1 and "set train.classifier: false" in errors[0], refused.stderr
    override = {"train": {"classifier": False}, "evaluate": {"review_share": 0.34}}
    write_params(repo / "params.yaml", merge(copy.deepcopy(FAST_PARAMS), override))
    run(["dvc", "repro"], repo, env)
    trained = json.loads((repo / "metrics/train.json").read_text())
    assert trained["classifier"] is False and sum(trained["good_photos"].values()) == 23  # 24, less the leaked copy
    point = json.loads((repo / "models/operating_point.json").read_text())
    low, high = point["review_band"]  # two of the six validation parts
    assert point["threshold"] == point["anomaly_threshold"] == high and point["temperature"] == 1.0 and low < high
    assert trained["good_photos"]["val"] == 6 and point["guard"]["novelty_threshold"] > 0  # one class: good parts
    test = json.loads((repo / "metrics/test.json").read_text())
    assert test["anomaly"]["defects"] == test["defects"] == 0 and test["roc_auc"] is None and test["combined"]["photos"] == 9
    assert test["expected_cost_per_1000"]["line_defect_rate"] is None  # no escape rate without a defect photo
    assert not (repo / "plots/evaluate/plots/custom/roc.json").exists()
    assert test["not_a_part"]["material"]["decided_ok"] == 0  # what is not a part is never shipped
    model = onnx.load(str(repo / "models/model.onnx"))
    assert [o.name for o in model.graph.output] == ["defect_probability", "novelty", "anomaly", "anomaly_map"]
    assert {p.key: p.value for p in model.metadata_props}["classifier"] == "false"
    export = json.loads((repo / "metrics/export.json").read_text())
    assert export["onnx_anomaly_flips"] == export["onnx_guard_flips"] == export["onnx_outcome_flips"] == 0
    table = pd.read_csv(repo / "plots/evaluate/predictions.csv", keep_default_na=False)
    shipped = run([sys.executable, "-m", "casting_inspection.serving.cli", "predict", "data/raw/test"], repo, env)
    rows = pd.read_csv(io.StringIO(shipped.stdout))
    assert np.allclose(rows["defect_probability"], rows["anomaly"], atol=1e-4)  # one score, shipped twice
    decided = {path.split("/", 2)[-1]: decision for path, decision in zip(rows["path"], rows["decision"])}
    assert decided == dict(zip(table["path"], table["decision"]))
