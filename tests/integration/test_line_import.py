"""The line data set and `casting-inspect import-line`: a folder the plant already labelled, with its own folder
names, flows into data/line/ once per photo, bad files named and skipped; inspectors who disagree are kept
apart from training, and each inspector's latest verdict counts once."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image

from casting_inspection.data import line
from casting_inspection.data.images import BadImage
from casting_inspection.serving import cli
from casting_inspection.serving.inference import Inspector
from helpers import jpeg_bytes, part_image


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def plant_folder(root: Path, name: str = "plant") -> tuple[Path, dict[str, bytes]]:
    """NG/ and OK/ as a plant names them, photos of mixed sizes and formats, one photo twice, one bad file.
    Returns the folder and, per good file, its bytes."""
    folder = root / name
    files = {
        "NG/cast_1.jpg": jpeg_bytes(part_image(True, 1, size=64)),
        "NG/cast_2.jpg": jpeg_bytes(part_image(True, 2, size=96)),
        "NG/line3/cast_3.png": png_bytes(part_image(True, 3, size=150)),
        "OK/cast_4.jpg": jpeg_bytes(part_image(False, 4, size=80)),
        "OK/cast_5.jpeg": jpeg_bytes(part_image(False, 5, size=64)),
    }
    files["OK/copy_of_4.jpg"] = files["OK/cast_4.jpg"]  # the same photo twice: one photo
    for relative, data in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)
    (folder / "NG/notes.jpg").write_text("not a photo, whatever its name says")
    return folder, files


def import_line(model: Path, folder: Path, line_dir: Path, *args: str) -> int:
    """`casting-inspect import-line` in this process; its exit status."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["import-line", str(folder), "--line", str(line_dir), "--model", str(model), *args])
    return exited.value.code


def rows(line_dir: Path) -> list[dict]:
    with open(line_dir / line.LABELS_NAME, newline="") as f:
        return list(csv.DictReader(f))


def test_import_stores_each_photo_once_and_names_the_bad_file(exported_model, tmp_path, capsys):
    folder, files = plant_folder(tmp_path)
    line_dir = tmp_path / "line"
    code = import_line(exported_model["onnx"], folder, line_dir, "--map", "NG=defective", "--map", "OK=ok", "--inspector", "qa")
    err = capsys.readouterr().err
    skipped = [text for text in err.splitlines() if text.startswith("skipped")]
    assert code == cli.SKIPPED_EXIT
    assert skipped == [f"skipped {folder / 'NG/notes.jpg'}: not an image in an accepted format (JPEG, PNG, BMP)"]
    assert "5 verdicts by qa recorded" in err and "(3 defective, 2 ok)" in err and "1 already counted" in err

    stored = sorted((line_dir / "images").iterdir())
    assert len(stored) == 5  # six good files, one of them twice
    for path in stored:
        assert path.stem == hashlib.sha256(path.read_bytes()).hexdigest()
        assert path.suffix in {".jpg", ".png"}
    assert sorted(p.read_bytes() for p in stored) == sorted(set(files.values()))
    assert sorted(p.name for p in line_dir.iterdir()) == ["images", "labels.csv"]  # no temporary left behind

    written = rows(line_dir)
    assert list(written[0]) == list(line.COLUMNS) and len(written) == 5
    verdict_of = {hashlib.sha256(files[r]).hexdigest(): ("defective" if r.startswith("NG") else "ok") for r in files}
    for row in written:
        assert row["verdict"] == verdict_of[row["sha256"]] and row["image"].startswith(f"images/{row['sha256']}.")
        assert (row["inspector"], row["source"], row["model_version"], row["defect_probability"]) == (
            "qa",
            f"import:{folder.resolve()}",
            "",
            "",
        )
        assert datetime.fromisoformat(row["labelled_at"]).utcoffset().total_seconds() == 0

    training = line.training_labels(line_dir)
    assert list(training.columns) == ["sha256", "image", "label", "inspectors", "disputed"]
    assert sorted(training["label"]) == ["def_front"] * 3 + ["ok_front"] * 2
    assert not training["disputed"].any() and set(training["inspectors"]) == {"qa"}

    # Importing the same folder again adds nothing: every photo is already labelled so by this inspector.
    assert (
        import_line(exported_model["onnx"], folder, line_dir, "--map", "NG=defective", "--map", "OK=ok", "--inspector", "qa") == 3
    )
    assert "0 verdicts by qa recorded" in capsys.readouterr().err
    assert len(rows(line_dir)) == 5 and len(list((line_dir / "images").iterdir())) == 5


