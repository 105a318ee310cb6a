"""Inline inspection: decide photos as a camera drops them into a folder, log each decision, sort the files.

Crash safety: a decision is committed to the SQLite log before its file is moved, and the log is keyed
by file name and content hash. After a restart, a file still in the inbox whose decision is logged is
moved where the log says, not decided again; a file with no logged decision is decided. Nothing is
deleted: every file ends in ok/, defective/, review/ or rejected/ under the output folder.

Filing, on any disk: each photo is copied to a hidden temporary file next to its destination, fsynced,
checked against the content hash it was decided on, linked under its final name, and only then deleted
from the inbox. A copy cut short leaves the photo in the inbox; the temporary is removed then, or at the
next start after a SIGKILL. A photo replaced in the inbox after its decision is decided again. A file refused
unread for its size is renamed into rejected/ on the inbox's disk instead: a copy could fill the disk.

Faults of a plant that must neither stop the line nor lose a photo:
- the log locked by another process (a backup, an sqlite3 shell): each write is retried, with a note
  on stderr, for up to `log_wait` seconds; then the photos wait in the inbox for the next look.
- a second watcher on the same inbox: refused at start (`WatchBusy`), since the first holds an
  exclusive flock on INBOX/.casting-inspect-watch.lock for as long as it runs.
- two photos that would end under one name: nothing is ever overwritten. A taken name gets a short
  content-hash suffix, and names are claimed with link()/O_EXCL, so a race cannot overwrite either.
- every entry of the inbox that is not decided is named on stderr with why: hidden files and partial
  downloads, folders, links, pipes, files modified too recently. A modification time in the future
  (a writer whose clock is ahead) is judged by this machine's clock: decided once unchanged for `settle`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import os
import signal
import stat
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from casting_inspection.core.errors import InspectionError
from casting_inspection.core.processes import pid_alive
from casting_inspection.core.text import printable
from casting_inspection.serving.inference import Inspector, Result
from casting_inspection.serving.maps import write_overlay
from casting_inspection.serving.watch.filing import FOLDERS, TEMPORARY, claim_name, fsync_dir, names, sha256_of
from casting_inspection.serving.watch.inbox import (
    FUTURE_SECONDS,
    LINGER_SECONDS,
    LOCK_NAME,
    lock_inbox,
    note,
    skip_reason,
)
from casting_inspection.serving.watch.log import LOG_NAME, InspectionLog, LogLocked, kept

BATCH = 64


class _CannotMove(Exception):
    """A rename cannot reach the output folder: the photo is copied instead."""


class _TooLargeToCopy(Exception):
    """A file refused unread for its size, with --out on another disk: it stays in the inbox, never copied."""


@dataclasses.dataclass
class _Photo:
    path: Path
    data: bytes
    digest: str
    identity: tuple[int, int, int, int, int]  # device, inode, size, mtime, ctime: the file that was read (a rewrite in
    # place that restores size and mtime, as `rsync --inplace -t` does, still moves ctime)


def _refuse_overlap(inbox: Path, out: Path) -> None:
    """The output folder may sit inside the inbox (the default INBOX/sorted), never be it or hold it: the
    watcher would file its own log and sorted photos as new photos."""
    inbox, out_resolved = inbox.resolve(), out.resolve()
    if out_resolved == inbox or out_resolved in inbox.parents:
        raise InspectionError(
            f"--out {out} is the inbox {inbox} or holds it; give --out a folder outside it (default INBOX/sorted)"
        )
    if out.exists() and not out.is_dir():
        raise InspectionError(f"--out {out}: a file, not a folder; move that file or give --out another folder")


class Watcher:
    def __init__(
        self,
        inspector: Inspector,
        inbox: Path,
        out: Path,
        settle_seconds: float,
        log_wait: float = 60.0,
        reject_after: float = 30.0,
    ):
        if not inbox.is_dir():
            raise InspectionError(f"{inbox}: no such folder to watch")
        out = Path(out).absolute()  # the log's destinations hold whatever folder a later watcher starts in
        _refuse_overlap(inbox, out)
        self.inspector, self.inbox, self.out, self.settle, self.log_wait = inspector, inbox, out, settle_seconds, log_wait
        self.seen: dict[Path, tuple[tuple[int, int], float]] = {}  # size and mtime at the last look, and since when
        self.skipped: dict[tuple[str, str], float] = {}  # entries left alone, and when they were first seen so
        self.noted: set[tuple[str, str]] = set()  # what was said already, so that a poll does not repeat it
        self.left = 0  # complete photos that could not be filed this run; they stay in the inbox
        self.reject_after = reject_after  # a file that is not a usable image is rejected once unchanged this long
        self.unusable_since: dict[tuple[str, str], float] = {}  # (name, content) -> when this machine first saw it
        self.unreachable = ""  # why the inbox itself cannot be read now (a share gone): said once, until it is back
        folder = inbox.stat()
        self.folder = (folder.st_dev, folder.st_ino)  # the inbox locked: another folder there is not it
        self.left_alone: dict[str, tuple[int, int]] = {}  # name -> size and mtime of a file too large to copy, left
        self.log: InspectionLog | None = None
        self.health = None  # serving.health.LineHealth: the rolling rates and drift, when watch serves --metrics
        self.lock = lock_inbox(inbox, out)
        try:
            self.same_disk = self._check_out()
            self.log = InspectionLog(out, log_wait)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the log and release the inbox (also done by the kernel when the process ends)."""
        if self.log is not None:
            self.log.close()
            self.log = None
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_out(self) -> dict[Path, bool]:
        """Make and try the output folders before the first photo: writable, and whether each is on the inbox's
        disk. Removes copies left by a watcher that was killed."""
        same_disk = {}
        inbox_device = self.inbox.stat().st_dev
        for name in FOLDERS.values():
            folder = self.out / name
            try:
                folder.mkdir(parents=True, exist_ok=True)
                probe = folder / f".watch-probe-{os.getpid()}"
                os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600))
                probe.unlink()
            except OSError as exc:
                raise InspectionError(
                    f"{folder}: cannot write there ({exc.strerror}); give --out a folder this user can write"
                ) from None
            for entry in folder.iterdir():
                match = TEMPORARY.fullmatch(entry.name)
                if match and not pid_alive(int(match.group(1))):
                    entry.unlink(missing_ok=True)
                    note(
                        f"removed {entry}, a copy cut short when an earlier watcher was killed (its photo is still in the inbox)"
                    )
            same_disk[folder] = folder.stat().st_dev == inbox_device
            if not same_disk[folder]:
                note(
                    f"{folder} is on another filesystem than {self.inbox}: each photo is copied, synced and checked there before it leaves the inbox"
                )
        return same_disk

    def _note_once(self, name: str, reason: str) -> None:
        if (name, reason) not in self.noted:
            self.noted.add((name, reason))
            note(f"{name}: {reason}")

    def scan(self, now: float, patient: bool = True) -> list[tuple[Path, os.stat_result]]:
        """The inbox's regular, visible files. Every other entry is named once on stderr with why it is
        left alone; hidden and partial files only after LINGER_SECONDS (unless `patient` is False), since
        a writer usually renames them a moment later."""
        found, skipped = [], {}
        try:
            entries, now_there = sorted(self.inbox.iterdir()), self.inbox.stat()
        except OSError as exc:  # a share dropped, a folder renamed: nothing arrives; said once, looked at again
            if not self.unreachable:
                note(f"{self.inbox}: the inbox cannot be read ({exc.strerror}); looking again at each poll")
            self.unreachable = exc.strerror or str(exc)
            return []
        if self.unreachable:
            note(f"{self.inbox}: the inbox can be read again")
            self.unreachable = ""
        if (now_there.st_dev, now_there.st_ino) != self.folder:  # its lock and its log's photos are the old folder's
            raise InspectionError(
                f"{self.inbox}: another folder now stands where the inbox was (moved, then made again?); restart the "
                "watcher so that it locks and watches this one"
            )
        for path in entries:
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue
            if path.name == LOCK_NAME or (stat.S_ISDIR(info.st_mode) and path.resolve() == self.out.resolve()):
                continue  # the watcher's own lock file and output folder
            skip = skip_reason(path.name, info)
            if skip is None:
                found.append((path, info))
                continue
            reason, transient = skip
            skipped[(path.name, reason)] = first = self.skipped.get((path.name, reason), now)
            if not (transient and patient) or now - first >= LINGER_SECONDS:
                self._note_once(path.name, f"skipped: {reason}")
        self.skipped = skipped
        present = {path.name for path, _ in found} | {name for name, _ in skipped}
        self.noted = {(name, reason) for name, reason in self.noted if name in present}
        return found

    def complete_files(self, now: float) -> list[Path]:
        """Files unchanged since the last look and either not modified for `settle` seconds or seen
        unchanged for that long by this machine's clock (what counts when the writer's clock is ahead)."""
        ready, current = [], {}
        for path, info in self.scan(now):
            signature = (info.st_size, info.st_mtime_ns)
            previous = self.seen.get(path)
            unchanged = previous is not None and previous[0] == signature
            since = previous[1] if unchanged else now
            current[path] = (signature, since)
            age = now - info.st_mtime
            if age < -FUTURE_SECONDS:
                self._note_once(
                    path.name,
                    f"modified {-age:.0f} s in the future by this machine's clock (the writer's clock is ahead?); "
                    f"decided once unchanged for {self.settle:g} s",
                )
            if (unchanged or self.settle == 0) and (age >= self.settle or now - since >= self.settle):
                ready.append(path)
        self.seen = current
        return ready

    def once(self) -> list[Path]:
        """One look for --once: files not modified for `settle` seconds are complete; a file modified in the
        future is watched for `settle` seconds and decided if it did not change; a recent one is left."""
        now, ready, future = time.time(), [], []
        if not self.inbox.is_dir():
            raise InspectionError(f"{self.inbox}: the inbox is gone or cannot be read; check the folder or the share")
        for path, info in self.scan(now, patient=False):
            age = now - info.st_mtime
            if age >= self.settle:
                ready.append(path)
            elif age < -FUTURE_SECONDS:
                future.append((path, (info.st_size, info.st_mtime_ns)))
                note(
                    f"{path.name}: modified {-age:.0f} s in the future by this machine's clock (the writer's clock is ahead?); "
                    f"decided if unchanged for {self.settle:g} s"
                )
            else:
                note(
                    f"{path.name}: modified {age:.1f} s ago, under --settle {self.settle:g} s; may still be being written, left for the next run"
                )
        if future:
            time.sleep(self.settle)
        for path, signature in future:
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue
            if (info.st_size, info.st_mtime_ns) == signature:
                ready.append(path)
            else:
                note(f"{path.name}: still changing; left for the next run")
        return sorted(ready)

    def process(self, paths: list[Path]) -> int:
        """Decide (or re-file) these complete files; returns how many were filed. One that cannot be read
        or filed stays in the inbox, named on stderr, for the next look."""
        photos = self._read(paths)
        logged = self.log.retry("look up earlier decisions", lambda: self._logged(photos))
        fresh = [photo for photo in photos if (photo.path.name, photo.digest) not in logged]
        arrays, anomaly_maps = [], []
        named = [(photo.path.name, photo.data) for photo in fresh]
        results = self.inspector.inspect(named, decoded=arrays, maps=anomaly_maps) if fresh else []
        pictures = self._pictures(fresh, results, arrays, anomaly_maps)
        if self.health is not None and arrays:
            self.health.observe([r.decision for r in results if not r.error], np.stack(arrays))
        fresh, results = self._hold_young_rejections(fresh, results)
        photos = [photo for photo in photos if (photo.path.name, photo.digest) in logged] + fresh
        claimed = set(logged.values())
        destinations = self.log.retry("log the decisions", lambda: self._log(fresh, results, set(claimed)))
        shown = {(photo.path.name, photo.digest): result for photo, result in zip(fresh, results)}
        filed = 0
        for photo in photos:
            key = (photo.path.name, photo.digest)
            final = self._file_safely(photo, logged.get(key) or destinations[key])
            if final is None:
                continue
            filed += 1
            if key in shown:
                result = shown[key]
                if result.decision in ("defective", "review") and key in pictures:
                    self._keep_map(photo, final, *pictures[key])
                probability = f"{result.defect_probability:.4f}" if result.defect_probability is not None else "-"
                renamed = f"  -> {final.name}" if final.name != photo.path.name else ""
                reason = f"  ({result.why})" if result.why else ""
                line = f"{result.decision or 'rejected':<10}{probability:>8}  {photo.path.name}{renamed}{reason}"
                print(printable(line), flush=True)
            else:  # decided before (a run that stopped before filing, or the same photo dropped again): as logged
                line = f"{final.parent.name:<10}{'-':>8}  {photo.path.name}  -> {final.name}  (as logged before)"
                print(printable(line), flush=True)
        return filed

    @staticmethod
    def _pictures(fresh: list[_Photo], results: list[Result], arrays: list, anomaly_maps: list) -> dict:
        """(image, anomaly map) of each decided photo, by (name, content): the arrays come in the order of the decided."""
        decided = [(photo.path.name, photo.digest) for photo, result in zip(fresh, results) if not result.error]
        return dict(zip(decided, zip(arrays, anomaly_maps))) if anomaly_maps else {}

    def _keep_map(self, photo: _Photo, final: Path, image, anomaly_map) -> None:
        """The anomaly map over a rejected or reviewed photo, in maps/FOLDER/ under its filed name: where a person looks."""
        try:
            path = self.out / "maps" / final.parent.name / f"{final.name}.anomaly.png"  # names are unique per folder
            write_overlay(path, image, anomaly_map, self.inspector.rule.anomaly_threshold)
        except OSError as exc:
            self._note_once(photo.path.name, f"its anomaly map could not be written ({exc.strerror or exc}); the photo is filed")

    def _hold_young_rejections(self, fresh: list[_Photo], results: list[Result]) -> tuple[list[_Photo], list[Result]]:
        """A file that is not a usable image may be a photo still being written by a writer that paused: it
        stays in the inbox, undecided and unlogged, until unchanged for `reject_after` seconds."""
        kept, decided = [], []
        now = time.time()
        for photo, result in zip(fresh, results):
            first_seen = self.unusable_since.setdefault((photo.path.name, photo.digest), now) if result.error else now
            age = max(now - first_seen, now - photo.identity[3] / 1e9)  # a clock ahead: this machine's sighting counts
            if result.error and age < self.reject_after:
                self._note_once(
                    photo.path.name,
                    f"not a usable image yet ({result.error}); kept in the inbox until unchanged for {self.reject_after:g} s",
                )
                self.left += 1
                continue
            kept.append(photo), decided.append(result)
        return kept, decided

    def _read(self, paths: list[Path]) -> list[_Photo]:
        photos = []
        for path in paths:
            with contextlib.suppress(OSError):
                info = path.lstat()
                if self.left_alone.get(path.name) == (info.st_size, info.st_mtime_ns):  # said once; never read again
                    self.left += 1
                    continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError as exc:
                self._note_once(
                    path.name, f"cannot be read ({exc.strerror}); it stays in the inbox, tried again at the next look"
                )
                self.left += 1
                continue
            with os.fdopen(fd, "rb") as f:
                info = os.fstat(f.fileno())
                if not stat.S_ISREG(info.st_mode):
                    self._note_once(path.name, "skipped: not a regular file")
                    self.left += 1
                    continue
                limit = self.inspector.spec.max_file_bytes
                try:
                    data = f.read(limit + 1)  # a bigger file is refused unread past this (load_image: file too large)
                except OSError as exc:
                    self._note_once(
                        path.name, f"cannot be read ({exc.strerror}); it stays in the inbox, tried again at the next look"
                    )
                    self.left += 1
                    continue
            digest = hashlib.sha256(data).hexdigest() if len(data) <= limit else sha256_of(path)
            if digest is None:
                self._note_once(path.name, "changed while it was read; it stays in the inbox, tried again at the next look")
                self.left += 1
                continue
            identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
            photos.append(_Photo(path, data, digest, identity))
        return photos

    def _logged(self, photos: list[_Photo]) -> dict[tuple[str, str], Path]:
        """Where the log says each of these photos goes, for those decided before (a restart)."""
        found = {(p.path.name, p.digest): self.log.destination(p.path.name, p.digest) for p in photos}
        return {key: destination for key, destination in found.items() if destination is not None}

    def _log(self, fresh: list[_Photo], results: list[Result], claimed: set[Path]) -> dict[tuple[str, str], Path]:
        """One transaction: every decision is logged before any file moves. A row another watcher wrote
        first (same name and content, one --out for two inboxes) is kept, and its destination used."""
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        destinations = {}
        with self.log.db:
            for photo, result in zip(fresh, results):
                destination = self._free_name(self.out / FOLDERS[result.decision], photo, claimed)
                self.log.db.execute(
                    "INSERT INTO inspections VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name, sha256) DO NOTHING",
                    (
                        kept(photo.path.name),
                        photo.digest,
                        stamp,
                        result.decision or "rejected",
                        result.defect_probability,
                        result.threshold,
                        result.model_version,
                        kept(result.why),
                        kept(str(destination)),
                    ),
                )
                (logged,) = self.log.db.execute(
                    "SELECT destination FROM inspections WHERE name=? AND sha256=?", (kept(photo.path.name), photo.digest)
                ).fetchone()
                destinations[(photo.path.name, photo.digest)] = self.log.under_out(logged)
                claimed.add(destinations[(photo.path.name, photo.digest)])
        return destinations

    def _free_name(self, folder: Path, photo: _Photo, claimed: set[Path]) -> Path:
        """The first name for this photo that no other file has (a camera that reuses names: keep both)."""
        for candidate in names(folder / photo.path.name, photo.digest):
            if candidate not in claimed and (not os.path.lexists(candidate) or sha256_of(candidate) == photo.digest):
                return candidate
        return candidate  # 100 names taken: filing it will say so

    def _file_safely(self, photo: _Photo, destination: Path) -> Path | None:
        """File one photo; on a fault it stays in the inbox, named on stderr, and the watcher goes on."""
        try:
            return self._file(photo, destination)
        except _TooLargeToCopy:
            self.left_alone[photo.path.name] = photo.identity[2], photo.identity[3]
            self._note_once(
                photo.path.name,
                f"over prepare.max_file_bytes, and {destination.parent} is on another disk than the inbox: it stays in "
                "the inbox, never copied (a copy could fill that disk); delete it or move it by hand",
            )
        except OSError as exc:
            self._note_once(
                photo.path.name,
                f"cannot be filed into {destination.parent} ({exc.strerror or exc}); it stays in the inbox, tried again at the next look",
            )
        self.left += 1
        return None

    def _file(self, photo: _Photo, destination: Path) -> Path:
        """Put a copy of the photo at `destination`, or under the next free name when another file has it, and only
        then take it out of the inbox. Always a copy, on any disk: synced and read back against the content that was
        decided, so a photo replaced meanwhile is never filed under the old decision, and a filed photo never shares
        its inode with a file a camera may still write."""
        folder = destination.parent
        if len(photo.data) > self.inspector.spec.max_file_bytes:  # refused unread: filed by name, or left
            if self.same_disk.get(folder):
                with contextlib.suppress(_CannotMove):
                    return self._move(photo, destination)
            raise _TooLargeToCopy
        staged = self._copy_in(photo, folder)
        try:
            final, _ = claim_name(staged, photo.digest, destination)
        finally:
            staged.unlink(missing_ok=True)
        fsync_dir(folder)
        if final != destination:
            self.log.retry("record where it was filed", lambda: self._relog(photo, final))
        self._remove_from_inbox(photo, final)
        return final

    def _move(self, photo: _Photo, destination: Path) -> Path:
        """A file refused unread (over max_file_bytes: its content decided nothing) on the inbox's disk is filed by
        name, never copied: it may be gigabytes."""
        try:
            final, moved = claim_name(photo.path, photo.digest, destination)
        except OSError as exc:
            if exc.errno == errno.EXDEV:  # a bind mount below --out: the same device number, no rename
                raise _CannotMove from None
            raise
        if final != destination:
            self.log.retry("record where it was filed", lambda: self._relog(photo, final))
        if not moved:
            self._remove_from_inbox(photo, final, linked=True)
        return final

    def _copy_in(self, photo: _Photo, folder: Path) -> Path:
        """A synced copy of the bytes that were decided, in a hidden temporary next to its destination, read back. The
        inbox file is never opened by name again: swapped meanwhile for a link to a pipe or /dev/zero, it would hang the
        watcher or fill the disk; rewritten, it stays in the inbox and is decided next (`_remove_from_inbox`)."""
        temporary = folder / f".watch-{os.getpid()}-{photo.digest[:16]}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666)
        try:
            with os.fdopen(fd, "wb") as copy:
                copy.write(photo.data)
                copy.flush()
                os.fsync(copy.fileno())
            if temporary.stat().st_size != len(photo.data) or sha256_of(temporary) != photo.digest:
                raise OSError(errno.EIO, "the copy does not read back as written")
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return temporary

    def _relog(self, photo: _Photo, final: Path) -> None:
        self.log.refile(photo.path.name, photo.digest, final)

    def _remove_from_inbox(self, photo: _Photo, final: Path, linked: bool = False) -> None:
        """Delete the inbox copy, unless a new file took its name meanwhile, or it was rewritten (that one is decided
        next). `linked`: the inbox file itself got its filed name, which moved its ctime."""
        try:
            info = photo.path.lstat()
        except FileNotFoundError:
            return
        now = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        if now[: 4 if linked else 5] != photo.identity[: 4 if linked else 5]:
            self._note_once(
                photo.path.name, f"was replaced in the inbox after it was filed as {final}; the new one is decided next"
            )
            self.left += 1  # a photo still to decide: --once says so in its exit status
            return
        photo.path.unlink()


