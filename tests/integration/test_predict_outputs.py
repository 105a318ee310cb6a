"""Where `predict` writes, and what it refuses to write over: names that are not UTF-8 or not printable, a link, a
photo, a pipe, a closed or full standard output, a name too long for its map. In this process where the streams are
not the point; in a process of its own behind a terminal, a closed or full output, or a reader that stops early."""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
import sys

import pytest

from casting_inspection.serving import cli

CLI = [sys.executable, "-m", "casting_inspection.serving.cli", "predict"]


def predict_here(*args) -> int:
    """`casting-inspect predict` in this process; its exit status."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["predict", *map(str, args)])
    return exited.value.code


def shell(command: list, redirect: str) -> subprocess.CompletedProcess:
    quoted = " ".join(f"'{part}'" for part in command)
    return subprocess.run(["bash", "-c", f"{quoted} {redirect}"], capture_output=True, text=True, timeout=120)


@pytest.fixture
def photo(exported_model):
    return next((exported_model["raw"] / "test" / "ok_front").glob("*.jpeg"))


def test_odd_names_are_decided_and_written_as_they_are_through_a_link(exported_model, photo, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    odd = os.fsdecode(b"latin1-\xe9t\xe9.jpg")  # a name from an old share: not UTF-8
    long_name = "p" * 240 + ".jpg"  # its map's name would pass the file system's 255 bytes
    for name in (odd, long_name):
        shutil.copy(photo, folder / name)
    rows = tmp_path / "rows.csv"
    rows.write_text("old")
    (tmp_path / "link.csv").symlink_to(rows)
    model, maps = exported_model["onnx"], tmp_path / "maps"
    assert predict_here(folder, "--model", model, "--out", tmp_path / "link.csv", "--maps", maps) == 0
    assert (tmp_path / "link.csv").is_symlink()  # written through, the link kept
    written = rows.read_bytes()
    assert b"latin1-\xe9t\xe9.jpg" in written and long_name.encode() in written
    assert len(list(maps.glob("*.anomaly.png"))) == 2


def test_an_empty_path_is_named_and_decides_nothing_around_it(exported_model, photo, monkeypatch, capsys):
    monkeypatch.chdir(photo.parent)
    assert predict_here("", photo, "--model", exported_model["onnx"]) == 3
    out, err = capsys.readouterr()
    assert "skipped '': an empty path" in err
    assert len(out.splitlines()) == 2  # the header and the one photo named, not the folder it runs in


def test_out_never_replaces_a_photo_a_pipe_or_a_loop_of_links(exported_model, photo, tmp_path, capsys):
    model, before = exported_model["onnx"], photo.read_bytes()
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    for out, message in ((photo, "is one of the photos to decide"), (tmp_path / "pipe", "not a plain file"),
                         (tmp_path / "a", "cannot be reached")):  # fmt: skip
        assert predict_here(photo, "--model", model, "--out", out) == 1
        assert message in capsys.readouterr().err
    assert photo.read_bytes() == before and not (tmp_path / "pipe").is_file()


@pytest.mark.parametrize("redirect, message", [(">&-", "standard output is closed"), (">/dev/full", "No space left")])
def test_rows_that_cannot_reach_standard_output_are_one_line(exported_model, photo, redirect, message):
    result = shell([*CLI, photo, "--model", exported_model["onnx"]], redirect)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_reader_that_stops_early_ends_without_a_traceback(exported_model, photo, tmp_path):
    shell([*CLI, photo, "--model", exported_model["onnx"]], f"2>'{tmp_path / 'err'}' | true")  # `true` reads nothing
    assert "Traceback" not in (tmp_path / "err").read_text()


def test_a_name_cannot_drive_the_terminal(exported_model, photo, tmp_path):
    shutil.copy(photo, tmp_path / "esc\x1b[31mred.jpg")
    primary, secondary = pty.openpty()
    result = subprocess.run([*CLI, tmp_path, "--model", exported_model["onnx"]], stdout=secondary, stderr=subprocess.PIPE,
                            timeout=120)  # fmt: skip
    os.close(secondary)
    shown = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the terminal's other end is closed: all was read
            break
        if not chunk:
            break
        shown += chunk
    os.close(primary)
    assert result.returncode == 0, result.stderr
    assert b"esc\\x1b[31mred.jpg" in shown and b"\x1b" not in shown


def test_a_drift_check_on_no_photo_is_refused_as_a_setting(capsys):
    assert predict_here("nowhere", "--drift-min-images", "0") == 2
    assert "--drift-min-images" in capsys.readouterr().err