def test_every_sub_folder_must_be_mapped_and_each_error_is_one_line(exported_model, tmp_path, capsys):
    folder, _ = plant_folder(tmp_path)
    (folder / "Unsure").mkdir()
    line_dir = tmp_path / "line"
    cases = [
        (
            ["--map", "NG=defective", "--map", "OK=ok"],
            ["sub-folder(s) Unsure not mapped", "--map Unsure=<defective|ok|not_a_part>"],
        ),
        (["--map", "NG=defective", "--map", "OK=fine", "--map", "Unsure=ok"], ["--map OK=fine: the verdict must be one of"]),
        (["--map", "NG=defective", "--map", "OK=ok", "--map", "Unsure=ok", "--map", "ng=defective"], ["no sub-folder 'ng'"]),
        (["--map", "NG"], ["--map NG: write it as SUBFOLDER=VERDICT"]),
    ]
    for args, expected in cases:
        assert import_line(exported_model["onnx"], folder, line_dir, *args, "--inspector", "qa") == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("casting-inspect import-line: error: "), err
        assert all(text in err for text in expected), err
    assert not line_dir.exists() or not any(line_dir.rglob("*.*"))  # nothing added before the mapping is right


def test_a_photo_in_two_classes_is_recorded_in_neither(exported_model, tmp_path, capsys):
    folder = tmp_path / "plant"
    for relative in ("NG/a.jpg", "OK/b.jpg"):
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(jpeg_bytes(part_image(True, 7)))
    (folder / "OK/c.jpg").write_bytes(jpeg_bytes(part_image(False, 8)))
    line_dir = tmp_path / "line"
    assert (
        import_line(exported_model["onnx"], folder, line_dir, "--map", "NG=defective", "--map", "OK=ok", "--inspector", "qa") == 3
    )
    skipped = [text for text in capsys.readouterr().err.splitlines() if text.startswith("skipped")]
    assert len(skipped) == 2 and all("recorded in neither" in text for text in skipped)
    assert [r["verdict"] for r in rows(line_dir)] == ["ok"]


