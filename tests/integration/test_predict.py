"""`casting-inspect predict` on an exported model: rows for good files, reasons for bad ones, the exit status says which."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from casting_inspection.core.errors import InspectionError
from casting_inspection.data.images import load_image
from casting_inspection.serving.inference import Inspector

CLI = [sys.executable, "-m", "casting_inspection.serving.cli"]


def predict(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "predict", *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_folder_and_glob_give_one_row_per_image_with_the_models_decision(exported_model):
    test_dir = exported_model["raw"] / "test"
    result = predict(test_dir, "--model", exported_model["onnx"])
    assert result.returncode == 0, result.stderr
    rows = pd.read_csv(io.StringIO(result.stdout))
    assert list(rows.columns) == [
        "path",
        "decision",
        "defect_probability",
        "threshold",
        "model_version",
        "flag",
        "anomaly",
        "review_reason",
    ]
    assert len(rows) == len(list(test_dir.rglob("*.jpeg")))
    assert set(rows["decision"]) <= {"ok", "defective", "review"}  # generated parts: all judged
    inspector = Inspector(exported_model["onnx"])
    assert (rows["model_version"] == inspector.version).all() and (rows["threshold"] == 0.5).all()
    anomalous = rows["anomaly"] >= inspector.rule.anomaly_threshold  # the model of good parts rejects: defective
    assert (rows.loc[anomalous, "decision"] == "defective").all()
    band = (rows["defect_probability"] >= 0.4) & (rows["defect_probability"] < 0.6) & ~anomalous
    assert (rows.loc[band, "decision"] == "review").all() and not (rows.loc[~band, "decision"] == "review").any()
    reasons = rows["review_reason"].fillna("")
    assert reasons[band].str.startswith("defect probability ").all() and (reasons[~band] == "").all()

    pattern = str(test_dir / "def_front" / "*.jpeg")
    jsonl = predict(pattern, "--format", "jsonl", "--model", exported_model["onnx"])
    lines = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert len(lines) == len(list((test_dir / "def_front").glob("*.jpeg"))) and jsonl.returncode == 0


def test_same_probability_as_the_pipelines_preprocessing(exported_model):
    """One preprocessing path: the CLI's probability equals the model run on the prepare stage's array."""
    path = next((exported_model["raw"] / "test" / "def_front").glob("*.jpeg"))
    row = pd.read_csv(io.StringIO(predict(path, "--model", exported_model["onnx"]).stdout)).iloc[0]
    spec = Inspector(exported_model["onnx"]).spec
    prepared = json.loads((exported_model["prepared"] / "preprocessing.json").read_text())
    assert spec.__dict__ == prepared
    array, _ = load_image(path.read_bytes(), spec)
    session = ort.InferenceSession(str(exported_model["onnx"]), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"image": array[None].astype(np.float32) / 255})[0][0]
    assert row["defect_probability"] == pytest.approx(expected, abs=1e-6)


def test_bad_files_are_skipped_with_a_reason_and_the_exit_status_says_so(exported_model, tmp_path):
    good = next((exported_model["raw"] / "test" / "ok_front").glob("*.jpeg"))
    (tmp_path / "notes.jpeg").write_text("not a photo")
    (tmp_path / "empty.png").write_bytes(b"")
    out = tmp_path / "decisions.csv"
    result = predict(
        good,
        tmp_path / "notes.jpeg",
        tmp_path / "empty.png",
        tmp_path / "missing.jpeg",
        "--out",
        out,
        "--model",
        exported_model["onnx"],
    )
    assert result.returncode == 3
    assert len(pd.read_csv(out)) == 1 and result.stdout == ""
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 3
    assert any("notes.jpeg: not an image" in line for line in skipped)
    assert any("empty.png: empty file" in line for line in skipped)
    assert any("missing.jpeg: no such file or folder" in line for line in skipped)


def test_a_photos_file_name_never_decides_whether_it_is_read(exported_model, tmp_path):
    """A camera's `.jfif`, `.jpe` or suffixless photo in a folder is decided; a broken `.jpeg` is skipped with its
    reason; a file that is no photo (notes, an earlier output, a hidden file) is named as ignored, never decided."""
    good = next((exported_model["raw"] / "test" / "ok_front").glob("*.jpeg")).read_bytes()
    (tmp_path / "sub").mkdir()
    (tmp_path / "empty").mkdir()
    for name in ("photo", "photo.jfif", "sub/inner.jpe"):
        (tmp_path / name).write_bytes(good)
    (tmp_path / "cut.jpeg").write_bytes(good[:2])
    (tmp_path / "notes.txt").write_text("shift 2, camera 1")
    (tmp_path / ".hidden").write_bytes(b"\x00" * 64)
    photos = sorted(str(tmp_path / n) for n in ("photo", "photo.jfif", "sub/inner.jpe"))
    for given in ([tmp_path], [tmp_path / "*", tmp_path / "**"]):  # a folder; patterns that match folders too
        result = predict(*given, "--model", exported_model["onnx"])
        assert result.returncode == 3, result.stderr
        assert sorted(pd.read_csv(io.StringIO(result.stdout))["path"]) == photos  # each once
        lines = result.stderr.splitlines()
        assert [line.split(":")[0] for line in lines if line.startswith("skipped ")] == [f"skipped {tmp_path / 'cut.jpeg'}"]
        ignored = [line.split(":")[0] for line in lines if line.startswith("ignored ")]
        assert ignored == [f"ignored {tmp_path / '.hidden'}", f"ignored {tmp_path / 'notes.txt'}"]  # `**` holds the folder
        assert lines[-1].endswith("; 1 skipped; 2 ignored (no photo)")
    (tmp_path / "cut.jpeg").unlink()
    assert predict(tmp_path, "--model", exported_model["onnx"]).returncode == 0  # what is no photo is not a failure


def test_a_folder_or_pattern_with_no_photo_at_all_is_skipped_never_a_success(exported_model, tmp_path):
    """Pointed at the wrong folder, or at photos in a format no signature names, a run that decides nothing says so."""
    (tmp_path / "notes.txt").write_text("shift 2")
    (tmp_path / "IMG_1").write_bytes(b"")  # a camera's failed write: told as an empty file, not passed over
    result = predict(tmp_path, tmp_path / "*.txt", "--model", exported_model["onnx"])
    assert result.returncode == 3 and result.stdout.strip() == "path"
    skipped = sorted(line for line in result.stderr.splitlines() if line.startswith("skipped "))
    assert skipped == [f"skipped {tmp_path / '*.txt'}: pattern matches no photo", f"skipped {tmp_path / 'IMG_1'}: empty file"]
    (tmp_path / "IMG_1").unlink()
    result = predict(tmp_path, "--model", exported_model["onnx"])
    assert result.returncode == 3 and f"skipped {tmp_path}: folder holds no photo (1 file in it ignored)" in result.stderr


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda guard: guard.pop("novelty_threshold"), "no novelty threshold"),
        (lambda guard: guard.update(min_contrast=float("nan")), "min_contrast is not a number"),
        (lambda guard: guard.update(exposure=[0.9, 0.1]), "exposure range"),
        (lambda guard: guard["part"].pop("radius"), "part ranges"),
        (lambda guard: guard.update(max_seam="high"), "max_seam is not a number"),
        (lambda guard: guard.update(novelty_threshold="230"), "novelty threshold is not a number"),
    ],
)
def test_a_model_whose_photo_checks_are_missing_or_not_numbers_refuses_to_load(exported_model, tmp_path, change, problem):
    """A check that compares with NaN or with nothing lets every photo through: fail closed, at load."""
    import onnx

    model = onnx.load(str(exported_model["onnx"]))
    prop = next(prop for prop in model.metadata_props if prop.key == "guard")
    guard = json.loads(prop.value)
    change(guard)
    prop.value = json.dumps(guard)
    onnx.save(model, str(tmp_path / "broken.onnx"))
    with pytest.raises(InspectionError, match="cannot decide safely: .*" + problem):
        Inspector(tmp_path / "broken.onnx")


def test_missing_model_is_one_clear_line(tmp_path):
    result = predict(tmp_path, "--model", tmp_path / "nowhere.onnx")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"casting-inspect predict: error: {tmp_path / 'nowhere.onnx'}: no such model; run the pipeline (dvc repro) or pass --model"
    ]


def test_about_tells_where_the_model_came_from(exported_model):
    result = subprocess.run([*CLI, "about", "--model", str(exported_model["onnx"])], capture_output=True, text=True, timeout=60)
    info = json.loads(result.stdout)
    assert info["threshold"] == 0.5 and info["review_band"] == [0.4, 0.6] and info["input"]["image_size"] == 32
    assert len(info["source"]["checkpoint_md5"]) == 32 and info["source"]["train_params"]["lr"] > 0


def test_int8_model_decides_like_the_float_one(exported_model):
    export = json.loads(exported_model["export"].read_text())["int8"]
    assert export["bytes"] < export["float_bytes"] and 0 <= export["decision_agreement"] <= 1
    assert "images_per_s_batch64" not in export  # timings live in bench/, not in an output
    int8 = Inspector(exported_model["int8"])
    assert int8.threshold == 0.5 and int8.review_band == (0.4, 0.6)  # the metadata travels with it


def test_a_darker_camera_gets_a_drift_warning(exported_model, tmp_path):
    from PIL import Image, ImageEnhance

    for k, path in enumerate(sorted((exported_model["raw"] / "test").rglob("*.jpeg"))):
        ImageEnhance.Brightness(Image.open(path)).enhance(0.4).save(tmp_path / f"dark_{k}.jpeg", quality=90)
    result = predict(tmp_path, "--drift-min-images", "5", "--model", exported_model["onnx"])
    assert result.returncode == 0
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "brightness" in warnings[0], result.stderr


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("threshold", "nan", "threshold nan"),
        ("threshold", "1.5", "threshold 1.5"),
        ("review_band", "[0.9, 0.95]", "review band"),
        ("classifier", "false", "without a classifier the threshold must be"),  # a classifier's threshold, sold as none
        ("anomaly_review", "0.0001", "anomaly review band top"),  # a band below the threshold it starts at
        ("anomaly_review", "NaN", "anomaly review band top"),
    ],
)
def test_a_model_that_cannot_decide_safely_refuses_to_load(exported_model, tmp_path, key, value, problem):
    """A NaN threshold decides every part ok (every comparison is false): fail closed, at load."""
    import onnx

    model = onnx.load(str(exported_model["onnx"]))
    props = {prop.key: prop for prop in model.metadata_props}
    if key in props:
        props[key].value = value
    else:  # a key this model does not carry (no anomaly review band)
        model.metadata_props.add(key=key, value=value)
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    with pytest.raises(InspectionError, match="cannot decide safely: " + problem):
        Inspector(broken)


def test_a_part_only_the_model_of_good_parts_rejects_goes_to_a_person_with_the_reason(exported_model, tmp_path):
    """A model that carries an anomaly review band, through its metadata, the CLI and the rule: never ok, never
    scrapped by the model of good parts alone inside the band, and the reviewer is told which band."""
    import onnx

    test_dir = exported_model["raw"] / "test"
    before = pd.read_csv(io.StringIO(predict(test_dir, "--model", exported_model["onnx"]).stdout))
    classifier_ok = before[before["defect_probability"] < 0.5]
    assert len(classifier_ok) >= 2
    threshold = float(classifier_ok["anomaly"].median())  # some of them now depart from the good parts
    model = onnx.load(str(exported_model["onnx"]))
    props = {prop.key: prop for prop in model.metadata_props}
    props["anomaly_threshold"].value = json.dumps(threshold)
    props["review_band"].value = "null"  # the classifier's own band aside: below 0.5 it says ok
    props["anomaly_review"].value = json.dumps(float(before["anomaly"].max()) + 1)  # export writes "null" here
    onnx.save(model, str(tmp_path / "banded.onnx"))
    rows = pd.read_csv(io.StringIO(predict(test_dir, "--model", tmp_path / "banded.onnx").stdout), keep_default_na=False)
    only = (rows["anomaly"] >= threshold) & (rows["defect_probability"] < 0.5)
    assert only.any() and (rows.loc[only, "decision"] == "review").all()
    assert rows.loc[only, "review_reason"].str.startswith("only the model of good parts rejects it: anomaly ").all()
    both = (rows["anomaly"] >= threshold) & (rows["defect_probability"] >= 0.5)
    assert (rows.loc[both, "decision"] == "defective").all()


def test_a_model_whose_layout_rule_is_malformed_refuses_to_load(exported_model, tmp_path):
    """A layout rule of another grid would fail on every batch: refuse it once, at load, with what to do."""
    import onnx

    model = onnx.load(str(exported_model["onnx"]))
    (prop,) = [prop for prop in model.metadata_props if prop.key == "guard"]
    guard = json.loads(prop.value)
    assert len(guard["layout"]["mean"]) == 64  # the exported model has one
    guard["layout"]["mean"] = guard["layout"]["mean"][:16]
    prop.value = json.dumps(guard)
    onnx.save(model, str(tmp_path / "broken.onnx"))
    with pytest.raises(InspectionError, match="cannot decide safely: the guard's layout rule is not 64 cells.*export it again"):
        Inspector(tmp_path / "broken.onnx")


def frames() -> dict[str, bytes]:
    """What a line camera also sends: a black frame (lamp off), a white one, a 1000x40 strip, noise."""
    from PIL import Image, ImageDraw

    def png(image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        return buffer.getvalue()

    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300), dtype=np.uint8))
    bar = Image.new("L", (300, 300), 200)
    ImageDraw.Draw(bar).rectangle([20, 130, 280, 170], fill=40)  # another object on the table: not round
    return {
        "black.png": png(Image.new("L", (300, 300), 0)),
        "white.png": png(Image.new("L", (300, 300), 255)),
        "strip.png": png(Image.new("L", (1000, 40), 120)),
        "flat.png": png(Image.new("L", (300, 300), 140)),
        "noise.png": png(noise),
        "bar.png": png(bar),
    }


def test_a_photo_that_is_not_a_part_is_never_ok(exported_model, tmp_path):
    for name, data in frames().items():
        (tmp_path / name).write_bytes(data)
    good = sorted((exported_model["raw"] / "test" / "ok_front").glob("*.jpeg"))[0]
    (tmp_path / "good.jpeg").write_bytes(good.read_bytes())
    result = predict(tmp_path, "--model", exported_model["onnx"])
    assert result.returncode == 0, result.stderr
    rows = pd.read_csv(io.StringIO(result.stdout), keep_default_na=False).set_index("path")
    for name in ("black.png", "white.png", "strip.png", "flat.png", "bar.png"):
        row = rows.loc[str(tmp_path / name)]
        assert row["decision"] == "not_a_part" and row["flag"], (name, row.to_dict())
    assert (rows["decision"] != "ok").sum() >= 6 - 1  # noise is caught by the photo checks or the novelty score
    assert rows.loc[str(tmp_path / "good.jpeg"), "decision"] in {"ok", "defective", "review"}
    about = json.loads(
        subprocess.run([*CLI, "about", "--model", str(exported_model["onnx"])], capture_output=True, text=True, timeout=60).stdout
    )
    assert about["guard"]["max_aspect"] > 1 and "novelty_threshold" in about["guard"]
    assert about["guard"]["layout"]["cells"] == 64 and about["guard"]["layout"]["limit"] > 0  # not its fitted numbers


def test_a_pipe_given_by_name_is_skipped_not_read(exported_model, tmp_path):
    """Reading a FIFO would block until a writer appears: it is named and skipped."""
    import os

    os.mkfifo(tmp_path / "camera.jpg")
    result = predict(tmp_path / "camera.jpg", "--model", exported_model["onnx"])
    assert f"skipped {tmp_path / 'camera.jpg'}: not a regular file" in result.stderr


SETPRIV = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"]  # root without its override


def test_nothing_in_a_folder_is_passed_over_without_a_word(exported_model, tmp_path):
    """An unreadable sub-folder, a pipe, a socket and a broken link named like photos: each named, exit status 3."""
    import os
    import shutil
    import socket

    photos = tmp_path / "photos"
    (photos / "locked").mkdir(parents=True)
    shutil.copy(next((exported_model["raw"] / "test" / "ok_front").iterdir()), photos / "good.jpeg")
    shutil.copy(photos / "good.jpeg", photos / "locked" / "hidden.jpeg")
    os.mkfifo(photos / "fifo.jpeg")
    (photos / "gone.jpeg").symlink_to(photos / "nowhere.jpeg")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(photos / "sock.jpeg"))
    (photos / "unsearchable").mkdir()
    shutil.copy(photos / "good.jpeg", photos / "unsearchable" / "inside.jpeg")
    (tmp_path / "elsewhere").mkdir()
    (photos / "linked").symlink_to(tmp_path / "elsewhere")
    os.chmod(photos / "locked", 0)
    os.chmod(photos / "unsearchable", 0o644)  # its names can be listed, its files not reached
    try:
        command = [*CLI, "predict", str(photos), "--model", str(exported_model["onnx"])]
        prefix = SETPRIV if shutil.which("setpriv") and os.geteuid() == 0 else []
        result = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120)
    finally:
        os.chmod(photos / "locked", 0o755)
        os.chmod(photos / "unsearchable", 0o755)
        server.close()
    assert result.returncode == 3, result.stderr
    assert len(pd.read_csv(io.StringIO(result.stdout))) == 1  # the good photo beside them is decided
    for name, reason in [
        ("locked", "folder cannot be read"),
        ("fifo.jpeg", "not a regular file"),
        ("sock.jpeg", "not a regular file"),
        ("gone.jpeg", "a broken link"),
        ("linked", "a link to a folder, not followed"),
        ("unsearchable/inside.jpeg", "cannot be reached"),
    ]:
        assert f"skipped {photos / name}: {reason}" in result.stderr, (name, result.stderr)
    assert "6 skipped" in result.stderr and "Traceback" not in result.stderr


def test_names_cannot_run_as_formulas_nor_forge_lines(exported_model, tmp_path):
    """A spreadsheet opening predict's CSV runs no formula; a name cannot put a line or an escape code on the screen."""
    import shutil

    good = next((exported_model["raw"] / "test" / "ok_front").iterdir())
    shutil.copy(good, tmp_path / '=HYPERLINK("http-x").jpeg')
    (tmp_path / "bad\nok        0.0000  forged.jpeg").write_bytes(b"not a photo")
    (tmp_path / "\x1b[2Jclear.jpeg").write_bytes(b"not a photo")
    result = predict(".", "--model", exported_model["onnx"], cwd=tmp_path)
    rows = pd.read_csv(io.StringIO(result.stdout), keep_default_na=False)
    assert list(rows["path"]) == ['\'=HYPERLINK("http-x").jpeg']
    assert "\x1b" not in result.stderr and "\\x1b[2Jclear.jpeg" in result.stderr
    assert not any(line.startswith("ok ") for line in result.stderr.splitlines())
    assert "skipped bad\\nok        0.0000  forged.jpeg: not an image" in result.stderr


