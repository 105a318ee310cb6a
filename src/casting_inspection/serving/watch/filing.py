"""Filing a decided photo: names that never overwrite, links or exclusive claims, and synced folders."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from pathlib import Path

FOLDERS = {"ok": "ok", "defective": "defective", "review": "review", "not_a_part": "not_a_part", "": "rejected"}
TEMPORARY = re.compile(r"\.watch-(\d+)-[0-9a-f]{16}\.tmp")  # a copy in progress, by process id
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}


def sha256_of(path: Path) -> str | None:
    """Content hash of a regular file (not following a link), or None when it is anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return hashlib.file_digest(f, "sha256").hexdigest()


def _within(text: str, limit: int) -> str:
    """The longest start of `text` whose bytes on disk fit `limit` (a file system counts bytes: 255 a name)."""
    kept, size = [], 0
    for char in text:
        size += len(char.encode("utf-8", "surrogateescape"))
        if size > limit:
            break
        kept.append(char)
    return "".join(kept)


def names(destination: Path, digest: str):
    """The names a photo may take in its folder, in order: its own, then with a short content-hash suffix."""
    yield destination
    stem, suffix = _within(destination.stem, 150), _within(destination.suffix, 20)
    yield destination.with_name(f"{stem}.{digest[:8]}{suffix}")
    for n in range(2, 100):
        yield destination.with_name(f"{stem}.{digest[:8]}-{n}{suffix}")


def link_or_claim(staged: Path, candidate: Path) -> bool:
    """Give `staged` the name `candidate` without ever overwriting: FileExistsError when it is taken.
    Returns whether `staged` itself was moved (no hard links there) rather than linked."""
    try:
        os.link(staged, candidate, follow_symlinks=False)
        return False
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise  # FileExistsError: taken; EXDEV: another filesystem
    os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # claim the name
    try:
        os.replace(staged, candidate)  # over the empty placeholder just claimed, nothing else
    except BaseException:
        candidate.unlink(missing_ok=True)
        raise
    return True


def claim_name(staged: Path, digest: str, destination: Path) -> tuple[Path, bool]:
    """The name `staged` now also has: `destination` or the next free one; or a name where this very photo
    already is (a restart after the link). Returns it, and whether `staged` itself was moved there."""
    for candidate in names(destination, digest):
        try:
            return candidate, link_or_claim(staged, candidate)
        except FileExistsError:
            if sha256_of(candidate) == digest:
                return candidate, False
    raise OSError(errno.EEXIST, f"{destination.name} and 98 variants of it are taken by other files")


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