def test_inspectors_who_disagree_are_kept_but_left_out_of_training(exported_model, tmp_path):
    """The plant says defective, Anna says ok: the photo stays in labels.csv, disputed, not in training. A second
    verdict by Anna is a dispute too, until she takes the first back; nothing is ever rewritten."""
    folder, files = plant_folder(tmp_path)
    line_dir = tmp_path / "line"
    assert (
        import_line(exported_model["onnx"], folder, line_dir, "--map", "NG=defective", "--map", "OK=ok", "--inspector", "qa") == 3
    )
    second = tmp_path / "second_look"
    (second / "good").mkdir(parents=True)
    (second / "good" / "x.jpg").write_bytes(files["NG/cast_1.jpg"])
    (second / "good" / "y.jpg").write_bytes(files["OK/cast_5.jpeg"])  # agrees with the plant
    assert import_line(exported_model["onnx"], second, line_dir, "--map", "good=ok", "--inspector", "anna") == 0
    disputed = hashlib.sha256(files["NG/cast_1.jpg"]).hexdigest()
    agreed = hashlib.sha256(files["OK/cast_5.jpeg"]).hexdigest()

    training = line.training_labels(line_dir).set_index("sha256")
    assert disputed not in training.index and len(training) == 4
    assert training.loc[agreed, "inspectors"] == "anna;qa" and training.loc[agreed, "label"] == "ok_front"
    everything = line.training_labels(line_dir, include_disputed=True).set_index("sha256")
    assert everything.loc[disputed, "disputed"] and everything.loc[disputed, "label"] == ""
    listed = line.disagreements(line_dir)
    assert list(listed["sha256"]) == [disputed] and listed["verdicts"].item() == "anna=ok; qa=defective"
    assert sum(r["sha256"] == disputed for r in rows(line_dir)) == 2  # both verdicts stay: the disagreement is information

    image = everything.loc[disputed, "image"]
    line.append_verdict(line_dir, line.Verdict(disputed, image, "defective", "anna", "review", "abc123", 0.47))
    listed = line.disagreements(line_dir)  # her earlier ok still stands: a dispute, not a silent overwrite
    assert listed["verdicts"].item() == "anna=defective; anna=ok; qa=defective" and len(rows(line_dir)) == 8
    assert line.retract(line_dir, disputed, "anna", f"import:{second.resolve()}")["verdict"] == "ok"  # she takes it back
    training = line.training_labels(line_dir).set_index("sha256")
    assert training.loc[disputed, "label"] == "def_front" and training.loc[disputed, "inspectors"] == "anna;qa"
    assert line.disagreements(line_dir).empty and len(rows(line_dir)) == 9  # appended, nothing rewritten
    assert line.retract(line_dir, disputed, "anna", f"import:{second.resolve()}") is None  # nothing more of hers there

    line.append_verdict(line_dir, line.Verdict(agreed, training.loc[agreed, "image"], "not_a_part", "ben", "review"))
    assert agreed not in set(line.training_labels(line_dir)["sha256"])  # not a part, to someone: disputed
    assert agreed in set(line.disagreements(line_dir)["sha256"])


def test_a_bad_photo_is_not_added_and_a_verdict_needs_a_stored_photo(exported_model, tmp_path):
    spec = Inspector(exported_model["onnx"]).spec
    with pytest.raises(BadImage, match="too small"):
        line.add_photo(tmp_path / "line", jpeg_bytes(part_image(True, 1, size=8)), spec)
    assert not (tmp_path / "line" / "images").exists()
    with pytest.raises(line.InspectionError, match="no such photo"):
        line.append_verdict(tmp_path / "line", line.Verdict("0" * 64, f"images/{'0' * 64}.jpg", "ok", "anna", "review"))
    digest, image = line.add_photo(tmp_path / "line", jpeg_bytes(part_image(True, 1)), spec)
    with pytest.raises(line.InspectionError, match="verdict 'fine'"):
        line.append_verdict(tmp_path / "line", line.Verdict(digest, image, "fine", "anna", "review"))
    with pytest.raises(line.InspectionError, match="inspector name"):
        line.append_verdict(tmp_path / "line", line.Verdict(digest, image, "ok", " ", "review"))
    assert not (tmp_path / "line" / line.LABELS_NAME).exists()


