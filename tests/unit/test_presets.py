"""Presets become `dvc exp run` commands over params that exist; the baselines and the seed VGG build and run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ruamel.yaml import YAML

from casting_inspection.core.params import Params, _convert
from casting_inspection.evaluation.explain import gradcam
from casting_inspection.modeling.networks import InspectionNet, ModelConfig
from casting_inspection.team.presets import PRESETS_DIR, command, load
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
