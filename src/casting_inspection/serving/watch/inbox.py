"""The inbox: one watcher per folder (an flock), and what in it is not a photo to decide, with why."""

from __future__ import annotations

import fcntl
import os
import socket
import stat
import sys
from pathlib import Path

from casting_inspection.core.errors import InspectionError
from casting_inspection.core.text import printable

LOCK_NAME = ".casting-inspect-watch.lock"
PARTIAL_SUFFIXES = {".part", ".tmp", ".crdownload"}
LINGER_SECONDS = 30.0  # a hidden or partial file is named once it stays this long: a writer's temporary is gone by then
FUTURE_SECONDS = 1.0  # a modification time this far ahead of this machine's clock is "in the future"


class WatchBusy(InspectionError):
    """Another watcher holds this inbox's lock (the CLI exits with status 2)."""


def note(message: str, command: str = "watch") -> None:
    print(f"{command}: {printable(message)}", file=sys.stderr, flush=True)


def skip_reason(name: str, info: os.stat_result) -> tuple[str, bool] | None:
    """Why an inbox entry is not a photo to decide, and whether a writer may still be busy with it."""
    if stat.S_ISLNK(info.st_mode):
        return "a symbolic link, not followed (put the photo itself in the inbox)", False
    if stat.S_ISDIR(info.st_mode):
        return "a folder: only files directly in the inbox are decided", False
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (a pipe, socket or device)", False
    if name.startswith("."):
        return "a hidden file (a writer's temporary?); left in the inbox", True
    if Path(name).suffix.lower() in PARTIAL_SUFFIXES:
        return f"named {Path(name).suffix}: still being written; decided once renamed", True
    return None


def lock_inbox(inbox: Path, out: Path) -> int:
    """One watcher per inbox: an exclusive flock on INBOX/.casting-inspect-watch.lock, held while it runs
    (the kernel drops it when the process ends, however it ends). Returns the open descriptor."""
    path = inbox / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        raise InspectionError(
            f"{path}: cannot create the watcher's lock file ({exc.strerror}); the watcher needs write access to the inbox"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = " ".join(os.pread(fd, 300, 0).decode(errors="replace").split()) or "another process"
        os.close(fd)
        raise WatchBusy(
            f"{inbox} is already being watched ({holder} holds the lock {path}); stop that watcher first, or watch another folder"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, sorting into {out.resolve()}\n".encode(), 0)
    return fd
