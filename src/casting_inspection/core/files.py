"""Atomic writes: a crash or a bad input never leaves a half-written output behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

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
    """Yield an empty temporary directory next to `target`; swap it into place only on success. What a run killed
    outright (SIGKILL, power loss) left beside it is cleared first."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.chmod(0o777 & ~_UMASK)
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _recover(target: Path) -> None:
    """Remove the staging folders a killed run left beside `target`, and put back its `.old` copy when the run died
    between moving the output aside and moving the new one in (the output would be lost otherwise). Nothing else in
    the folder is touched."""
    old = target.with_name(f".{target.name}.old")
    if old.is_dir() and not old.is_symlink() and not target.exists():
        os.replace(old, target)
        print(f"restored {target} from {old.name}, left by an earlier run that was killed")
    staging = re.compile(rf"\.{re.escape(target.name)}\.(?:[A-Za-z0-9_]{{8}}\.tmp|old)")
    for entry in sorted(target.parent.iterdir()):
        if staging.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            print(f"removed {entry}, left behind by an earlier run that was killed")
