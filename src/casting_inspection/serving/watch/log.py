"""The watcher's SQLite log: every decision is committed here before its photo moves, keyed by name and content."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from casting_inspection.core.errors import InspectionError
from casting_inspection.core.text import is_utf8
from casting_inspection.serving.watch.inbox import note

LOG_NAME = "inspections.sqlite"
SCHEMA = """CREATE TABLE IF NOT EXISTS inspections (
    name TEXT NOT NULL, sha256 TEXT NOT NULL, decided_at TEXT NOT NULL, decision TEXT NOT NULL,
    defect_probability REAL, threshold REAL NOT NULL, model_version TEXT NOT NULL, reason TEXT NOT NULL,
    destination TEXT NOT NULL, PRIMARY KEY (name, sha256))"""


def kept(text: str) -> str | bytes:
    """A name or path as the log keeps it: text, or its bytes when it is not UTF-8 (a camera share's old name), which
    SQLite cannot take as text."""
    return text if is_utf8(text) else os.fsencode(text)


def read_back(value: str | bytes) -> str:
    """What `kept` stored, as the name it was."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


class LogLocked(InspectionError):
    """The log stayed locked by another process for longer than `log_wait`."""


class InspectionLog:
    """The open log of one output folder; every write is a whole transaction, retried while another process holds it."""

    def __init__(self, out: Path, log_wait: float):
        self.path, self.log_wait = out / LOG_NAME, log_wait
        try:
            self.db = sqlite3.connect(self.path, timeout=max(0.1, min(5.0, log_wait)))
        except sqlite3.Error as exc:
            raise InspectionError(f"{self.path}: cannot open the log ({exc}); check the --out folder") from None

        def create() -> None:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(SCHEMA)
            self.db.commit()

        try:
            self.retry("open it", create)
        except BaseException:
            self.db.close()
            raise

    def close(self) -> None:
        self.db.close()

    def destination(self, name: str, digest: str) -> Path | None:
        """Where the log says this photo (name and content) goes, or None when it was never decided: its folder and
        name under this log's --out, whatever folder the watcher that logged it ran in."""
        row = self.db.execute("SELECT destination FROM inspections WHERE name=? AND sha256=?", (kept(name), digest)).fetchone()
        return self.under_out(row[0]) if row else None

    def under_out(self, logged) -> Path:
        """A logged destination as a path under this log's --out (rows written relative to another folder included)."""
        path = Path(read_back(logged))
        return self.path.parent / path.parent.name / path.name

    def refile(self, name: str, digest: str, final: Path) -> None:
        with self.db:
            self.db.execute(
                "UPDATE inspections SET destination=? WHERE name=? AND sha256=?", (kept(str(final)), kept(name), digest)
            )

    def retry(self, what: str, work):
        """Run `work` (whole transactions) again while another process holds the log: the busy timeout
        waits up to 5 s per try, with a note on stderr each time, for `log_wait` seconds in all."""
        path = self.path
        deadline = time.monotonic() + self.log_wait
        while True:
            try:
                return work()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise InspectionError(
                        f"{path}: the log cannot be written ({exc}); check the disk and the --out folder"
                    ) from None
                self.db.rollback()
                if time.monotonic() >= deadline:
                    raise LogLocked(
                        f"{path}: locked by another process for over {self.log_wait:g} s (could not {what}); "
                        "close that program (an sqlite3 shell, a backup) or raise --log-wait; the photos wait in the inbox"
                    ) from None
                note(f"the log {path} is locked by another process ({exc}); waiting to {what}")
                time.sleep(0.1)
            except sqlite3.DatabaseError as exc:
                raise InspectionError(f"{path}: not a usable SQLite log ({exc}); move it aside and start again") from None
