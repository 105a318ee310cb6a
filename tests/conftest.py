"""Fixtures shared by the unit and integration tests (the helpers they use are in helpers.py)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from filelock import FileLock

from helpers import fast_section, kaggle_files, new_project, project_env, run, write_raw, write_zip

# `make test` runs two test processes on two cores: torch's idle threads sleep instead of spinning, so the
# processes (and the stages they start, which inherit this) do not steal each other's cores while they wait.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The files that run whole pipelines go first. `make test` hands whole files to two processes in collection order
# (`--dist loadfile --no-loadscope-reorder`): a two-minute file handed out last would leave one process alone at
# the end while the other waits.
# A process takes its next file once two or fewer of its tests wait. So the pipeline file (two tests) takes the third
# at once, the new product's, while the other process runs the station's, the watcher's and then the search's, whose
# repository the pipeline file's first `dvc repro` (`reproduced_project`, about a minute) has built by then.
LONGEST_FIRST = ("test_pipeline.py", "test_station.py", "test_new_product.py", "test_watch.py", "test_search.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: within a file, and among the other files, the order stays as collected


@pytest.fixture(scope="session")
def kaggle_zip(tmp_path_factory) -> Path:
    return write_zip(tmp_path_factory.mktemp("archive") / "casting.zip", kaggle_files())


@pytest.fixture
def project_copy(tmp_path) -> Path:
    """The project's pipeline (dvc.yaml, stages, src) in a fresh git + DVC repository, with fast params."""
    return new_project(tmp_path / "repo")


def built_once(tmp_path_factory, name: str, build) -> dict:
    """`build(folder)`'s result (plain JSON values), built once per run: the test processes share it, the first to
    need it builds it while the others wait."""
    if "PYTEST_XDIST_WORKER" not in os.environ:  # one process
        return build(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent / f"{name}.json"
    with FileLock(f"{shared}.lock"):
        if not shared.is_file():
            shared.write_text(json.dumps(build(tmp_path_factory.mktemp(name))))
        return json.loads(shared.read_text())


@pytest.fixture(scope="session")
def reproduced_project(tmp_path_factory, kaggle_zip) -> tuple[Path, str]:
    """The project's pipeline after one `dvc repro` on the generated archive, and what that run printed. Built once
    per run (`built_once`); a test that changes it works on a copy (`copy_project`)."""
    built = built_once(tmp_path_factory, "reproduced-project", lambda root: build_reproduced_project(root, kaggle_zip))
    return Path(built["repo"]), built["output"]


def build_reproduced_project(root: Path, archive: Path) -> dict:
    repo = new_project(root / "repo")
    return {"repo": str(repo), "output": run(["dvc", "repro"], repo, project_env(CASTING_ARCHIVE=str(archive))).stdout}


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory) -> dict:
    """A small model trained on generated parts and exported as the pipeline does, with a review band.
    Returns its paths and the raw photos it can be tried on. Built once per run, shared by the test processes (every
    test only reads it; `built_once`)."""
    built = built_once(
        tmp_path_factory, "exported-model", lambda root: {k: str(v) for k, v in build_exported_model(root).items()}
    )
    return {name: Path(path) for name, path in built.items()}


def build_exported_model(root: Path) -> dict:
    """Prepare, train, fit the guard and the model of good parts, and export, in `root`; the paths by name."""
    from safetensors import safe_open

    from casting_inspection.data.dataset import load_split
    from casting_inspection.data.prepare import prepare_dataset
    from casting_inspection.evaluation.anomaly import fit_anomaly
    from casting_inspection.evaluation.guard import fit_guard, save_guard
    from casting_inspection.evaluation.model_files import ModelFiles
    from casting_inspection.evaluation.painted import paint_validation
    from casting_inspection.export.onnx import export_onnx
    from casting_inspection.modeling.augmentation import augmentation_from, augmented_copies
    from casting_inspection.modeling.checkpoint import load_checkpoint
    from casting_inspection.modeling.patchcore import load_anomaly, save_patchcore
    from casting_inspection.modeling.training import train_model

    raw = root / "raw"
    write_raw(raw, n_train=16, n_test=6)
    prepared = root / "prepared"
    prepare_dataset(fast_section("prepare", root), raw, prepared, root / "data.json", root / "drift.json", workers=1)
    train_model(fast_section("train", root), prepared, root / "model.safetensors", root / "train.json", root / "live")
    model, _ = load_checkpoint(root / "model.safetensors")
    train, val = load_split(prepared, "train"), load_split(prepared, "val")
    augment = dataclasses.asdict(fast_section("train", root).augment)
    guard = fast_section("evaluate", root).guard
    moved = augmented_copies(train.images, augmentation_from(augment), 4, guard.seed)
    rules, tensors = fit_guard(model, train, moved, val, guard, 64)
    rules["novelty_threshold"] *= 3  # 8 validation photos set it at their maximum: a margin keeps generated parts decided
    save_guard(root / "guard.safetensors", tensors)
    section = fast_section("anomaly", root)
    paint_validation(section.painted, prepared, raw, root / "painted")
    anomaly = fit_anomaly(
        section, prepared, root / "painted", root / "anomaly.safetensors", root / "anomaly.json", root / "plots"
    )
    # the same margin's reason: few validation parts set it (the flaw finder's score is a probability: a quarter of
    # the way to 1; generated good parts score about 0.35 and the painted blot of the maps tests about 0.7)
    threshold = anomaly["threshold"]
    margin = threshold * 1.5 if section.method == "patchcore" else threshold + (1 - threshold) / 4
    fitted, _ = load_anomaly(root / "anomaly.safetensors")
    with safe_open(str(root / "anomaly.safetensors"), "pt") as handle:
        spec = json.loads(handle.metadata()["spec"])
    save_patchcore(root / "anomaly.safetensors", fitted, {**spec, "threshold": margin})
    operating_point = {
        "threshold": 0.5,
        "temperature": 1.0,
        "review_band": [0.4, 0.6],
        "guard": rules,
        "anomaly_threshold": margin,
    }
    (root / "operating_point.json").write_text(json.dumps(operating_point))
    export_onnx(
        fast_section("export", root),
        ModelFiles(
            root / "model.safetensors", root / "operating_point.json", root / "guard.safetensors", root / "anomaly.safetensors"
        ),
        drift_reference_path=root / "drift.json",
        prepared_dir=prepared,
        onnx_path=root / "model.onnx",
        int8_path=root / "model.int8.onnx",
        metrics_path=root / "export.json",
    )
    return {
        "onnx": root / "model.onnx",
        "int8": root / "model.int8.onnx",
        "raw": raw,
        "export": root / "export.json",
        "prepared": prepared,
    }
