"""Inline inspection: decide photos as a camera drops them into a folder, log each decision, sort the files.

Crash safety: a decision is committed to the SQLite log before its file is moved, and the log is keyed
by file name and content hash. After a restart, a file still in the inbox whose decision is logged is
moved where the log says, not decided again; a file with no logged decision is decided. Nothing is
deleted: every file ends in ok/, defective/, review/ or rejected/ under the output folder.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from casting_inspection.core.errors import InspectionError
from casting_inspection.deploy.inference import Inspector

FOLDERS = {"ok": "ok", "defective": "defective", "review": "review", "": "rejected"}
LOG_NAME = "inspections.sqlite"
SCHEMA = """CREATE TABLE IF NOT EXISTS inspections (
    name TEXT NOT NULL, sha256 TEXT NOT NULL, decided_at TEXT NOT NULL, decision TEXT NOT NULL,
    defect_probability REAL, threshold REAL NOT NULL, model_version TEXT NOT NULL, reason TEXT NOT NULL,
    destination TEXT NOT NULL, PRIMARY KEY (name, sha256))"""


def _is_candidate(path: Path) -> bool:
    """Skip hidden files and the usual names of files still being written."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() not in {".part", ".tmp", ".crdownload"}


class Watcher:
    def __init__(self, inspector: Inspector, inbox: Path, out: Path, settle_seconds: float):
        if not inbox.is_dir():
            raise InspectionError(f"{inbox}: no such folder to watch")
        self.inspector, self.inbox, self.out, self.settle = inspector, inbox, out, settle_seconds
        for folder in FOLDERS.values():
            (out / folder).mkdir(parents=True, exist_ok=True)
        self.log = sqlite3.connect(out / LOG_NAME)
        self.log.execute("PRAGMA journal_mode=WAL")
        self.log.execute(SCHEMA)
        self.log.commit()
        self.seen: dict[Path, tuple[int, int]] = {}  # size and mtime at the last look

    def complete_files(self, now: float) -> list[Path]:
        """Files unchanged since the last look and not modified for `settle` seconds."""
        ready, current = [], {}
        for path in sorted(self.inbox.iterdir()):
            if not _is_candidate(path):
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            current[path] = (stat.st_size, stat.st_mtime_ns)
            stable = self.seen.get(path) == current[path] or self.settle == 0
            if stable and now - stat.st_mtime >= self.settle:
                ready.append(path)
        self.seen = current
        return ready

    def process(self, paths: list[Path]) -> int:
        """Decide (or re-file) these complete files; returns how many were handled."""
        fresh, handled = [], 0
        for path in paths:
            try:
                data = path.read_bytes()
            except OSError as exc:
                print(f"watch: cannot read {path.name} yet ({exc.strerror}); will retry", file=sys.stderr)
                continue
            digest = hashlib.sha256(data).hexdigest()
            logged = self.log.execute(
                "SELECT destination FROM inspections WHERE name=? AND sha256=?", (path.name, digest)
            ).fetchone()
            if logged:  # decided before a restart, not yet moved
                self._move(path, Path(logged[0]))
                handled += 1
            else:
                fresh.append((path, digest, data))
        if not fresh:
            return handled
        results = self.inspector.inspect([(path.name, data) for path, _, data in fresh])
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        moves = []
        with self.log:  # one transaction: every decision is logged before any file moves
            for (path, digest, _), result in zip(fresh, results):
                destination = self._destination(FOLDERS[result.decision], path.name, digest)
                self.log.execute(
                    "INSERT INTO inspections VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        path.name,
                        digest,
                        stamp,
                        result.decision or "rejected",
                        result.defect_probability,
                        result.threshold,
                        result.model_version,
                        result.error,
                        str(destination),
                    ),
                )
                moves.append((path, destination, result))
        for path, destination, result in moves:
            self._move(path, destination)
            shown = f"{result.defect_probability:.4f}" if result.defect_probability is not None else "-"
            print(
                f"{result.decision or 'rejected':<10}{shown:>8}  {path.name}" + (f"  ({result.error})" if result.error else ""),
                flush=True,
            )
        return handled + len(moves)

    def _destination(self, folder: str, name: str, digest: str) -> Path:
        target = self.out / folder / name
        if target.exists():  # a camera that reuses names: keep both
            target = target.with_name(f"{target.stem}.{digest[:8]}{target.suffix}")
        return target

    def _move(self, source: Path, destination: Path) -> None:
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, destination)  # atomic on one filesystem; the file is never in two places or none


def watch_folder(
    inspector: Inspector, inbox: Path, out: Path, poll_seconds: float, settle_seconds: float, once: bool = False
) -> None:
    watcher = Watcher(inspector, inbox, out, settle_seconds)

    def stop(signum, frame):  # systemd and `kill` send SIGTERM; stop between files, as on Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(
        f"watch: {inbox} -> {out} (model {inspector.version}; log {out / LOG_NAME})" + ("" if once else "; Ctrl-C stops"),
        file=sys.stderr,
    )
    if once:  # one look: what has not been modified for `settle` seconds counts as complete
        ready = [p for p in sorted(inbox.iterdir()) if _is_candidate(p) and time.time() - p.stat().st_mtime >= settle_seconds]
        for start in range(0, len(ready), 64):
            watcher.process(ready[start : start + 64])
        return
    while True:
        ready = watcher.complete_files(time.time())
        for start in range(0, len(ready), 64):
            watcher.process(ready[start : start + 64])
        time.sleep(poll_seconds)