def watch_folder(
    inspector: Inspector,
    inbox: Path,
    out: Path,
    poll_seconds: float,
    settle_seconds: float,
    once: bool = False,
    log_wait: float = 60.0,
    reject_after: float = 30.0,
    health=None,
) -> int:
    """Watch until SIGTERM or Ctrl-C (KeyboardInterrupt), or look once; returns how many complete photos
    could not be filed (they stay in the inbox, each named on stderr)."""

    def stop(signum, frame):  # systemd and `kill` send SIGTERM; stop between files, as on Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with Watcher(inspector, inbox, out, settle_seconds, log_wait, reject_after) as watcher:
            watcher.health = health
            print(
                f"watch: {inbox} -> {out} (model {inspector.version}; log {out / LOG_NAME})" + ("" if once else "; Ctrl-C stops"),
                file=sys.stderr,
                flush=True,
            )
            if once:
                ready = watcher.once()
                for start in range(0, len(ready), BATCH):
                    watcher.process(ready[start : start + BATCH])
                return watcher.left
            while True:
                ready = watcher.complete_files(time.time())
                try:
                    for start in range(0, len(ready), BATCH):
                        watcher.process(ready[start : start + BATCH])
                except LogLocked as exc:
                    note(f"{exc}; trying again at the next look")
                time.sleep(poll_seconds)
    finally:
        signal.signal(signal.SIGTERM, previous)