def test_what_is_not_a_part_or_not_a_photo_is_named_and_never_imported(exported_model, tmp_path, capsys):
    """Noise and a black frame labelled ok are refused by the model's guard; a pipe and a broken link are named."""
    import os

    import numpy as np

    folder = tmp_path / "plant"
    (folder / "OK").mkdir(parents=True)
    (folder / "OK" / "good.jpg").write_bytes(jpeg_bytes(part_image(False, 4, size=64)))
    rng = np.random.default_rng(0)
    for i in range(3):
        noise = Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8), "L")
        (folder / "OK" / f"noise_{i}.png").write_bytes(png_bytes(noise))
    (folder / "OK" / "black.png").write_bytes(png_bytes(Image.new("L", (64, 64), 0)))
    os.mkfifo(folder / "OK" / "fifo.jpg")
    (folder / "OK" / "gone.jpg").symlink_to(folder / "nowhere.jpg")
    line_dir = tmp_path / "line"
    assert import_line(exported_model["onnx"], folder, line_dir, "--map", "OK=ok", "--inspector", "qa") == cli.SKIPPED_EXIT
    err = capsys.readouterr().err
    for name in ("noise_0.png", "noise_1.png", "noise_2.png", "black.png"):
        assert f"skipped {folder / 'OK' / name}: not a part the model can judge (" in err, (name, err)
    assert f"skipped {folder / 'OK' / 'fifo.jpg'}: not a regular file" in err
    assert f"skipped {folder / 'OK' / 'gone.jpg'}: a broken link" in err
    assert [row["verdict"] for row in rows(line_dir)] == ["ok"] and len(list((line_dir / "images").iterdir())) == 1


def test_the_line_folder_is_not_imported_into_itself(exported_model, tmp_path, capsys):
    folder, _ = plant_folder(tmp_path)
    line_dir = tmp_path / "line"
    assert import_line(exported_model["onnx"], folder, line_dir, "--map", "NG=defective", "--map", "OK=ok") == 3
    before = rows(line_dir)
    (line_dir / "images").rename(line_dir / "OK")  # a careless user: the line folder's photos, mapped as ok
    code = import_line(exported_model["onnx"], line_dir, line_dir, "--map", "OK=ok")
    assert code == 1 and "overlaps the line data set" in capsys.readouterr().err
    assert rows(line_dir) == before


def test_a_hundred_maps_are_read_and_the_next_is_refused(capsys):
    maps = [f"--map=class{i}=ok" for i in range(cli.MAX_MAPS)]
    assert len(cli.build_parser().parse_args(["import-line", "folder", *maps]).map) == cli.MAX_MAPS
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(["import-line", "folder", *maps, "--map", "NG=defective"])
    assert exited.value.code == 1 and "more than 100 --map options" in capsys.readouterr().err


def test_thousands_of_maps_are_one_quick_line(exported_model, tmp_path, capsys):
    folder, _ = plant_folder(tmp_path)
    maps = [arg for i in range(20_000) for arg in ("--map", f"class{i}=ok")]
    assert import_line(exported_model["onnx"], folder, tmp_path / "line", *maps) == 1
    err = capsys.readouterr().err
    assert "import-line: error: more than 100 --map options" in err and err.count("\n") == 1


@pytest.mark.parametrize("name", ["+anna", "-anna", "@anna", "=anna", "an\nna", "an\x1bna"])
def test_an_inspector_name_a_spreadsheet_would_run_is_refused(exported_model, tmp_path, capsys, name):
    folder, _ = plant_folder(tmp_path)
    code = import_line(
        exported_model["onnx"], folder, tmp_path / "line", "--map", "NG=defective", "--map", "OK=ok", f"--inspector={name}"
    )
    err = capsys.readouterr().err
    assert code == 1 and "inspector name" in err and "\x1b" not in err and err.count("\n") == 1


def test_a_torn_line_in_labels_csv_hides_no_other_verdict(exported_model, tmp_path):
    """A write cut short inside a quoted field must not swallow the rows after it."""
    spec = Inspector(exported_model["onnx"]).spec
    line_dir = tmp_path / "line"
    first, first_image = line.add_photo(line_dir, jpeg_bytes(part_image(True, 1)), spec)
    second, second_image = line.add_photo(line_dir, jpeg_bytes(part_image(False, 2)), spec)
    line.append_verdict(line_dir, line.Verdict(first, first_image, "ok", "Smith, Anna", "review"))
    with open(line_dir / line.LABELS_NAME, "a", encoding="utf-8") as f:
        f.write(f'{first},{first_image},defective,"Smith, B')  # the disk filled up here
    line.append_verdict(line_dir, line.Verdict(first, first_image, "defective", "ben", "review"))
    line.append_verdict(line_dir, line.Verdict(second, second_image, "ok", "carl", "review"))
    rows_read, problems = line.read_rows(line_dir)
    assert [r["inspector"] for r in rows_read] == ["Smith, Anna", "ben", "carl"] and [n for n, _ in problems] == [3]
    assert first in set(line.disagreements(line_dir)["sha256"])  # ben's verdict still counts: disputed, not trained
    assert list(line.training_labels(line_dir)["sha256"]) == [second]