def test_maps_are_written_over_each_decided_photo(exported_model, tmp_path):
    """--maps: one overlay per decided photo, named after it (numbered when two folders share a name); red where the
    part departs from every good part, so a painted blot is coloured and the rest of a good part is not."""
    from PIL import Image

    from casting_inspection.evaluation.painted import paint, rng_for

    photos = tmp_path / "photos"
    for folder in ("a", "b"):
        (photos / folder).mkdir(parents=True)
        Image.open(sorted((exported_model["raw"] / "test" / "ok_front").iterdir())[0]).save(photos / folder / "same.png")
    good = Image.open(photos / "a" / "same.png")
    blotted, (row, col) = paint(good, "blob", rng_for(0, "blob", "x"), good.size[0] / 32)
    blotted.save(photos / "blot.png")
    result = predict(photos, "--model", exported_model["onnx"], "--maps", tmp_path / "maps")
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert written == ["blot.anomaly.png", "same-2.anomaly.png", "same.anomaly.png"]
    red = lambda name: np.asarray(Image.open(tmp_path / "maps" / name), int)  # noqa: E731
    redness = lambda image: image[..., 0] - image[..., 1]  # noqa: E731
    side = red("blot.anomaly.png").shape[0]
    y, x = int(row * side), int(col * side)
    assert redness(red("blot.anomaly.png"))[max(y - 12, 0) : y + 12, max(x - 12, 0) : x + 12].max() > 60


