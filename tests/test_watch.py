"""Watch mode: photos dropped into a folder are decided once, logged, and sorted; bad files do not stop it."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from casting_inspection.deploy.inference import Inspector
from casting_inspection.deploy.watch import LOG_NAME, Watcher

CLI = [sys.executable, "-m", "casting_inspection.deploy.cli", "watch"]


def logged(out: Path) -> list[tuple]:
    with sqlite3.connect(out / LOG_NAME) as db:
        return db.execute("SELECT name, decision, destination, reason FROM inspections ORDER BY name").fetchall()


def drop(source: Path, inbox: Path, age_seconds: float = 10.0) -> Path:
    target = inbox / source.name
    shutil.copy(source, target)
    old = time.time() - age_seconds
    os.utime(target, (old, old))
    return target


def test_once_sorts_every_complete_file_and_rejects_bad_ones(exported_model, tmp_path):
    inbox, out = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    photos = sorted((exported_model["raw"] / "test").rglob("*.jpeg"))[:6]
    for photo in photos:
        drop(photo, inbox)
    (inbox / "garbage.jpeg").write_bytes(b"\x00" * 50)
    os.utime(inbox / "garbage.jpeg", (time.time() - 10, time.time() - 10))
    (inbox / "still_writing.jpeg").write_bytes(photos[0].read_bytes()[:100])  # modified just now
    result = subprocess.run(
        [*CLI, str(inbox), "--out", str(out), "--once", "--settle", "2", "--model", str(exported_model["onnx"])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rows = logged(out)
    assert len(rows) == 7 and {r[0] for r in rows} == {p.name for p in photos} | {"garbage.jpeg"}
    expected = {r.path: r.decision for r in Inspector(exported_model["onnx"]).inspect([(p.name, p.read_bytes()) for p in photos])}
    for name, decision, destination, reason in rows:
        assert Path(destination).exists() and Path(destination).parent.name == {"": "rejected"}.get(
            expected.get(name, ""), decision
        )
        if name == "garbage.jpeg":
            assert decision == "rejected" and "not an image" in reason
        else:
            assert decision == expected[name] and reason == ""
    assert [p.name for p in inbox.iterdir() if p.is_file()] == ["still_writing.jpeg"]  # not complete yet: left alone


def test_a_file_decided_before_a_restart_is_filed_not_decided_again(exported_model, tmp_path):
    """The log is written before the move: a file found in the inbox with a logged decision is only moved."""
    inbox, out = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    photo = next((exported_model["raw"] / "test" / "def_front").glob("*.jpeg"))
    inspector = Inspector(exported_model["onnx"])
    watcher = Watcher(inspector, inbox, out, settle_seconds=0)
    assert watcher.process([drop(photo, inbox)]) == 1
    (first,) = logged(out)
    again = drop(photo, inbox)  # the same file is back in the inbox, as after a crash between log and move
    restarted = Watcher(inspector, inbox, out, settle_seconds=0)
    assert restarted.process([again]) == 1
    assert logged(out) == [first]  # no second decision
    assert not again.exists()  # filed where the log says: the same photo (name and content), so one file there
    assert [p.read_bytes() for p in Path(first[2]).parent.iterdir()] == [photo.read_bytes()]


def test_running_watcher_survives_a_restart_and_decides_each_photo_once(exported_model, tmp_path):
    inbox, out = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    photos = sorted((exported_model["raw"] / "test").rglob("*.jpeg"))[:8]
    command = [*CLI, str(inbox), "--out", str(out), "--poll", "0.1", "--settle", "0.3", "--model", str(exported_model["onnx"])]

    def run_until_sorted(batch: list[Path], expected_rows: int) -> None:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            for photo in batch:
                shutil.copy(photo, inbox / photo.name)
            deadline = time.time() + 60
            while time.time() < deadline and (any(inbox.glob("*.jpeg")) or len(logged(out)) < expected_rows):
                time.sleep(0.2)
        finally:
            process.send_signal(signal.SIGTERM)  # what a service manager sends; SIGINT may be ignored in background jobs
            assert process.wait(timeout=20) == 130

    run_until_sorted(photos[:4], 4)
    run_until_sorted(photos[4:], 8)
    rows = logged(out)
    assert sorted(r[0] for r in rows) == sorted(p.name for p in photos)
    assert not any(inbox.glob("*.jpeg"))
    assert sum(1 for folder in ("ok", "defective", "review") for _ in (out / folder).iterdir()) == 8