def test_a_photo_copied_into_another_class_later_is_recorded_in_neither(exported_model, tmp_path, capsys):
    """Imported once as defective; the plant then copies it into OK/ too: the second import names both files, records
    nothing new and takes the first verdict back (the photo's class is the plant's to settle)."""
    folder, line_dir = tmp_path / "plant", tmp_path / "line"
    (folder / "NG").mkdir(parents=True)
    photo = jpeg_bytes(part_image(True, 7))
    (folder / "NG/a.jpg").write_bytes(photo)
    options = ("--map", "NG=defective", "--inspector", "qa")
    assert import_line(exported_model["onnx"], folder, line_dir, *options) == 0
    options = (*options, "--map", "OK=ok")
    (folder / "OK").mkdir()
    (folder / "OK/a_copy.jpg").write_bytes(photo)
    capsys.readouterr()
    assert import_line(exported_model["onnx"], folder, line_dir, *options) == 3
    skipped = [text for text in capsys.readouterr().err.splitlines() if text.startswith("skipped")]
    assert len(skipped) == 3 and sum("recorded in neither" in text for text in skipped) == 2, skipped
    assert "taken back" in skipped[2] and [r["verdict"] for r in rows(line_dir)] == ["defective", "retracted"]
    assert line.training_labels(line_dir).empty  # the photo trains as neither until the plant settles its class


def test_a_line_of_other_bytes_is_named_and_the_rest_count(exported_model, tmp_path):
    """A hand edit in another encoding spoils its own line, never the file."""
    spec = Inspector(exported_model["onnx"]).spec
    line_dir = tmp_path / "line"
    first, first_image = line.add_photo(line_dir, jpeg_bytes(part_image(True, 1)), spec)
    line.append_verdict(line_dir, line.Verdict(first, first_image, "defective", "anna", "review"))
    with open(line_dir / line.LABELS_NAME, "ab") as f:
        f.write(f"{first},{first_image},ok,J\xfcrgen,2026-01-01T00:00:00+00:00,review,,\n".encode("latin-1"))
    line.append_verdict(line_dir, line.Verdict(first, first_image, "defective", "ben", "review"))
    rows_read, problems = line.read_rows(line_dir)
    assert [r["inspector"] for r in rows_read] == ["anna", "ben"] and problems == [(3, "not UTF-8 text")]


def test_a_folder_whose_name_is_not_text_is_refused_before_anything_is_stored(exported_model, tmp_path, capsys):
    folder = tmp_path / os.fsdecode(b"plant_\xe9")
    (folder / "NG").mkdir(parents=True)
    (folder / "NG/a.jpg").write_bytes(jpeg_bytes(part_image(True, 7)))
    line_dir = tmp_path / "line"
    assert import_line(exported_model["onnx"], folder, line_dir, "--map", "NG=defective", "--inspector", "qa") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "it is not UTF-8 text or holds a line break" in err and not line_dir.exists()
    newline = tmp_path / "plant\nbatch"  # before: refused only once its photos were stored
    (newline / "NG").mkdir(parents=True)
    (newline / "NG/a.jpg").write_bytes(jpeg_bytes(part_image(True, 7)))
    assert import_line(exported_model["onnx"], newline, line_dir, "--map", "NG=defective", "--inspector", "qa") == 1
    assert "holds a line break; rename the folder" in capsys.readouterr().err and not line_dir.exists()