@pytest.mark.parametrize("key, value", [("review_band", '["low", "high"]'), ("review_band", '{"low": 0.1}'), ("guard", "[1, 2]")])
def test_metadata_of_the_wrong_kind_is_refused_in_one_line(exported_model, tmp_path, key, value):
    """A hand-edited or foreign file: a station retries it and says why, and never stops on a traceback."""
    import onnx

    model = onnx.load(str(exported_model["onnx"]))
    next(prop for prop in model.metadata_props if prop.key == key).value = value
    onnx.save(model, str(tmp_path / "model.onnx"))
    with pytest.raises(InspectionError, match="unreadable metadata"):
        Inspector(tmp_path / "model.onnx")


def test_a_graph_whose_first_output_is_not_the_defect_probability_is_refused(exported_model, tmp_path):
    """The first output is read as the probability: a graph that puts another number (a logit, a score) first would
    decide on it."""
    import onnx

    model = onnx.load(str(exported_model["onnx"]))
    outputs = list(model.graph.output)
    del model.graph.output[:]
    model.graph.output.extend([outputs[1], outputs[0], *outputs[2:]])
    onnx.save(model, str(tmp_path / "model.onnx"))
    with pytest.raises(InspectionError, match=f"first output is {outputs[1].name}, not defect_probability"):
        Inspector(tmp_path / "model.onnx")


