"""Watch mode: photos dropped into a folder are decided once, logged, and sorted; bad files do not stop it,
and neither do the plant's faults: --out on another filesystem, a locked log, a second watcher, two photos
that would end under one name, a writer whose clock is ahead. Every test counts the photos in and out."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from casting_inspection.serving import cli
from casting_inspection.serving.inference import Inspector
from casting_inspection.serving.watch.filing import FOLDERS
from casting_inspection.serving.watch.inbox import LOCK_NAME
from casting_inspection.serving.watch.log import LOG_NAME
from casting_inspection.serving.watch.watcher import Watcher
from line_servers import free_port

CLI = [sys.executable, "-m", "casting_inspection.serving.cli", "watch"]


def logged(out: Path) -> list[tuple]:
    with sqlite3.connect(out / LOG_NAME) as db:
        return db.execute("SELECT name, decision, destination, reason FROM inspections ORDER BY name").fetchall()


def drop(source: Path, inbox: Path, age_seconds: float = 10.0, name: str | None = None) -> Path:
    target = inbox / (name or source.name)
    shutil.copy(source, target)
    old = time.time() - age_seconds
    os.utime(target, (old, old))
    return target


def photos_in(inbox: Path) -> list[str]:
    """The visible files left in the inbox (the watcher's lock file is hidden)."""
    return sorted(p.name for p in inbox.iterdir() if p.is_file() and not p.name.startswith("."))


def filed(out: Path) -> list[bytes]:
    """The contents of every file sorted under `out`, in order: what came out, to count against what went in."""
    return sorted(p.read_bytes() for folder in FOLDERS.values() if (out / folder).is_dir() for p in (out / folder).iterdir())


def hidden_left(out: Path) -> list[str]:
    return [
        p.name
        for folder in FOLDERS.values()
        if (out / folder).is_dir()
        for p in (out / folder).iterdir()
        if p.name.startswith(".")
    ]


def assert_log_matches_files(out: Path, expected_rows: int) -> None:
    """One row per photo, each pointing to its own file, which holds the content the row was decided on."""
    with sqlite3.connect(out / LOG_NAME) as db:
        rows = db.execute("SELECT sha256, destination FROM inspections").fetchall()
    assert len(rows) == expected_rows and len({destination for _, destination in rows}) == expected_rows
    for digest, destination in rows:
        assert hashlib.sha256(Path(destination).read_bytes()).hexdigest() == digest, destination


def run_once(inbox: Path, out: Path, model: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [*CLI, str(inbox), "--out", str(out), "--once", "--model", str(model), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def watch_in_process(inbox: Path, out: Path, model: Path, *extra: str) -> int:
    """`casting-inspect watch --once` in this process (so that a test can stand in for the filesystem); its exit status."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["watch", str(inbox), "--out", str(out), "--once", "--settle", "0", "--model", str(model), *extra])
    return exited.value.code


def test_once_sorts_every_complete_file_and_rejects_bad_ones(exported_model, tmp_path):
    inbox, out = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    photos = sorted((exported_model["raw"] / "test").rglob("*.jpeg"))[:6]
    for photo in photos:
        drop(photo, inbox)
    (inbox / "garbage.jpeg").write_bytes(b"\x00" * 50)
    os.utime(inbox / "garbage.jpeg", (time.time() - 60, time.time() - 60))  # unchanged past --reject-after
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
    results = Inspector(exported_model["onnx"]).inspect([(p.name, p.read_bytes()) for p in photos])
    expected, why = {r.path: r.decision for r in results}, {r.path: r.review_reason for r in results}
    for name, decision, destination, reason in rows:
        assert Path(destination).exists() and Path(destination).parent.name == {"": "rejected"}.get(
            expected.get(name, ""), decision
        )
        if name == "garbage.jpeg":
            assert decision == "rejected" and "not an image" in reason
        else:
            assert decision == expected[name] and reason == why[name]  # a review says which band sent it
            assert bool(reason) == (decision == "review")
    assert photos_in(inbox) == ["still_writing.jpeg"]  # not complete yet: left alone


def test_a_rejected_or_reviewed_photo_keeps_its_anomaly_map_and_an_ok_one_none(exported_model, tmp_path):
    from casting_inspection.evaluation.painted import paint, rng_for

    inbox, out = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    good = Image.open(sorted((exported_model["raw"] / "test" / "ok_front").iterdir())[0])
    blotted, _ = paint(good, "blob", rng_for(0, "blob", "w"), good.size[0] / 32)
    blotted.save(inbox / "blot.png")
    photos = sorted((exported_model["raw"] / "test").rglob("*.jpeg"))[:6]
    for photo in photos:
        drop(photo, inbox)
    for path in inbox.iterdir():
        os.utime(path, (time.time() - 60, time.time() - 60))
    result = subprocess.run(
        [*CLI, str(inbox), "--out", str(out), "--once", "--settle", "1", "--model", str(exported_model["onnx"])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rows = logged(out)
    maps = {f"{p.parent.name}/{p.name}" for p in (out / "maps").rglob("*.png")}
    assert ("blot.png", "defective") in {(name, decision) for name, decision, _, _ in rows}
    for name, decision, destination, _ in rows:
        kept = f"{Path(destination).parent.name}/{Path(destination).name}.anomaly.png"
        assert (kept in maps) == (decision in ("defective", "review")), name
    assert not any(
        p.name.endswith(".anomaly.png")
        for folder in FOLDERS.values()
        if (out / folder).is_dir()
        for p in (out / folder).iterdir()
    )


def test_a_file_decided_before_a_restart_is_filed_not_decided_again(exported_model, tmp_path, capsys):
    """The log is written before the move: a file found in the inbox with a logged decision is only moved, and
    says so."""
    inbox, out = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    photo = next((exported_model["raw"] / "test" / "def_front").glob("*.jpeg"))
    inspector = Inspector(exported_model["onnx"])
    with Watcher(inspector, inbox, out, settle_seconds=0) as watcher:
        assert watcher.process([drop(photo, inbox)]) == 1
    (first,) = logged(out)
    again = drop(photo, inbox)  # the same file is back in the inbox, as after a crash between log and move
    capsys.readouterr()
    with Watcher(inspector, inbox, out, settle_seconds=0) as restarted:
        assert restarted.process([again]) == 1
    (line,) = capsys.readouterr().out.splitlines()  # filed, never passed over without a word
    assert line.split()[:3] == [Path(first[2]).parent.name, "-", photo.name] and line.endswith("(as logged before)")
    assert logged(out) == [first]  # no second decision
    assert not again.exists()  # filed where the log says: the same photo (name and content), so one file there
    assert [p.read_bytes() for p in Path(first[2]).parent.iterdir()] == [photo.read_bytes()]


@pytest.mark.slow
def test_running_watcher_survives_a_restart_and_decides_each_photo_once(exported_model, tmp_path):
    inbox, out = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    photos = sorted((exported_model["raw"] / "test").rglob("*.jpeg"))[:8]
    port = free_port()
    command = [*CLI, str(inbox), "--out", str(out), "--poll", "0.1", "--settle", "0.3", "--model", str(exported_model["onnx"]),
               "--metrics", f"127.0.0.1:{port}"]  # fmt: skip

    def run_until_sorted(batch: list[Path], expected_rows: int) -> None:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            for photo in batch:
                shutil.copy(photo, inbox / photo.name)
            deadline = time.time() + 60
            while time.time() < deadline and (any(inbox.glob("*.jpeg")) or len(logged(out)) < expected_rows):
                time.sleep(0.2)
            health = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            assert f"casting_inspect_rolling_parts {float(len(batch))}" in health  # this run's parts, rolling
            assert "casting_inspect_drift_share_outside{" in health
        finally:
            process.send_signal(signal.SIGTERM)  # what a service manager sends; SIGINT may be ignored in background jobs
            assert process.wait(timeout=20) == 130

    run_until_sorted(photos[:4], 4)
    run_until_sorted(photos[4:], 8)
    rows = logged(out)
    assert sorted(r[0] for r in rows) == sorted(p.name for p in photos)
    assert not any(inbox.glob("*.jpeg"))
    assert sum(1 for folder in ("ok", "defective", "review") for _ in (out / folder).iterdir()) == 8


# --- the plant's faults ---------------------------------------------------------------------------------


def cross_filesystem(monkeypatch, inbox: Path) -> None:
    """Every link or rename between the inbox and elsewhere fails with EXDEV, as between two filesystems."""

    def refuse(real):
        def call(source, target, *args, **kwargs):
            if Path(source).is_relative_to(inbox) != Path(target).is_relative_to(inbox):
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(source), None, str(target))
            return real(source, target, *args, **kwargs)

        return call

    for name in ("link", "rename", "replace"):
        monkeypatch.setattr(os, name, refuse(getattr(os, name)))


@pytest.mark.slow
def test_out_on_another_filesystem_is_copied_checked_then_deleted(exported_model, tmp_path, monkeypatch):
    """Forced EXDEV (always runs): each photo is copied into --out and only then deleted from the inbox."""
    inbox, out = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    photos = sorted((exported_model["raw"] / "test").rglob("*.jpeg"))[:4]
    for photo in photos:
        drop(photo, inbox)
    cross_filesystem(monkeypatch, inbox)
    assert watch_in_process(inbox, out, exported_model["onnx"]) == 0
    assert photos_in(inbox) == []
    assert filed(out) == sorted(p.read_bytes() for p in photos)
    assert hidden_left(out) == []
    assert_log_matches_files(out, 4)
    assert watch_in_process(inbox, out, exported_model["onnx"]) == 0  # and again: the restart that failed before


@pytest.mark.slow
def test_a_copy_left_by_a_killed_watcher_is_removed_at_start(exported_model, tmp_path):
    inbox, out = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    (out / "ok").mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    stale, running = out / "ok" / f".watch-{dead}-{'0' * 16}.tmp", out / "ok" / f".watch-{os.getpid()}-{'1' * 16}.tmp"
    stale.write_bytes(b"half a photo")
    running.write_bytes(b"a copy in progress")  # another watcher (this live process) sorting into the same --out
    with Watcher(Inspector(exported_model["onnx"]), inbox, out, settle_seconds=0):
        pass
    assert not stale.exists() and running.exists()


@pytest.mark.slow
@pytest.mark.parametrize("interrupt_at_fsync", [1, 2], ids=["while-syncing-the-copy", "after-linking-before-deleting"])
def test_a_copy_cut_short_loses_nothing(exported_model, tmp_path, monkeypatch, interrupt_at_fsync):
    """SIGTERM/Ctrl-C in the middle of a copy to another filesystem: the photo is in the inbox, in --out, or
    both, never nowhere; no temporary is left; the next run files everything exactly once."""
    inbox, out = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    photos = sorted((exported_model["raw"] / "test").rglob("*.jpeg"))[:3]
    for photo in photos:
        drop(photo, inbox)
    cross_filesystem(monkeypatch, inbox)
    calls, real_fsync = [], os.fsync

    def fsync(fd):
        calls.append(fd)
        if len(calls) == interrupt_at_fsync:
            raise KeyboardInterrupt
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert watch_in_process(inbox, out, exported_model["onnx"]) == 130
    assert set(filed(out) + [p.read_bytes() for p in inbox.iterdir() if p.name in photos_in(inbox)]) == {
        p.read_bytes() for p in photos
    }
    assert hidden_left(out) == []
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert watch_in_process(inbox, out, exported_model["onnx"]) == 0
    assert photos_in(inbox) == []
    assert filed(out) == sorted(p.read_bytes() for p in photos)
    assert_log_matches_files(out, 3)


@pytest.fixture
def other_filesystem(tmp_path) -> Path:
    """A tmpfs mounted for the test: a second filesystem, as another disk or a network share would be."""
    mount = tmp_path / "other"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no `mount` command to make a second filesystem; the forced-EXDEV test covers the copy path")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True, text=True)
    if result.returncode != 0:
        reason = " ".join(result.stderr.split()) or f"exit {result.returncode}"
        pytest.skip(
            f"cannot mount a tmpfs here ({reason}; needs root outside an unprivileged container); the forced-EXDEV test covers the copy path"
        )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], capture_output=True)


@pytest.mark.slow
def test_out_on_a_mounted_tmpfs(exported_model, tmp_path, other_filesystem):
    inbox, out = tmp_path / "inbox", other_filesystem / "sorted"
    inbox.mkdir()
    photos = sorted((exported_model["raw"] / "test").rglob("*.jpeg"))[:4]
    for photo in photos:
        drop(photo, inbox)
    result = run_once(inbox, out, exported_model["onnx"])
    assert result.returncode == 0, result.stderr
    assert "on another filesystem" in result.stderr
    assert photos_in(inbox) == []
    assert filed(out) == sorted(p.read_bytes() for p in photos)
    assert hidden_left(out) == []
    assert_log_matches_files(out, 4)


@pytest.mark.slow
def test_a_file_too_large_for_another_disk_stays_in_the_inbox_never_copied(exported_model, tmp_path, other_filesystem):
    """Refused unread for its size, it could be gigabytes: a copy to another disk could fill it. It is named, left."""
    inbox, out = tmp_path / "inbox", other_filesystem / "sorted"
    inbox.mkdir()
    with open(inbox / "huge.jpg", "wb") as f:
        f.truncate(Inspector(exported_model["onnx"]).spec.max_file_bytes + 1_000_000)  # sparse: no blocks on disk
    old = time.time() - 60
    os.utime(inbox / "huge.jpg", (old, old))
    result = run_once(inbox, out, exported_model["onnx"])
    assert result.returncode == 3 and "never copied (a copy could fill that disk)" in result.stderr, result.stderr
    assert photos_in(inbox) == ["huge.jpg"] and filed(out) == [] and hidden_left(out) == []


@pytest.mark.slow
def test_a_file_left_for_its_size_is_not_read_again_at_each_look(exported_model, tmp_path, other_filesystem):
    """Said once, left in the inbox: a watcher that read and hashed it at every poll would fall behind the camera."""
    inbox, out = tmp_path / "inbox", other_filesystem / "sorted"
    inbox.mkdir()
    huge = inbox / "huge.jpg"
    with open(huge, "wb") as f:
        f.truncate(Inspector(exported_model["onnx"]).spec.max_file_bytes + 1_000_000)
    old = time.time() - 60  # unchanged past --reject-after: rejected, not held as a photo still being written
    os.utime(huge, (old, old))

    def read_so_far() -> int:
        return int(next(line for line in Path("/proc/self/io").read_text().splitlines() if line.startswith("rchar")).split()[1])

    with Watcher(Inspector(exported_model["onnx"]), inbox, out, settle_seconds=0) as watcher:
        watcher.process([huge])
        before = read_so_far()
        for _ in range(3):
            watcher.process([huge])
        assert read_so_far() - before < 1_000_000 and watcher.left == 4 and huge.exists()


def hold_log_locked(out: Path, watcher: subprocess.Popen, release_after: float = 1.0) -> tuple[str, str]:
    """Hold the log with BEGIN EXCLUSIVE (as a backup or an sqlite3 shell may) until the watcher has said it
    is waiting, i.e. past the 5 s after which sqlite3 gives up by default, then `release_after` seconds more.
    Returns the watcher's stdout and stderr."""
    db = sqlite3.connect(out / LOG_NAME, isolation_level=None, timeout=30)
    db.execute("BEGIN EXCLUSIVE")
    stderr, waiting = [], threading.Event()

    def read() -> None:
        for line in watcher.stderr:
            stderr.append(line)
            if "locked by another process" in line:
                waiting.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while not waiting.is_set() and watcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(release_after)
    db.execute("COMMIT")
    db.close()
    stdout = watcher.stdout.read()
    watcher.wait(timeout=120)
    reader.join(timeout=10)
    return stdout, "".join(stderr)


@pytest.mark.slow
@pytest.mark.parametrize("log_exists", [False, True], ids=["new-log", "existing-log"])
def test_a_log_locked_by_another_process_is_waited_for(exported_model, tmp_path, log_exists):
    inbox, out = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    out.mkdir()
    if log_exists:
        assert run_once(inbox, out, exported_model["onnx"]).returncode == 0
    photos = sorted((exported_model["raw"] / "test").rglob("*.jpeg"))[:3]
    for photo in photos:
        drop(photo, inbox)
    command = [*CLI, str(inbox), "--out", str(out), "--once", "--model", str(exported_model["onnx"])]
    _, stderr = hold_log_locked(out, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    assert "Traceback" not in stderr and "error:" not in stderr, stderr
    assert "locked by another process" in stderr
    assert photos_in(inbox) == []
    assert filed(out) == sorted(p.read_bytes() for p in photos)
    assert_log_matches_files(out, 3)


@pytest.mark.slow
def test_a_log_locked_past_log_wait_leaves_the_photos_in_the_inbox(exported_model, tmp_path):
    """--once gives up after --log-wait with one line and exit 1; nothing was moved, so nothing is lost."""
    inbox, out = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    out.mkdir()
    assert run_once(inbox, out, exported_model["onnx"]).returncode == 0
    photos = sorted((exported_model["raw"] / "test").rglob("*.jpeg"))[:3]
    for photo in photos:
        drop(photo, inbox)
    command = [*CLI, str(inbox), "--out", str(out), "--once", "--log-wait", "1", "--model", str(exported_model["onnx"])]
    watcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = sqlite3.connect(out / LOG_NAME, isolation_level=None, timeout=30)
    db.execute("BEGIN EXCLUSIVE")
    try:
        _, stderr = watcher.communicate(timeout=120)
    finally:
        db.execute("ROLLBACK")
        db.close()
    assert watcher.returncode == 1, stderr
    errors = [line for line in stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("casting-inspect watch: error: ") and "--log-wait" in errors[0], stderr
    assert "Traceback" not in stderr
    assert photos_in(inbox) == sorted(p.name for p in photos)
    assert filed(out) == []


@pytest.mark.slow
def test_a_second_watcher_on_the_same_inbox_is_refused(exported_model, tmp_path):
    inbox, out = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    model = str(exported_model["onnx"])
    first = subprocess.Popen(
        [*CLI, str(inbox), "--out", str(out), "--poll", "0.1", "--settle", "0.3", "--model", model],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 60
        while not (out / LOG_NAME).exists() and time.time() < deadline:  # the first one is up
            time.sleep(0.1)
        second = subprocess.run(
            [*CLI, str(inbox), "--out", str(tmp_path / "elsewhere"), "--poll", "0.1", "--model", model],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2, second.stderr
        lines = second.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("casting-inspect watch: error: "), second.stderr
        assert str(inbox / LOCK_NAME) in lines[0] and f"pid {first.pid}" in lines[0]
        photos = sorted((exported_model["raw"] / "test").rglob("*.jpeg"))[:6]
        for photo in photos:
            shutil.copy(photo, inbox / photo.name)
        deadline = time.time() + 60
        while time.time() < deadline and (photos_in(inbox) or len(logged(out)) < len(photos)):
            time.sleep(0.2)
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=20) == 130
    assert photos_in(inbox) == []
    assert filed(out) == sorted(p.read_bytes() for p in photos)
    assert_log_matches_files(out, 6)
    assert not (tmp_path / "elsewhere").exists()


def two_photos_with_one_decision(exported_model) -> tuple[str, Path, Path, Path]:
    """A decision and two photos the model gives it, and a third photo: different contents all."""
    photos = sorted((exported_model["raw"] / "test").rglob("*.jpeg"))
    results = Inspector(exported_model["onnx"]).inspect([(str(p), p.read_bytes()) for p in photos])
    by_decision: dict[str, list[Path]] = {}
    for photo, result in zip(photos, results):
        by_decision.setdefault(result.decision, []).append(photo)
    decision, same = next((d, ps) for d, ps in by_decision.items() if len(ps) >= 2)
    other = next(p for p in photos if p not in same[:2])
    return FOLDERS[decision], same[0], same[1], other


def test_two_photos_that_would_end_under_one_name_are_both_kept(exported_model, tmp_path):
    """ok/part.jpeg exists from an earlier run; the inbox holds a new part.jpeg, which goes to part.<hash>.jpeg,
    and a photo named part.<that hash>.jpeg: before, the second move overwrote the first."""
    folder, first, second, earlier = two_photos_with_one_decision(exported_model)
    inbox, out = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    (out / folder).mkdir(parents=True)
    shutil.copy(earlier, out / folder / "part.jpeg")
    drop(first, inbox, name="part.jpeg")
    drop(second, inbox, name=f"part.{hashlib.sha256(first.read_bytes()).hexdigest()[:8]}.jpeg")
    result = run_once(inbox, out, exported_model["onnx"])
    assert result.returncode == 0, result.stderr
    assert photos_in(inbox) == []
    assert filed(out) == sorted([earlier.read_bytes(), first.read_bytes(), second.read_bytes()])
    assert (out / folder / "part.jpeg").read_bytes() == earlier.read_bytes()
    assert_log_matches_files(out, 2)


@pytest.mark.slow
def test_a_destination_taken_after_the_decision_is_not_overwritten(exported_model, tmp_path, monkeypatch):
    """The watcher stops between logging a decision and moving the photo; meanwhile another file takes the
    logged name (a second inbox sorted into the same --out). The restart files the photo under another name."""
    inbox, out = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    photo, other = sorted((exported_model["raw"] / "test").rglob("*.jpeg"))[:2]
    drop(photo, inbox)

    def power_cut(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        for name in ("link", "rename", "replace"):
            patch.setattr(os, name, power_cut)
        assert watch_in_process(inbox, out, exported_model["onnx"]) == 130
    ((_, _, destination, _),) = logged(out)
    shutil.copy(other, destination)
    assert watch_in_process(inbox, out, exported_model["onnx"]) == 0
    assert Path(destination).read_bytes() == other.read_bytes()
    assert photos_in(inbox) == []
    assert filed(out) == sorted([photo.read_bytes(), other.read_bytes()])
    ((_, _, moved, _),) = logged(out)
    assert Path(moved).read_bytes() == photo.read_bytes()


def test_nothing_in_the_inbox_is_ignored_silently(exported_model, tmp_path):
    """A photo modified in the future (the writer's clock ahead) is decided; everything else is named."""
    inbox, out = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    photo = next((exported_model["raw"] / "test" / "def_front").glob("*.jpeg"))
    future = drop(photo, inbox, age_seconds=-3600, name="future.jpeg")
    drop(photo, inbox, name=".hidden.jpeg")
    drop(photo, inbox, name="upload.jpeg.part")
    recent = drop(photo, inbox, age_seconds=0, name="recent.jpeg")
    (inbox / "folder").mkdir()
    os.mkfifo(inbox / "pipe.jpeg")
    (inbox / "link.jpeg").symlink_to(photo)
    writing = threading.Event()

    def keep_writing() -> None:  # a writer still at it, however long the watcher takes to start on a busy machine
        while not writing.wait(0.05):
            os.utime(recent)

    writer = threading.Thread(target=keep_writing, daemon=True)
    writer.start()
    try:
        result = run_once(inbox, out, exported_model["onnx"], "--settle", "1")
    finally:
        writing.set()
        writer.join()
    assert result.returncode == 0, result.stderr
    assert [row[0] for row in logged(out)] == ["future.jpeg"] and not future.exists()
    notes = {
        "future.jpeg": "in the future",
        ".hidden.jpeg": "hidden",
        "upload.jpeg.part": ".part",
        "recent.jpeg": "may still be being written",
        "folder": "a folder",
        "pipe.jpeg": "not a regular file",
        "link.jpeg": "symbolic link",
    }
    for name, reason in notes.items():
        assert any(line.startswith(f"watch: {name}: ") and reason in line for line in result.stderr.splitlines()), (
            name,
            result.stderr,
        )
    left = sorted(p.name for p in inbox.iterdir() if p.name != LOCK_NAME)
    assert left == sorted(set(notes) - {"future.jpeg"})


@pytest.mark.slow
def test_a_running_watcher_decides_a_photo_from_the_future_once_it_stops_changing(exported_model, tmp_path):
    inbox, out = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    future = drop(next((exported_model["raw"] / "test").rglob("*.jpeg")), inbox, age_seconds=-3600)
    watcher = Watcher(Inspector(exported_model["onnx"]), inbox, out, settle_seconds=1.0)
    now = time.time()
    assert watcher.complete_files(now) == []
    assert watcher.complete_files(now + 0.5) == []  # unchanged, but not yet for --settle by this clock
    assert watcher.complete_files(now + 1.5) == [future]
    watcher.close()


def test_a_black_frame_is_filed_as_not_a_part_never_ok(exported_model, tmp_path):
    """The camera's lamp off: every frame is black. Each goes to not_a_part/, none to ok/."""
    from test_predict import frames

    inbox, out = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    for name in ("black.png", "white.png", "strip.png"):
        (inbox / name).write_bytes(frames()[name])
        os.utime(inbox / name, (time.time() - 10, time.time() - 10))
    result = subprocess.run(
        [*CLI, str(inbox), "--out", str(out), "--once", "--settle", "2", "--model", str(exported_model["onnx"])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (out / "not_a_part").iterdir()) == ["black.png", "strip.png", "white.png"]
    assert not any((out / "ok").iterdir())
    assert all(reason for _, decision, _, reason in logged(out) if decision == "not_a_part")  # the guard's reason, logged


def test_a_photo_replaced_after_its_decision_is_not_filed_under_it(exported_model, tmp_path):
    """A camera that reuses one file name writes the next photo while the model decides the last one: the new
    photo is never filed under the old decision; it is decided itself."""
    inbox, out = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    ok_photo = sorted((exported_model["raw"] / "test" / "ok_front").glob("*.jpeg"))[0]
    black = io.BytesIO()
    Image.new("L", (64, 64), 0).save(black, "PNG")  # not a part: never ok
    drop(ok_photo, inbox, name="part.png")
    inspector = Inspector(exported_model["onnx"])
    decide = inspector.inspect

    def camera_writes_during_the_decision(named, *args, **kwargs):
        results = decide(named, *args, **kwargs)
        staged = inbox / ".next.tmp"
        staged.write_bytes(black.getvalue())
        os.replace(staged, inbox / "part.png")  # the camera's atomic write of the next part
        return results

    inspector.inspect = camera_writes_during_the_decision
    with Watcher(inspector, inbox, out, settle_seconds=0) as watcher:
        watcher.process([inbox / "part.png"])
        inspector.inspect = decide
        watcher.process([inbox / "part.png"])
    where = [p.parent.name for p in out.rglob("*") if p.is_file() and p.read_bytes() == black.getvalue()]
    assert where == ["not_a_part"], where  # filed once, under its own decision
    assert photos_in(inbox) == [] and "not_a_part" in [decision for _, decision, _, _ in logged(out)]


def test_a_photo_swapped_for_a_link_to_a_pipe_after_its_decision_neither_hangs_nor_is_read(exported_model, tmp_path):
    """Before: filing opened the inbox name again, following the link: a pipe hung the watcher for good (a link to
    /dev/zero filled the disk). Now the bytes that were decided are filed; the link stays in the inbox, unread."""
    inbox, out = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    ok_photo = sorted((exported_model["raw"] / "test" / "ok_front").glob("*.jpeg"))[0]
    drop(ok_photo, inbox, name="part.jpeg")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    inspector = Inspector(exported_model["onnx"])
    decide = inspector.inspect

    def swapped_during_the_decision(named, *args, **kwargs):
        results = decide(named, *args, **kwargs)
        (inbox / "part.jpeg").unlink()
        (inbox / "part.jpeg").symlink_to(fifo)
        return results

    inspector.inspect = swapped_during_the_decision

    def watch_once() -> None:
        with Watcher(inspector, inbox, out, settle_seconds=0) as watcher:  # its log belongs to this thread
            watcher.process([inbox / "part.jpeg"])

    filing = threading.Thread(target=watch_once, daemon=True)
    filing.start()
    filing.join(timeout=30)
    hung = filing.is_alive()
    if hung:  # let the blocked open() go, so the test ends
        os.close(os.open(fifo, os.O_WRONLY))
        filing.join(timeout=30)
    assert not hung, "the watcher hung on the pipe"
    filed = [p for p in out.rglob("*.jpeg") if p.read_bytes() == ok_photo.read_bytes()]
    assert len(filed) == 1 and (inbox / "part.jpeg").is_symlink()  # the decided bytes filed; the link left


def test_the_output_folder_may_not_be_the_inbox_nor_hold_it(exported_model, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for out in (inbox, tmp_path):
        result = subprocess.run(
            [*CLI, str(inbox), "--out", str(out), "--once", "--model", str(exported_model["onnx"])],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 1 and "give --out a folder outside it" in result.stderr, result.stderr
    (inbox / "sorted").write_bytes(b"a file where the default output folder goes")
    result = subprocess.run(
        [*CLI, str(inbox), "--once", "--model", str(exported_model["onnx"])], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1 and f"--out {inbox / 'sorted'}: a file, not a folder" in result.stderr, result.stderr
    assert not (inbox / LOG_NAME).exists()


def test_once_says_so_when_a_settled_photo_cannot_be_read(exported_model, tmp_path):
    inbox, out = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    locked = drop(sorted((exported_model["raw"] / "test" / "ok_front").glob("*.jpeg"))[0], inbox)
    os.chmod(locked, 0)
    command = [*CLI, str(inbox), "--out", str(out), "--once", "--settle", "0", "--model", str(exported_model["onnx"])]
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"] if os.geteuid() == 0 else []
    result = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    assert f"{locked.name}: cannot be read (Permission denied)" in result.stderr
    assert photos_in(inbox) == [locked.name]


def test_a_photo_whose_writer_paused_is_decided_once_complete_never_rejected_half_written(exported_model, tmp_path):
    inbox, out = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    whole = sorted((exported_model["raw"] / "test" / "def_front").glob("*.jpeg"))[0].read_bytes()
    half = inbox / "part.jpeg"
    half.write_bytes(whole[: len(whole) // 2])
    old = time.time() - 5  # the writer paused longer than --settle
    os.utime(half, (old, old))
    with Watcher(Inspector(exported_model["onnx"]), inbox, out, settle_seconds=1.0, reject_after=30.0) as watcher:
        watcher.process(watcher.once())
        assert photos_in(inbox) == ["part.jpeg"] and logged(out) == []  # kept: it may still be being written
        with open(half, "ab") as writer:  # the writer wakes up and finishes
            writer.write(whole[len(whole) // 2 :])
        os.utime(half, (old, old))
        watcher.process(watcher.once())
    ((name, decision, destination, reason),) = logged(out)
    assert decision != "rejected" and "truncated" not in reason
    assert Path(destination).read_bytes() == whole and photos_in(inbox) == []


def test_a_name_cannot_forge_a_decision_line(exported_model, tmp_path):
    inbox, out = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    source = sorted((exported_model["raw"] / "test" / "def_front").glob("*.jpeg"))[0]
    drop(source, inbox, name="part\nok            0.0001  good.jpeg")
    drop(source, inbox, name="\x1b[32mgreen.jpeg")
    result = subprocess.run(
        [*CLI, str(inbox), "--out", str(out), "--once", "--settle", "0", "--model", str(exported_model["onnx"])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and not any(line.startswith("ok ") and "good.jpeg" in line for line in lines), lines
    assert "part\\nok" in result.stdout and "\x1b" not in result.stdout + result.stderr and "\\x1b[32m" in result.stdout


def test_a_file_too_large_to_read_is_moved_by_name_never_copied(exported_model, tmp_path):
    """Its content decided nothing, and a copy of gigabytes could fill the disk: on the inbox's disk it is renamed."""
    inbox, out = tmp_path / "inbox", tmp_path / "sorted"
    inbox.mkdir()
    huge = inbox / "huge.jpg"
    with open(huge, "wb") as f:
        f.truncate(Inspector(exported_model["onnx"]).spec.max_file_bytes + 1_000_000)  # sparse: no blocks on disk
    old = time.time() - 60
    os.utime(huge, (old, old))
    inode = huge.stat().st_ino
    assert watch_in_process(inbox, out, exported_model["onnx"]) == 0
    (rejected,) = (out / "rejected").iterdir()
    assert rejected.stat().st_ino == inode and rejected.stat().st_blocks == 0 and photos_in(inbox) == []
    ((name, decision, _, reason),) = logged(out)
    assert (name, decision) == ("huge.jpg", "rejected") and reason.startswith("file too large")
