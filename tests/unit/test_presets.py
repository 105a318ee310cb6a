"""Presets become `dvc exp run` commands over params that exist; the baselines and the seed VGG build and run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ruamel.yaml import YAML

from casting_inspection.core.errors import InspectionError
from casting_inspection.core.params import Params, _convert
from casting_inspection.evaluation.explain import gradcam
from casting_inspection.modeling.networks import InspectionNet, ModelConfig
from casting_inspection.team.presets import PRESETS_DIR, command, load
from casting_inspection.team.search import load_search, read_curve, search_spec
from helpers import PROJECT

PRESETS = sorted(p.stem for p in (PROJECT / PRESETS_DIR).glob("*.yaml"))


def with_override(data: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    for key in path:
        data = data[key]
    assert last in data, f"{dotted} is not a param in params.yaml"
    data[last] = value


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_sets_params_that_exist_to_valid_values(name):
    preset = load(name, PROJECT / PRESETS_DIR)
    data = YAML(typ="safe").load((PROJECT / "params.yaml").read_text())
    points = [dict(preset.get("set") or {})]
    for key, values in (preset.get("sweep") or {}).items():
        points = [point | {key: value} for point in points for value in values]
    if "search" in preset:  # both ends of every range, and every choice
        for dim in load_search(name, PROJECT / PRESETS_DIR).space:
            ends = dim.choices or ((int(dim.low), int(dim.high)) if dim.integer else (dim.low, dim.high))
            points = [point | {dim.key: value} for point in points for value in ends]
    for point in points:
        for key, value in point.items():
            with_override(data, key, value)
        _convert(Params, data, "")  # the same validation the stages apply


def test_commands_name_a_run_and_queue_a_sweep():
    run = command("vgg224", {"set": {"train.lr": 1.0e-4, "train.augment.flip": False, "prepare.color_mode": "RGB"}}, queue=False)
    assert run == [
        "dvc",
        "exp",
        "run",
        "-S",
        "train.lr=0.0001",
        "-S",
        "train.augment.flip=false",
        "-S",
        "prepare.color_mode=RGB",
        "-n",
        "vgg224",
    ]
    sweep = command("search", {"sweep": {"train.lr": [0.001, 0.01], "train.cnn.widths": [[8, 16], [16, 32]]}}, queue=False)
    assert sweep == ["dvc", "exp", "run", "-S", "train.lr=0.001,0.01", "-S", "train.cnn.widths=[8,16],[16,32]", "--queue"]


@pytest.mark.parametrize("model", ["logreg", "mlp", "vgg_seed"])
def test_published_baselines_build_and_give_one_logit_per_image(model):
    config = ModelConfig(model, 1, 32, "imagenet", [0.5], [0.2], {}, [16, 8])
    net = InspectionNet(config).eval()
    images = torch.randint(0, 255, (3, 1, 32, 32), dtype=torch.uint8)
    assert net(images.float() / 255).shape == (3,)
    heat = gradcam(net, images, np.array([1, 0, 1]))
    assert heat.shape == (3, 32, 32) and (heat.max() == 0) == (model != "vgg_seed")  # no map without convolutions


def test_a_search_preset_is_refused_as_a_single_run_and_a_bad_space_is_named():
    with pytest.raises(InspectionError, match="make search PRESET=cnn-search"):
        command("cnn-search", load("cnn-search", PROJECT / PRESETS_DIR), queue=False)
    good = {
        "objective": "metrics/train.json:val_loss",
        "curve": "c.tsv",
        "stage": "train",
        "space": {"train.lr": {"low": 1, "high": 2}},
    }
    spec = search_spec({"search": good}, "p.yaml")
    assert spec.metrics_file.name == "train.json" and spec.metric == "val_loss" and spec.space[0].low == 1.0
    for bad, message in (
        ({"space": {"train.lr": {"low": 2, "high": 1}}}, r"search.space.train.lr: low and high"),
        ({"space": {"train.lr": {"low": 0, "high": 1, "log": True}}}, "a log range must start above 0"),
        ({"space": {"train.lr": {"choices": []}}}, "choices: a non-empty list"),
        ({"space": {}}, "non-empty `space:`"),
        ({"objective": "val_loss"}, "search.objective must be FILE:KEY"),
        ({"stage": ""}, "search.stage is missing"),
    ):
        with pytest.raises(InspectionError, match=message):
            search_spec({"search": good | bad}, "p.yaml")


def test_the_validation_curve_is_read_as_dvclive_writes_it_even_mid_write(tmp_path):
    curve = tmp_path / "loss.tsv"
    assert read_curve(curve) == []  # not written yet
    curve.write_text("step\tloss\n0\t0.5\n1\t0.25\n2\t0.")
    assert read_curve(curve) == [0.5, 0.25]
    curve.write_text("step\tloss\n0\t0.5\n1\t")
    assert read_curve(curve) == [0.5]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("search: [\n", "not readable YAML (line 2); fix the file"),
        ("- a list\n", "a preset is a mapping"),
        ("set: [a, b]\n", "'set:' must be a mapping of params to values"),
        ("sweep:\n  train.lr: 0.01\n", "sweep.train.lr must be a non-empty list of values"),
    ],
    ids=["unclosed", "a-list", "set-a-list", "sweep-a-scalar"],
)
def test_a_preset_file_that_cannot_be_used_is_one_line_naming_it(tmp_path, text, needle):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(InspectionError) as refused:
        load("bad", tmp_path) if "search" not in text else load_search("bad", tmp_path)
    assert str(refused.value).startswith(str(tmp_path / "bad.yaml")) and needle in str(refused.value)


@pytest.mark.parametrize(
    ("block", "needle"),
    [("pruning: 5", "search.pruning must be a mapping"), ("trials: many", "search's trials must be a whole number")],
)
def test_a_search_block_with_a_setting_of_the_wrong_kind_is_one_line(tmp_path, block, needle):
    preset = YAML(typ="safe").load((PROJECT / PRESETS_DIR / "cnn-search.yaml").read_text())
    preset["search"].update(YAML(typ="safe").load(block))
    with pytest.raises(InspectionError, match=needle):
        search_spec(preset, "presets/x.yaml")


def test_an_override_of_a_swept_param_is_refused_not_dropped():
    preset = {"sweep": {"train.lr": [0.01, 0.02]}}
    with pytest.raises(InspectionError, match="-S train.lr=0.5: sw sweeps that param"):
        command("sw", preset, False, ["train.lr=0.5"])
    assert "train.epochs=3" in command("sw", preset, False, ["train.epochs=3"])