@pytest.mark.parametrize("threshold", [None, "55", True], ids=["missing", "text", "bool"])
def test_a_graph_that_scores_departures_needs_a_numeric_anomaly_threshold(exported_model, tmp_path, threshold):
    """A model whose metadata lost its anomaly threshold would let every departure through: it is refused, in one line."""
    import onnx

    model = onnx.load(str(exported_model["onnx"]))
    kept = [p for p in model.metadata_props if p.key != "anomaly_threshold"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    if threshold is not None:
        model.metadata_props.add(key="anomaly_threshold", value=json.dumps(threshold))
    onnx.save(model, str(tmp_path / "model.onnx"))
    with pytest.raises(InspectionError, match="anomaly_threshold|cannot decide safely"):
        Inspector(tmp_path / "model.onnx")


def graph_that_fails(exported_model, path, batch: int, side: int):
    """The exported graph behind a Reshape of its input to (batch, 1, side, side): ONNX Runtime loads it and fails on
    every other batch size (and on every photo when `side` is not the image's), as a runtime out of memory fails."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(exported_model["onnx"]))
    name = model.graph.input[0].name
    for node in model.graph.node:
        node.input[:] = [f"{name}_fixed" if x == name else x for x in node.input]
    model.graph.initializer.append(numpy_helper.from_array(np.array([batch, 1, side, side], np.int64), "fixed_shape"))
    model.graph.node.insert(0, helper.make_node("Reshape", [name, "fixed_shape"], [f"{name}_fixed"]))
    onnx.save(model, str(path))
    return path


def test_a_model_that_fails_while_deciding_never_passes_a_part_and_spares_the_others(exported_model, tmp_path):
    """A run that fails (memory, a fault of the runtime) is retried photo by photo: the photos it can score are decided
    as the model decides them; one it cannot is not_a_part with the reason in one line, never ok, never a traceback."""
    photos = exported_model["raw"] / "test"
    expected = pd.read_csv(io.StringIO(predict(photos, "--model", exported_model["onnx"]).stdout))
    side = load_image((next(photos.rglob("*.jpeg"))).read_bytes(), Inspector(exported_model["onnx"]).spec)[0].shape[-1]
    one_at_a_time = predict(photos, "--model", graph_that_fails(exported_model, tmp_path / "batch1.onnx", 1, side))
    rows = pd.read_csv(io.StringIO(one_at_a_time.stdout))
    assert one_at_a_time.returncode == 0 and one_at_a_time.stderr.count("\n") == 1, one_at_a_time.stderr  # the summary
    assert list(rows["decision"]) == list(expected["decision"])
    assert np.allclose(rows["defect_probability"], expected["defect_probability"], atol=1e-5)
    never = predict(photos, "--model", graph_that_fails(exported_model, tmp_path / "never.onnx", 1, side + 1))
    rows = pd.read_csv(io.StringIO(never.stdout), keep_default_na=False)
    assert never.returncode == 0 and never.stderr.count("\n") == 1 and "Traceback" not in never.stderr, never.stderr
    assert len(rows) == len(expected) and set(rows["decision"]) == {"not_a_part"}
    assert rows["flag"].str.startswith("the model failed on this photo (Fail: [ONNXRuntimeError]").all()
