"""Training under torchrun with DistributedDataParallel: 2 gloo processes on the CPU, outputs written once."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pandas as pd
import pytest

from casting_inspection.core.errors import InspectionError
from casting_inspection.data.prepare import prepare_dataset
from casting_inspection.modeling.checkpoint import load_checkpoint
from casting_inspection.modeling.training import train_model
from helpers import FAST_PARAMS, PROJECT, fast_section, project_env, write_params, write_raw

pytestmark = pytest.mark.slow  # real processes, servers, browsers or dvc runs: skipped by `pytest -m "not slow"`


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    raw = write_raw(root / "raw", n_train=40)
    prepare_dataset(fast_section("prepare", root), raw, root / "prepared", root / "data.json", root / "drift.json", workers=1)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_train_one_model_and_write_it_once(workdir):
    write_params(workdir / "params.yaml", FAST_PARAMS | {"train": FAST_PARAMS["train"] | {"distributed": True, "epochs": 4}})
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(PROJECT / "stages/train.py"),
        "--data",
        "prepared",
        "--checkpoint",
        "model.safetensors",
        "--metrics",
        "train.json",
        "--live",
        "live",
    ]
    result = subprocess.run(
        cmd,
        cwd=workdir,
        env=project_env(PYTHONPATH=str(PROJECT / "src"), OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "x 2 processes" in result.stdout
    assert result.stdout.count("epoch   1/4") == 1 and result.stdout.count("train: done in") == 1  # logged once per job
    loss = pd.read_csv(workdir / "live/plots/metrics/train/loss.tsv", sep="\t")
    assert len(loss) == 4  # one dvclive row per epoch, not one per process
    assert loss["loss"].iloc[-1] < loss["loss"].iloc[0]  # it learned
    summary = json.loads((workdir / "train.json").read_text())
    assert summary["val_accuracy"] >= 0.75 and summary["epochs_run"] == 4
    model, checkpoint = load_checkpoint(workdir / "model.safetensors")
    assert checkpoint["train_params"]["distributed"] is True


def test_distributed_without_torchrun_says_how_to_launch(workdir, tmp_path):
    write_params(tmp_path / "params.yaml", FAST_PARAMS | {"train": FAST_PARAMS["train"] | {"distributed": True}})
    from casting_inspection.core.params import load_section

    with pytest.raises(InspectionError, match=r"launch with `torchrun --nproc_per_node N stages/train.py"):
        train_model(
            load_section("train", tmp_path / "params.yaml"),
            workdir / "prepared",
            tmp_path / "m.pt",
            tmp_path / "t.json",
            tmp_path / "live",
        )
    assert not (tmp_path / "m.pt").exists()
