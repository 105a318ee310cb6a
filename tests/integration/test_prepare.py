"""prepare: bad files are rejected with reasons while the rest flow through; duplicates, leakage and the split."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from casting_inspection.core.errors import InspectionError
from casting_inspection.core.params import load_section
from casting_inspection.data.prepare import prepare_dataset
from helpers import FAST_PARAMS, PROJECT, jpeg_bytes, kaggle_files, part_image

PARAMS = dataclasses.replace(load_section("prepare", PROJECT / "params.yaml"), **FAST_PARAMS["prepare"])
BAD_FILES = {
    "train/def_front/empty.jpeg": b"",
    "train/ok_front/notes.jpeg": b"not an image at all",
}


@pytest.fixture
def raw_dir(tmp_path):
    root = tmp_path / "raw"
    for name, data in kaggle_files().items():
        if name.startswith("casting_data/"):
            path = root / name.removeprefix("casting_data/casting_data/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    for name, data in BAD_FILES.items():
        (root / name).write_bytes(data)
    return root


def run_prepare(raw_dir, tmp_path, line_dir=None, **changes):
    params = dataclasses.replace(PARAMS, **changes)
    out, metrics = tmp_path / "prepared", tmp_path / "data.json"
    summary = prepare_dataset(params, raw_dir, out, metrics, tmp_path / "drift.json", workers=1, line_dir=line_dir)
    return summary, pd.read_csv(out / "manifest.csv", keep_default_na=False), out


def test_bad_files_rejected_good_ones_kept(raw_dir, tmp_path):
    summary, manifest, out = run_prepare(raw_dir, tmp_path)
    rejected = pd.read_csv(out / "rejected.csv").set_index("path")["reason"].to_dict()
    assert rejected == {
        "train/def_front/empty.jpeg": "empty file",
        "train/ok_front/notes.jpeg": "not an image in an accepted format (JPEG, PNG, BMP)",
    }
    assert summary["rejected"] == 2
    assert summary["train"]["total"] + summary["val"]["total"] == 2 * 24 - 1  # the leaked train copy is dropped
    assert summary["test"]["total"] == 17
    assert json.loads((tmp_path / "data.json").read_text()) == summary
    for split in ("train", "val", "test"):
        images = np.load(out / f"{split}.npy")
        rows = manifest[manifest["split"] == split]
        assert images.shape == (len(rows), 1, 32, 32) and images.dtype == np.uint8
        assert sorted(rows["index"]) == list(range(len(rows)))
    from casting_inspection.data.dataset import load_split

    train = load_split(out, "train")  # the rejected files' empty sizes do not spoil the columns
    assert all(isinstance(w, int) and w > 0 for size in train.sizes for w in size)


def test_line_photos_join_training_never_the_official_test_split(raw_dir, tmp_path):
    """A plant's labelled photo goes to train, val or line_test; a copy of an official test photo, even with the
    other label, is dropped and does not remove the official photo; a photo named but missing is one reason."""
    from casting_inspection.data import line
    from casting_inspection.data.prepare import image_spec

    spec, line_dir = image_spec(PARAMS), tmp_path / "line"
    photos = [jpeg_bytes(part_image(i % 2 == 0, seed=900 + i)) for i in range(8)]
    official = (raw_dir / "test/ok_front").iterdir().__next__().read_bytes()
    verdicts = []
    for i, data in enumerate([*photos, official]):
        sha, image = line.add_photo(line_dir, data, spec)
        verdicts.append(line.Verdict(sha, image, "defective" if i % 2 == 0 else "ok", "qa", "import:plant"))
    line.append_verdicts(line_dir, verdicts)
    (line_dir / verdicts[1].image).unlink()  # named in labels.csv, gone from the folder
    summary, manifest, _ = run_prepare(raw_dir, tmp_path, line_dir=line_dir)
    rows = manifest[manifest["source"] == "line"].set_index("path")
    assert set(rows.loc[rows["status"] == "ok", "split"]) <= {"train", "val", "line_test"}
    assert rows.loc[f"line/{verdicts[-1].image}", "status"] == "dropped"  # a copy of an official photo
    assert rows.loc[f"line/{verdicts[1].image}", "reason"].startswith("cannot read")
    assert summary["test"]["total"] == 17 and summary["line"]["photos"] == 9


def test_leaked_copy_dropped_from_train_and_flagged_in_test(raw_dir, tmp_path):
    summary, manifest, _ = run_prepare(raw_dir, tmp_path)
    assert summary["leaked"] == {"test_images": 1, "train_copies": 1}
    leaked_train = manifest.set_index("path").loc["train/ok_front/cast_ok_0_0.jpeg"]
    assert leaked_train["status"] == "dropped" and leaked_train["split"] == ""
    assert "test/ok_front/cast_ok_0_leak.jpeg" in leaked_train["reason"]
    test_rows = manifest[manifest["split"] == "test"].set_index("path")
    assert test_rows.loc["test/ok_front/cast_ok_0_leak.jpeg", "leaked"] in (True, "True")


def test_report_policy_keeps_duplicates_on_one_side(raw_dir, tmp_path):
    copy = raw_dir / "train/def_front/cast_def_0_1.jpeg"
    (raw_dir / "train/def_front/copy_of_1.jpeg").write_bytes(copy.read_bytes())
    summary, manifest, _ = run_prepare(raw_dir, tmp_path, duplicates="report")
    assert summary["dropped"] == 0 and summary["duplicates"]["within_train"] == 1
    pair = manifest.set_index("path").loc[["train/def_front/cast_def_0_1.jpeg", "train/def_front/copy_of_1.jpeg"], "split"]
    assert pair.nunique() == 1  # a copy never straddles train and val


def test_split_is_stratified_and_seeded(raw_dir, tmp_path):
    _, first, _ = run_prepare(raw_dir, tmp_path)
    _, again, _ = run_prepare(raw_dir, tmp_path)
    _, other_seed, _ = run_prepare(raw_dir, tmp_path, seed=7)
    assert first["split"].tolist() == again["split"].tolist()
    assert first["split"].tolist() != other_seed["split"].tolist()
    val = first[first["split"] == "val"]
    assert abs((val["label"] == "def_front").mean() - 0.5) < 0.15


def test_output_is_replaced_atomically_and_not_left_half_written(raw_dir, tmp_path):
    run_prepare(raw_dir, tmp_path)
    for path in raw_dir.glob("test/*/*"):
        path.unlink()
    with pytest.raises(Exception, match="no usable images left for the test split"):
        run_prepare(raw_dir, tmp_path)
    assert len(np.load(tmp_path / "prepared/test.npy")) == 17  # the earlier output is intact
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_spawned_decoders_give_the_same_bytes_as_one_process(raw_dir, tmp_path, monkeypatch):
    """The pool the real data set takes (spawned processes, never forked from a process whose threads run): the same
    files rejected, the same arrays, the same manifest as decoding in this process."""
    import casting_inspection.data.prepare as prepare

    outs = {}
    for workers in (1, 2):
        monkeypatch.setattr(prepare, "SMALL", 0 if workers == 2 else prepare.SMALL)  # the pool for these few files
        out = tmp_path / f"prepared-{workers}"
        prepare_dataset(PARAMS, raw_dir, out, tmp_path / f"data-{workers}.json", tmp_path / "drift.json", workers=workers)
        outs[workers] = {path.name: path.read_bytes() for path in sorted(out.iterdir())}
    assert outs[1] == outs[2] and "manifest.csv" in outs[1]
    assert (tmp_path / "data-1.json").read_text() == (tmp_path / "data-2.json").read_text()


def test_a_pipe_or_an_oversized_file_is_rejected_unread_and_the_rest_decided(raw_dir, tmp_path):
    """Read the one way every photo is read: a pipe would block for ever, a huge file would fill memory first."""
    os.mkfifo(raw_dir / "train/ok_front/pipe.jpeg")
    with open(raw_dir / "train/def_front/huge.jpeg", "wb") as f:
        f.truncate(PARAMS.max_file_bytes + 1)  # sparse: nothing written to the disk
    summary, _, out = run_prepare(raw_dir, tmp_path)
    assert summary["rejected"] == 4 and summary["test"]["total"] == 17
    rejected = pd.read_csv(out / "rejected.csv").set_index("path")["reason"].to_dict()
    assert rejected["train/ok_front/pipe.jpeg"] == "not a regular file (a pipe, socket or device)"
    assert rejected["train/def_front/huge.jpeg"].startswith(f"file too large: {PARAMS.max_file_bytes + 1} bytes")
    (raw_dir / "train/ok_front/batch2").mkdir()  # a folder where a photo is expected
    _, manifest, out = run_prepare(raw_dir, tmp_path)
    rows = manifest.set_index("path")
    assert rows.loc["train/ok_front/batch2", "reason"] == "a folder, not a photo"
    assert rows.loc["train/def_front/huge.jpeg", "size"] == PARAMS.max_file_bytes + 1  # named with its size, unread


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"val_fraction": 0.01}, "prepare.val_fraction=0.01 puts 1 of 47 distinct train photos in validation"),
        ({"val_fraction": 0.97}, "prepare.val_fraction=0.97 puts 46 of 47"),
        ({"allowed_formats": ["BMP"]}, "no usable images in the official train split"),
        ({"class_folders": False}, "no photos in {train,test}/{ok_front,def_front}/; run the download stage again"),
    ],
    ids=["val-too-small", "val-too-large", "all-rejected", "no-class-folders"],
)
def test_data_or_settings_no_split_can_come_from_are_one_line(raw_dir, tmp_path, change, needle):
    if change.pop("class_folders", True) is False:
        for folder in raw_dir.glob("*/*"):
            shutil.rmtree(folder)
    with pytest.raises(InspectionError) as refused:
        run_prepare(raw_dir, tmp_path, **change)
    assert needle in str(refused.value) and "\n" not in str(refused.value)
    assert not (tmp_path / "prepared").exists()


def test_a_line_photo_replaced_after_its_import_is_not_trained_on(raw_dir, tmp_path):
    from casting_inspection.data import line
    from casting_inspection.data.prepare import image_spec

    line_dir = tmp_path / "line"
    verdicts = []
    for i in range(2):
        sha, image = line.add_photo(line_dir, jpeg_bytes(part_image(False, seed=950 + i)), image_spec(PARAMS))
        verdicts.append(line.Verdict(sha, image, "ok", "qa", "import:plant"))
    line.append_verdicts(line_dir, verdicts)
    (line_dir / verdicts[0].image).write_bytes(jpeg_bytes(part_image(True, seed=990)))  # a defect under a good verdict
    _, manifest, _ = run_prepare(raw_dir, tmp_path, line_dir=line_dir)
    rows = manifest.set_index("path")
    assert rows.loc[f"line/{verdicts[0].image}", "status"] == "rejected"
    assert "not the photo imported under this name" in rows.loc[f"line/{verdicts[0].image}", "reason"]
    assert rows.loc[f"line/{verdicts[1].image}", "status"] == "ok"


def test_an_unreadable_class_or_line_folder_is_said_never_taken_for_an_empty_one(raw_dir, tmp_path):
    script = f"""
import dataclasses, sys
from pathlib import Path
from casting_inspection.core.errors import InspectionError
from casting_inspection.core.params import load_section
from casting_inspection.data.prepare import prepare_dataset
params = dataclasses.replace(load_section("prepare", Path({str(PROJECT / "params.yaml")!r})), image_size=32, min_side=16)
out = Path(sys.argv[1])
try:
    prepare_dataset(params, Path(sys.argv[2]), out / "out", out / "data.json", out / "drift.json", 1, Path(sys.argv[3]))
except InspectionError as exc:
    sys.exit(str(exc))
"""
    as_user = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"] if os.geteuid() == 0 else []
    env = {**os.environ, "PYTHONPATH": str(PROJECT / "src")}
    line_dir = tmp_path / "line"
    line_dir.mkdir()
    for folder in (raw_dir / "train/def_front", line_dir):
        folder.chmod(0)
        try:
            command = [*as_user, sys.executable, "-c", script, str(tmp_path), str(raw_dir), str(line_dir)]
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        finally:
            folder.chmod(0o755)
        assert result.returncode == 1 and result.stderr == f"{folder}: cannot read (Permission denied); fix its permissions\n"
