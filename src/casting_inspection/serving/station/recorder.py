"""The station's record of each part: its photo filed under OUT/<decision>/ and its row in the same SQLite log
as `watch`, so `review` and `import-line` work on a station's output unchanged.

Records are written by a thread of their own after the signal has gone out: the disk never delays the reject
gate. Each photo is written to a temporary file, synced, given its final name without overwriting anything, and
then logged. On a write fault the part stays queued and is tried again; at stop, everything queued is written.
"""

from __future__ import annotations

import os
import queue
import secrets
import threading
from datetime import UTC, datetime
from pathlib import Path

from casting_inspection.serving.maps import write_overlay
from casting_inspection.serving.station.parts import Part
from casting_inspection.serving.watch.filing import FOLDERS, claim_name, fsync_dir
from casting_inspection.serving.watch.inbox import note
from casting_inspection.serving.watch.log import InspectionLog

RETRY_SECONDS = 1.0
FINISH_SECONDS = 30.0  # at stop, how long the queue may take to be written
BACKLOG = 100  # parts waiting to be recorded before the station stops being ready (a full disk stops the line)


class Recorder(threading.Thread):
    def __init__(self, out: Path, log_wait: float, anomaly_threshold: float | None):
        super().__init__(name="recorder", daemon=True)
        self.out, self.anomaly_threshold = Path(out), anomaly_threshold
        for folder in {*FOLDERS.values(), "maps"}:
            (self.out / folder).mkdir(parents=True, exist_ok=True)
        self.log = InspectionLog(self.out, log_wait)
        self.log.db.close()  # opened here to fail at start on a bad folder; the thread opens its own connection
        self.log_wait = log_wait
        self.parts: queue.Queue = queue.Queue()
        self.written = 0
        self.failing: str | None = None

    lagging = False

    def record(self, part: Part) -> None:
        self.parts.put(part)

    def behind(self) -> str | None:
        """Why the station must not take more parts: the record is BACKLOG parts behind (a full or read-only disk),
        until it is down to half that."""
        waiting = self.parts.qsize()
        self.lagging = waiting >= BACKLOG or (self.lagging and waiting > BACKLOG // 2)
        return f"the record cannot keep up: parts wait to be recorded in {self.out}" if self.lagging else None

    def finish(self) -> None:
        """Write everything queued, for up to FINISH_SECONDS, then stop; what is left is named."""
        self.parts.put(None)
        self.join(FINISH_SECONDS + self.log_wait)
        if self.is_alive() or not self.parts.empty():
            note(f"parts could not be recorded in {self.out} before stop ({self.failing or 'the recorder stopped'})", "station")

    def run(self) -> None:
        log = InspectionLog(self.out, self.log_wait)
        try:
            while (part := self.parts.get()) is not None:
                while not self._write(log, part):
                    threading.Event().wait(RETRY_SECONDS)
        finally:
            log.close()

    def _write(self, log: InspectionLog, part: Part) -> bool:
        """File the photo once, then log it; a retry only does what is left."""
        try:
            part.filed = part.filed or self._file(part)
            row = (part.name, part.sha256, part.decided_at, part.decision, part.defect_probability, part.threshold,
                   part.model_version, part.reason, str(part.filed))  # fmt: skip
            log.retry("log a part", lambda: self._insert(log, row))
        except Exception as exc:  # a full or read-only disk, a locked log: say so once, keep the part, try again
            message = f"part {part.number} cannot be recorded in {self.out} ({exc}); kept in memory, trying again"
            if message != self.failing:
                note(message, "station")
            self.failing = message
            return False
        self.failing = None
        self.written += 1
        self._keep_map(part)
        return True

    def _keep_map(self, part: Part) -> None:
        """The anomaly map beside a rejected or reviewed part's photo; a map that cannot be written costs only itself."""
        if part.anomaly_map is None or part.decision not in ("defective", "review"):
            return
        try:
            path = self.out / "maps" / part.filed.parent.name / f"{part.filed.name}.anomaly.png"
            write_overlay(path, part.image, part.anomaly_map, self.anomaly_threshold)
        except Exception as exc:
            note(f"part {part.number}: its anomaly map could not be written ({exc}); the part is recorded", "station")

    @staticmethod
    def _insert(log: InspectionLog, row: tuple) -> None:
        with log.db:
            log.db.execute(
                "INSERT INTO inspections VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name, sha256) DO NOTHING", row
            )

    def _file(self, part: Part) -> Path:
        folder = self.out / FOLDERS[part.decision]
        staged = folder / f".watch-{os.getpid()}-{secrets.token_hex(8)}.tmp"  # the watcher's pattern: cleaned up alike
        with open(staged, "xb") as f:
            f.write(part.photo)
            f.flush()
            os.fsync(f.fileno())
        try:
            candidate, _ = claim_name(staged, part.sha256, folder / part.name)
        finally:
            staged.unlink(missing_ok=True)
        part.filed = candidate  # named: a retry after a failed sync below must not file it twice
        fsync_dir(folder)
        return candidate


def stamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
