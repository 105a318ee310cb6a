"""The watcher against what a plant's folders do to names and files: names that are not UTF-8 or too long in bytes, a
restart in another working folder, a file rewritten in place, a file too large for another disk, an inbox that
goes away, settings that would leave a photo waiting unnamed. Every test counts the photos in and out."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from casting_inspection.core.errors import InspectionError
from casting_inspection.serving.inference import Inspector
from casting_inspection.serving.watch import watcher as watcher_module
from casting_inspection.serving.watch.log import LOG_NAME
from casting_inspection.serving.watch.watcher import Watcher

CLI = [sys.executable, "-m", "casting_inspection.serving.cli", "watch"]


def drop(source: Path, inbox: Path, name: str | None = None) -> Path:
    target = inbox / (name or source.name)
    shutil.copy(source, target)
    old = time.time() - 10
    os.utime(target, (old, old))
    return target


def filed_names(out: Path) -> list[str]:
    return sorted(f"{p.parent.name}/{p.name}" for p in out.glob("*/*") if p.is_file() and p.parent.name != "maps")


def test_a_name_that_is_not_utf8_is_decided_filed_and_logged_beside_the_others(exported_model, tmp_path):
    """A camera share's old Latin-1 name: decided, filed under its own bytes, logged; the photo beside it too."""
    inbox, out = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    defect, good = (
        next((exported_model["raw"] / "test/def_front").glob("*.jpeg")),
        sorted(exported_model["raw"].rglob("ok_front/*"))[0],
    )
    odd = os.fsdecode(b"caf\xe9_def.jpeg")
    drop(defect, inbox, odd), drop(good, inbox)
    command = [*CLI, str(inbox), "--out", str(out), "--once", "--model", str(exported_model["onnx"])]
    result = subprocess.run(command, capture_output=True, timeout=180)
    assert result.returncode == 0 and b"Traceback" not in result.stderr, result.stderr
    assert b"caf\\udce9_def.jpeg" in result.stdout  # escaped on the decision line, never printed raw
    assert sorted(os.listdir(inbox)) == [".casting-inspect-watch.lock"]
    assert len(filed_names(out)) == 2 and any(os.fsencode(name).endswith(b"caf\xe9_def.jpeg") for name in filed_names(out))
    with sqlite3.connect(out / LOG_NAME) as db:
        names = {row[0] for row in db.execute("SELECT name FROM inspections")}
    assert names == {b"caf\xe9_def.jpeg", good.name}  # its bytes, as the file system has them
    again = subprocess.run(command, capture_output=True, timeout=180)  # nothing left: nothing decided twice
    assert again.returncode == 0 and again.stdout == b""


def test_a_restart_in_another_working_folder_files_under_out(exported_model, tmp_path, monkeypatch, capsys):
    """Logged by a watcher started with relative paths, found again by one started elsewhere: filed under --out."""
    site, inbox = tmp_path / "site", tmp_path / "site/inbox"
    inbox.mkdir(parents=True)
    photo = next((exported_model["raw"] / "test/def_front").glob("*.jpeg"))
    inspector = Inspector(exported_model["onnx"])
    monkeypatch.chdir(site)
    with Watcher(inspector, Path("inbox"), Path("inbox/sorted"), settle_seconds=0) as first:
        assert first.process([drop(photo, Path("inbox"))]) == 1
    again = drop(photo, inbox)  # back in the inbox, as after a crash between the log and the move
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    with Watcher(inspector, inbox, inbox / "sorted", settle_seconds=0) as restarted:
        assert restarted.process([again]) == 1
    assert capsys.readouterr().out.rstrip().endswith("(as logged before)")
    assert filed_names(inbox / "sorted") == [f"defective/{photo.name}"] and not again.exists()
    assert not (tmp_path / "inbox").exists()  # nothing filed relative to where the second one runs


def test_a_photo_rewritten_in_place_after_filing_stays_to_be_decided(exported_model, tmp_path, monkeypatch):
    """`rsync --inplace -t` or a camera that rewrites a fixed-size file: same name, size and time, other content.
    The filed copy is the photo decided; the new content is never deleted unseen."""
    inbox, out = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    good = sorted(exported_model["raw"].rglob("ok_front/*"))[0]
    path = drop(good, inbox, "cam.jpeg")
    other = bytearray(good.read_bytes())
    other[-10] ^= 0xFF  # the same size, other content
    sync = watcher_module.fsync_dir

    def camera_rewrites_then_sync(folder):
        info = path.stat()
        with open(path, "r+b") as f:
            f.write(other)
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
        sync(folder)

    monkeypatch.setattr(watcher_module, "fsync_dir", camera_rewrites_then_sync)
    with Watcher(Inspector(exported_model["onnx"]), inbox, out, settle_seconds=0) as watcher:
        watcher.process([path])
    assert path.read_bytes() == bytes(other)  # still in the inbox: decided at the next look
    assert [p.read_bytes() for p in out.glob("*/cam.jpeg")] == [good.read_bytes()]


def test_a_long_name_in_a_script_of_many_bytes_taken_twice_is_filed(exported_model, tmp_path):
    """83 characters of three bytes each: 253 bytes. A second photo of that name gets a suffix that still fits."""
    inbox, out = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    name = "検" * 83 + ".jpg"
    first, second = sorted(exported_model["raw"].rglob("ok_front/*"))[:2]
    with Watcher(Inspector(exported_model["onnx"]), inbox, out, settle_seconds=0) as watcher:
        assert watcher.process([drop(first, inbox, name)]) == 1
        assert watcher.process([drop(second, inbox, name)]) == 1
    names = filed_names(out)
    assert len(names) == 2 and all(len(os.fsencode(n.split("/")[1])) <= 255 for n in names)


def test_an_inbox_that_goes_away_is_said_once_and_watched_again(exported_model, tmp_path, capsys):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    with Watcher(Inspector(exported_model["onnx"]), inbox, out, settle_seconds=0) as watcher:
        inbox.rename(tmp_path / "gone")  # a share dropped
        assert watcher.scan(time.time()) == [] and watcher.scan(time.time()) == []
        (tmp_path / "gone").rename(inbox)
        drop(sorted(exported_model["raw"].rglob("ok_front/*"))[0], inbox, "back.jpeg")
        assert [p.name for p, _ in watcher.scan(time.time())] == ["back.jpeg"]
        inbox.rename(tmp_path / "old")
        inbox.mkdir()  # another folder where the inbox was: its lock is on the old one
        with pytest.raises(InspectionError, match="another folder now stands where the inbox was"):
            watcher.scan(time.time())
    notes = [line for line in capsys.readouterr().err.splitlines() if "inbox" in line]
    assert len(notes) == 2 and "cannot be read" in notes[0] and "can be read again" in notes[1], notes


@pytest.mark.parametrize("option, value", [("--settle", "nan"), ("--settle", "inf"), ("--poll", "0"), ("--poll", "-1")])
def test_a_wait_that_would_leave_photos_unnamed_is_refused(exported_model, tmp_path, option, value):
    (tmp_path / "inbox").mkdir()
    command = [*CLI, str(tmp_path / "inbox"), "--model", str(exported_model["onnx"]), option, value]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and option in result.stderr, result.stderr
