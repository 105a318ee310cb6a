"""Shared test data: small generated photos of a 'part' (a disc on a plain background), never the real data set."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from ruamel.yaml import YAML

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT / "src"))

# Small, fast settings for pipeline tests; everything else comes from the real params.yaml.
FAST_PARAMS = {
    "prepare": {"image_size": 32, "min_side": 16, "val_fraction": 0.25},
    "train": {
        "cnn": {"widths": [8, 16], "convs_per_block": 1, "stem_stride": 1, "dropout": 0.0},
        "epochs": 3,
        "batch_size": 16,
        "lr": 3.0e-3,
    },
    "evaluate": {"batch_size": 32},
    "robustness": {"batch_size": 32},
    "export": {"batch_size": 32},
}


def part_image(defective: bool, seed: int, size: int = 64) -> Image.Image:
    """A gray disc with a hub; a defective one has a dark notch on its rim."""
    rng = np.random.default_rng(seed)
    background = rng.normal(200, 6, (size, size)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(background, "L")
    draw = ImageDraw.Draw(image)
    c = size / 2 + rng.uniform(-2, 2)
    r = size * 0.38
    draw.ellipse([c - r, c - r, c + r, c + r], fill=int(rng.integers(95, 115)))
    draw.ellipse([c - r / 3, c - r / 3, c + r / 3, c + r / 3], fill=50)
    if defective:
        angle = rng.uniform(0, 2 * np.pi)
        x, y = c + 0.8 * r * np.cos(angle), c + 0.8 * r * np.sin(angle)
        draw.ellipse([x - size / 12, y - size / 12, x + size / 12, y + size / 12], fill=20)
    return image


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def kaggle_files(n_train: int = 24, n_test: int = 8) -> dict[str, bytes]:
    """Archive member name -> bytes, in the Kaggle layout, with one test image leaked from train."""
    files = {}
    seed = 0
    for split, n in (("train", n_train), ("test", n_test)):
        for label, short in (("def_front", "def"), ("ok_front", "ok")):
            for i in range(n):
                seed += 1
                name = f"casting_data/casting_data/{split}/{label}/cast_{short}_0_{i}.jpeg"
                files[name] = jpeg_bytes(part_image(label == "def_front", seed))
    files["casting_data/casting_data/test/ok_front/cast_ok_0_leak.jpeg"] = files[
        "casting_data/casting_data/train/ok_front/cast_ok_0_0.jpeg"
    ]
    files["casting_512x512/casting_512x512/def_front/cast_def_0_0.jpeg"] = jpeg_bytes(part_image(True, 999))
    return files


def write_raw(raw: Path, **sizes: int) -> Path:
    """The generated photos unpacked as the download stage leaves them: raw/{train,test}/{def_front,ok_front}/."""
    for name, data in kaggle_files(**sizes).items():
        if name.startswith("casting_data/"):
            path = raw / name.removeprefix("casting_data/casting_data/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return raw


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


@pytest.fixture(scope="session")
def kaggle_zip(tmp_path_factory) -> Path:
    return write_zip(tmp_path_factory.mktemp("archive") / "casting.zip", kaggle_files())


def merge(base: dict, override: dict) -> dict:
    for key, value in override.items():
        if isinstance(value, dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def write_params(path: Path, override: dict) -> None:
    yaml = YAML()
    data = yaml.load((PROJECT / "params.yaml").read_text())
    merge(data, override)
    with open(path, "w") as f:
        yaml.dump(data, f)


def project_env(**extra: str) -> dict[str, str]:
    """The environment of a stage: this interpreter's `python` and `dvc` first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("CASTING_ARCHIVE", None)
    env["DVC_NO_ANALYTICS"] = "1"
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env or project_env(), capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def project_copy(tmp_path) -> Path:
    """The project's pipeline (dvc.yaml, stages, src) in a fresh git + DVC repository, with fast params."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "stages", "src", ".gitignore", "data/line"):
        source = PROJECT / name
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(source, repo / name)
    write_params(repo / "params.yaml", FAST_PARAMS)
    run(["git", "init", "-q", "-b", "main"], repo)
    run(["git", "config", "user.email", "test@example.com"], repo)
    run(["git", "config", "user.name", "test"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["dvc", "config", "core.autostage", "true"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "init"], repo)
    return repo


def fast_section(section: str, folder: Path):
    """A params section from the real params.yaml with FAST_PARAMS laid over it, as its typed dataclass."""
    from casting_inspection.core.params import load_section

    path = folder / "params.yaml"
    write_params(path, FAST_PARAMS)
    return load_section(section, path)


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory) -> dict:
    """A small model trained on generated parts and exported as the pipeline does, with a review band.
    Returns its paths and the raw photos it can be tried on."""
    import json

    from casting_inspection.data.dataset import load_split
    from casting_inspection.data.prepare import prepare_dataset
    from casting_inspection.deploy.export import export_onnx
    from casting_inspection.evaluation.guard import fit_guard, save_guard
    from casting_inspection.modeling.augmentation import build_augmentation
    from casting_inspection.modeling.checkpoint import load_checkpoint
    from casting_inspection.modeling.training import train_model

    root = tmp_path_factory.mktemp("model")
    raw = root / "raw"
    write_raw(raw, n_train=16, n_test=6)
    prepared = root / "prepared"
    prepare_dataset(fast_section("prepare", root), raw, prepared, root / "data.json", root / "drift.json", workers=1)
    train_model(fast_section("train", root), prepared, root / "model.safetensors", root / "train.json", root / "live")
    model, _ = load_checkpoint(root / "model.safetensors")
    train, val = load_split(prepared, "train"), load_split(prepared, "val")
    augment = build_augmentation(True, True, 180.0, 0.08, 0.0, 0.4, 0.3, 1.0)
    rules, tensors = fit_guard(model, train, val, fast_section("evaluate", root).guard, 64, augment, 4)
    rules["novelty_threshold"] *= 3  # 8 validation photos set it at their maximum: a margin keeps generated parts decided
    save_guard(root / "guard.safetensors", tensors)
    operating_point = {"threshold": 0.5, "temperature": 1.0, "review_band": [0.4, 0.6], "guard": rules}
    (root / "operating_point.json").write_text(json.dumps(operating_point))
    export_onnx(
        fast_section("export", root),
        root / "model.safetensors",
        root / "operating_point.json",
        root / "drift.json",
        prepared,
        root / "model.onnx",
        root / "model.int8.onnx",
        root / "export.json",
        root / "guard.safetensors",
    )
    return {
        "onnx": root / "model.onnx",
        "int8": root / "model.int8.onnx",
        "raw": raw,
        "export": root / "export.json",
        "prepared": prepared,
    }