def test_a_photo_later_in_both_classes_loses_every_verdict_this_folder_gave_it(exported_model, tmp_path):
    """Before: a folder of the same name elsewhere took back this folder's verdict; and NG, then OK (a dispute with
    herself), then both took back only the last verdict, so the photo trained as defective."""
    photo, line_dir = jpeg_bytes(part_image(True, 7)), tmp_path / "line"
    options = ("--map", "NG=defective", "--map", "OK=ok", "--inspector", "qa")

    def batch(folder: Path, *classes: str) -> Path:
        for name in ("NG", "OK"):
            (folder / name).mkdir(parents=True, exist_ok=True)
            (folder / name / "x.jpg").unlink(missing_ok=True)
        for name in classes:
            (folder / name / "x.jpg").write_bytes(photo)
        import_line(exported_model["onnx"], folder, line_dir, *options)
        return folder

    first = batch(tmp_path / "a" / "batch", "NG")
    batch(tmp_path / "b" / "batch", "NG", "OK")  # another folder of the same name: another source
    assert list(line.latest_verdicts(line_dir)["source"]) == [f"import:{first.resolve()}"]
    batch(first, "OK")
    batch(first, "NG", "OK")
    assert [(r["verdict"], r["source"] == f"import:{first.resolve()}") for r in rows(line_dir)] == [
        ("defective", True), ("ok", True), ("retracted", True), ("retracted", True)
    ]  # fmt: skip
    assert line.latest_verdicts(line_dir).empty and line.training_labels(line_dir).empty


def test_a_stored_photo_of_other_bytes_is_replaced_when_the_photo_comes_again(exported_model, tmp_path):
    """Before: a torn or overwritten images/<sha256> file was kept, its verdicts recorded, prepare rejected it and no
    import could mend it. Now the photo coming again replaces it."""
    spec = Inspector(exported_model["onnx"]).spec
    line_dir, photo = tmp_path / "line", jpeg_bytes(part_image(True, 1))
    digest, image = line.add_photo(line_dir, photo, spec)
    (line_dir / image).write_bytes(photo[:100])
    assert line.add_photo(line_dir, photo, spec) == (digest, image)
    assert (line_dir / image).read_bytes() == photo
    assert sorted(p.name for p in (line_dir / "images").iterdir()) == [Path(image).name]  # no temporary left


APPEND_UNDER_A_SIZE_LIMIT = """
import resource, signal, sys
from pathlib import Path
from casting_inspection.data import line
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
line_dir = Path(sys.argv[1])
size = (line_dir / line.LABELS_NAME).stat().st_size
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 300, size + 300))
verdict = line.read_rows(line_dir)[0][0]
rows = [line.Verdict(verdict["sha256"], verdict["image"], "ok", f"inspector{k}", "review") for k in range(5)]
line.append_verdicts(line_dir, rows)
"""


def test_verdicts_that_do_not_fit_on_the_disk_land_none_of_them(exported_model, tmp_path):
    """Five verdicts in one write, and room for one and a half: none lands, no torn line is left, the error is said."""
    spec = Inspector(exported_model["onnx"]).spec
    line_dir = tmp_path / "line"
    first, first_image = line.add_photo(line_dir, jpeg_bytes(part_image(True, 1)), spec)
    line.append_verdict(line_dir, line.Verdict(first, first_image, "defective", "anna", "review"))
    before = (line_dir / line.LABELS_NAME).read_bytes()
    env = {**os.environ, "PYTHONPATH": str(Path(line.__file__).parents[2])}
    result = subprocess.run(
        [sys.executable, "-c", APPEND_UNDER_A_SIZE_LIMIT, str(line_dir)], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 1 and "cannot write the verdict (File too large)" in result.stderr, result.stderr
    assert (line_dir / line.LABELS_NAME).read_bytes() == before
