"""Atomic writes: a crash or a bad input never leaves a half-written output behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path

from casting_inspection.core.processes import pid_alive

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(target: Path):
    """Yield a temporary file path next to `target`; rename it over `target` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private; outputs should look like any other file
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: Path, data) -> None:
    write_text(target, json.dumps(data, indent=2, sort_keys=False) + "\n")


@contextmanager
def atomic_dir(target: Path):
    """Yield an empty temporary directory next to `target`; swap it into place only on success. The swap is not cut by
    Ctrl-C or SIGTERM (they would lose both copies); what a run killed outright left beside it is cleared first."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _clear_staging(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent))
    tmp.chmod(0o777 & ~_UMASK)
    try:
        yield tmp
        with _uninterrupted():
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent))
                os.replace(target, old / "old")
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def _uninterrupted():
    """Ctrl-C and SIGTERM wait until the block is done (a few renames)."""
    signals = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _clear_staging(target: Path) -> None:
    """Remove the staging folders a run killed outright (SIGKILL, power loss) left beside `target`: those whose
    process is gone (a live run's, the same stage started twice, stay), and those of versions that did not name it.
    Nothing else in the folder is touched."""
    staging = re.compile(rf"\.{re.escape(target.name)}\.(?:(?:(\d+)\.)?[A-Za-z0-9_]{{8}}\.tmp|old)")
    for entry in sorted(target.parent.iterdir()):
        found = staging.fullmatch(entry.name)
        if not found or not entry.is_dir() or entry.is_symlink():
            continue
        pid = int(found.group(1)) if found.group(1) else None
        if pid is None or pid == os.getpid() or not pid_alive(pid):
            shutil.rmtree(entry, ignore_errors=True)
            print(f"removed {entry}, left behind by an earlier run that was killed")
