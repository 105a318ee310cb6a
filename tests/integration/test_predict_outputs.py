"""Where `predict` writes, and what it refuses to write over: names that are not UTF-8 or not printable, a link, a
photo, a pipe, a closed or full standard output, a name too long for its map."""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "casting_inspection.serving.cli", "predict"]


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, timeout=120, **kwargs)


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
    result = run(folder, "--model", exported_model["onnx"], "--out", tmp_path / "link.csv", "--maps", tmp_path / "maps",
                 env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "link.csv").is_symlink()  # written through, the link kept
    written = rows.read_bytes()
    assert b"latin1-\xe9t\xe9.jpg" in written and long_name.encode() in written
    assert len(list((tmp_path / "maps").glob("*.anomaly.png"))) == 2


def test_an_empty_path_is_named_and_decides_nothing_around_it(exported_model, photo):
    result = run("", photo, "--model", exported_model["onnx"], cwd=photo.parent)
    assert result.returncode == 3
    assert b"skipped '': an empty path" in result.stderr
    assert len(result.stdout.splitlines()) == 2  # the header and the one photo named, not the folder it runs in


def test_out_never_replaces_a_photo_or_a_pipe(exported_model, photo, tmp_path):
    before = photo.read_bytes()
    result = run(photo, "--model", exported_model["onnx"], "--out", photo)
    assert result.returncode == 1 and b"is one of the photos to decide" in result.stderr
    assert photo.read_bytes() == before
    os.mkfifo(tmp_path / "pipe")
    result = run(photo, "--model", exported_model["onnx"], "--out", tmp_path / "pipe")
    assert result.returncode == 1 and b"not a plain file" in result.stderr
    assert not (tmp_path / "pipe").is_file()


@pytest.mark.parametrize("redirect, message", [(">&-", "standard output is closed"), (">/dev/full", "No space left")])
def test_rows_that_cannot_reach_standard_output_are_one_line(exported_model, photo, redirect, message):
    command = " ".join(f"'{part}'" for part in [*CLI, photo, "--model", exported_model["onnx"]])
    result = subprocess.run(["bash", "-c", f"{command} {redirect}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_reader_that_stops_early_or_a_loop_of_links_ends_without_a_traceback(exported_model, photo, tmp_path):
    command = " ".join(f"'{part}'" for part in [*CLI, photo, "--model", exported_model["onnx"]])
    subprocess.run(["bash", "-c", f"{command} 2>'{tmp_path / 'err'}' | true"], timeout=120)  # `true` reads nothing
    assert "Traceback" not in (tmp_path / "err").read_text()
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    result = run(photo, "--model", exported_model["onnx"], "--out", tmp_path / "a")
    assert result.returncode == 1 and b"cannot be reached" in result.stderr and b"Traceback" not in result.stderr


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


def test_a_drift_check_on_no_photo_is_refused_as_a_setting():
    result = run("nowhere", "--drift-min-images", "0")
    assert result.returncode == 2 and b"--drift-min-images" in result.stderr
