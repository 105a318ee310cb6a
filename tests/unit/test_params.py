"""params.yaml is validated into typed sections, with one-line errors that name the key."""

from __future__ import annotations

import subprocess
import sys

import pytest

from casting_inspection.core.errors import InspectionError
from casting_inspection.core.params import TrainParams, load_params, load_section
from helpers import PROJECT, project_env, write_params


def test_project_params_are_valid():
    params = load_params(PROJECT / "params.yaml")
    assert isinstance(params.train, TrainParams)
    assert params.train.lr > 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"train": {"lr": "fast"}}, "train.lr must be a finite number, got 'fast'"),
        ({"train": {"lr": float("inf")}}, "train.lr must be a finite number, got inf"),
        ({"download": {"timeout_s": float("inf")}}, "download.timeout_s must be a finite number"),
        ({"evaluate": {"cost_missed_defect": float("nan")}}, "evaluate.cost_missed_defect must be a finite number"),
        ({"train": {"seed": -1}}, "train.seed must be between 0 and 4294967295"),
        ({"prepare": {"allowed_formats": ["JPEG", "EPS"]}}, "prepare.allowed_formats[1] must be one of ['JPEG', 'PNG', 'BMP']"),
        ({"train": {"lr": -1.0}}, "train.lr must be > 0"),
        (
            {"train": {"model": "vgg99"}},
            "train.model must be one of ['cnn', 'resnet18', 'efficientnet_lite0', 'vgg_seed', 'mlp', 'logreg'], got 'vgg99'",
        ),
        ({"train": {"epochs": 2.5}}, "train.epochs must be an integer"),
        ({"train": {"cnn": {"widths": []}}}, "train.cnn.widths must be a non-empty list"),
        ({"train": {"augment": {"flip": "yes"}}}, "train.augment.flip must be true or false"),
        ({"prepare": {"val_fraction": 1.5}}, "prepare.val_fraction must be between 0 and 1"),
        ({"prepare": {"duplicates": "ignore"}}, "prepare.duplicates must be one of ['drop', 'report']"),
        ({"download": {"dataset": "no-slash"}}, "download.dataset must look like 'owner/slug'"),
        ({"prepare": {"seed": 2**32}}, "prepare.seed must be between 0 and 4294967295 (a 32-bit seed)"),
        ({"prepare": {"allowed_modes": ["L", "I;16"]}}, "prepare.allowed_modes[1] must be one of"),
        (
            {"prepare": {"near_duplicates": {"hash_size": 8, "max_distance": 64}}},
            "prepare.near_duplicates.max_distance must be under the hash's 64 bits (hash_size 8), got 64",
        ),
        ({"evaluate": {"painted_bands": [40, 20]}}, "evaluate.painted_bands must be rising grey levels in 1-254"),
        ({"evaluate": {"painted_bands": [20, 255]}}, "evaluate.painted_bands must be rising grey levels in 1-254"),
        (
            {"anomaly": {"window": 0.022}},
            "anomaly.window 0.022 holds no cell of the 32 x 32 map: nothing would be judged; set it to at least 0.023",
        ),
        ({"anomaly": {"flaws": {"size": [2.0, 1.0e6]}}}, "anomaly.flaws.size must be [low, high] with 0 < low <= high <= 512"),
        (
            {"robustness": {k: [] for k in ("brightness", "contrast", "rotation", "shift", "blur", "jpeg")}},
            "robustness lists no line change",
        ),
    ],
)
def test_invalid_values_name_the_key(tmp_path, override, message):
    path = tmp_path / "params.yaml"
    write_params(path, override)
    section = next(iter(override))
    with pytest.raises(InspectionError) as caught:
        load_section(section, path)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("input_size", "window"), [(128, 0.023), (132, 0.001), (100, 0.001)])
def test_a_window_that_holds_the_maps_centre_cell_is_accepted(tmp_path, input_size, window):
    """An odd grid (132 or 100 pixels at stride 4: 33 or 25 cells) has a cell at the centre, so any window holds it;
    an even one (128: 32 cells) needs a window that reaches the four cells nearest the centre (0.0221)."""
    write_params(tmp_path / "params.yaml", {"anomaly": {"input_size": input_size, "window": window}})
    assert load_section("anomaly", tmp_path / "params.yaml").window == window


def test_unknown_key(tmp_path):
    path = tmp_path / "params.yaml"
    write_params(path, {"train": {"lerning_rate": 0.1}})
    with pytest.raises(InspectionError, match="unknown key train.lerning_rate"):
        load_section("train", path)


def test_missing_key(tmp_path):
    path = tmp_path / "params.yaml"
    write_params(path, {})
    path.write_text(path.read_text().replace("  patience:", "  # patience:"))
    with pytest.raises(InspectionError, match="train.patience is missing"):
        load_section("train", path)


def test_yaml_1_2_floats_written_by_dvc_exp_run(tmp_path):
    path = tmp_path / "params.yaml"
    write_params(path, {})
    path.write_text(path.read_text().replace("lr: 3.0e-3", "lr: 1e-05"))
    assert load_section("train", path).lr == pytest.approx(1e-5)


def test_a_stage_reads_only_its_own_section(tmp_path):
    path = tmp_path / "params.yaml"
    write_params(path, {"train": {"lr": "broken"}})
    assert load_section("prepare", path).image_size > 0


def test_stage_reports_bad_param_in_one_line(tmp_path):
    write_params(tmp_path / "params.yaml", {"prepare": {"image_size": 4}})
    result = subprocess.run(
        [
            sys.executable,
            str(PROJECT / "stages/prepare.py"),
            "--raw",
            "raw",
            "--out",
            "out",
            "--metrics",
            "m.json",
            "--drift-reference",
            "d.json",
        ],
        cwd=tmp_path,
        env=project_env(PYTHONPATH=str(PROJECT / "src")),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "prepare: error: params.yaml: prepare.image_size must be between 16 and 1024, got 4"
    assert not (tmp_path / "out").exists()
