"""Get the raw images: from Kaggle with the official client, or from a local copy of the archive.

Either way only the official train/test image folders are kept, under a normalised layout
`<out>/{train,test}/{def_front,ok_front}/<file>`, so both sources give byte-identical outputs.

An archive is untrusted input. Before anything is written, the whole zip is refused when an entry
escapes the output (absolute path, `..`, symbolic link), when its central directory declares more
entries than `download.max_entries` or more bytes than `download.max_total_bytes`, or when an image
entry is encrypted or compressed with a method Python cannot read. While extracting, the bytes
really written are counted (a zip can declare fewer than it holds) and each entry's CRC is checked.
Every refusal is one line naming the archive and what to do. Extraction goes to a hidden staging
folder next to the output (`atomic_dir`); SIGTERM removes it like Ctrl-C does (`run_stage`), and staging folders
left by a run that was killed outright (SIGKILL, power loss) are removed when the stage starts again.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import lzma
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from contextlib import contextmanager, redirect_stdout
from pathlib import Path, PurePosixPath

from casting_inspection import CLASS_NAMES, SPLITS
from casting_inspection.core.errors import InspectionError
from casting_inspection.core.files import atomic_dir
from casting_inspection.core.params import DownloadParams
from casting_inspection.core.text import is_utf8

ARCHIVE_ENV = "CASTING_ARCHIVE"
TWO_WAYS = (
    "supply the data one of two ways: Kaggle credentials (KAGGLE_USERNAME and KAGGLE_KEY, "
    "~/.kaggle/kaggle.json or KAGGLE_API_TOKEN), or a downloaded archive with "
    f"{ARCHIVE_ENV}=/path/to/archive.zip (zip or folder with the Kaggle layout)"
)
_WANTED = re.compile(rf"(?:^|/)({'|'.join(SPLITS)})/({'|'.join(CLASS_NAMES)})/([^/]+)$")
_NESTED = re.compile(rf"(?:^|/)({'|'.join(SPLITS)})/({'|'.join(CLASS_NAMES)})/[^/]+/.")  # a file in a class's subfolder
_KAGGLE_PREFIX = ".kaggle-"
_CHUNK = 1 << 20
_READABLE_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_METHOD_NAMES = {1: "Shrink", 6: "Implode", 9: "Deflate64", 93: "Zstandard", 95: "XZ", 98: "PPMd", 99: "WinZip AES"}
# What zipfile, zlib, bz2 (OSError) and lzma raise on a damaged or truncated member.
_DAMAGED = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, ValueError)
_REPACK = f"unpack it with a tool that can and set {ARCHIVE_ENV} to the folder, or get the Kaggle original"


def fetch_raw_images(params: DownloadParams, out_dir: Path, archive: str | None) -> dict[str, int]:
    """Fill `out_dir` from `archive` (a zip or folder) or, when it is None, from Kaggle."""
    out_dir = Path(out_dir)
    _remove_stale_kaggle(out_dir)
    with atomic_dir(out_dir) as staging:
        if archive:
            source = Path(archive).expanduser()
            if not source.exists():
                raise InspectionError(f"{ARCHIVE_ENV}={archive}: no such file or folder; fix the path")
            _extract(source, staging, params)
        else:
            with tempfile.TemporaryDirectory(prefix=_KAGGLE_PREFIX, dir=out_dir.parent) as download_dir:
                zip_path = download_from_kaggle(params, Path(download_dir))
                _extract(zip_path, staging, params)
        counts = _count(staging)
    return counts


def _remove_stale_kaggle(out_dir: Path) -> None:
    """Remove the Kaggle download folders an earlier run left next to `out_dir` when it was killed outright (its
    staging folders are `atomic_dir`'s to clear). Nothing else is touched."""
    if not out_dir.parent.is_dir():
        return
    stale = re.compile(rf"{re.escape(_KAGGLE_PREFIX)}[A-Za-z0-9_]{{8}}")
    for entry in sorted(out_dir.parent.iterdir()):
        if stale.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            print(f"download: removed {entry}, left behind by an earlier run that was killed")


def _extract(source: Path, dest: Path, params: DownloadParams) -> None:
    if source.is_dir():
        _copy_folder(source, dest, params)
        return
    _check_regular(source)
    if zipfile.is_zipfile(source):
        _extract_zip(source, dest, params)
    elif _starts_like_a_zip(source):
        raise InspectionError(f"{source}: zip archive is truncated or damaged (no central directory); download it again")
    else:
        raise InspectionError(f"{source}: neither a zip archive nor a folder; give the Kaggle zip or its unpacked folder")


def _check_regular(source: Path) -> None:
    """A pipe would block the zip reader for ever, and an unreadable file would pass for one that is no zip."""
    try:
        with open(os.open(source, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            regular = stat.S_ISREG(os.fstat(f.fileno()).st_mode)
    except OSError as exc:
        raise InspectionError(f"{source}: cannot read ({exc.strerror}); fix its permissions") from None
    if not regular:
        raise InspectionError(f"{source}: not a regular file or folder (a pipe or device); give the Kaggle zip or its folder")


def _starts_like_a_zip(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def _target(relative: str, dest: Path) -> Path | None:
    """Where a wanted archive member goes, or None for members outside the train/test image folders (and hidden
    ones). A file in a subfolder of a class folder is refused, not left out unnamed. A name written with backslashes
    (a Windows zip tool) or doubled slashes is read as the path it spells."""
    named, relative = relative, "/".join(part for part in relative.replace("\\", "/").split("/") if part)
    parts = PurePosixPath(relative).parts
    if any(p.startswith(".") or p == "__MACOSX" for p in parts) or relative.endswith("/."):
        return None
    if _NESTED.search(relative):
        raise InspectionError(
            f"{_shown(named)}: a file in a subfolder of a class folder; the data set takes each photo directly in "
            "{train,test}/{def_front,ok_front}/: move it up, or out of the archive"
        )
    match = _WANTED.search(relative)
    if not match:
        return None
    split, label, name = match.groups()
    return dest / split / label / name


def _shown(name: str) -> str:
    """An entry name quoted for a one-line message: control characters (a newline in a name) escaped."""
    return "'" + "".join(c if c.isprintable() else repr(c)[1:-1] for c in name) + "'"


def _unsafe_reason(name: str) -> str | None:
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or re.match(r"^[A-Za-z]:", normalized):
        return "absolute path"
    if ".." in normalized.split("/"):
        return "path contains '..'"
    return None


@dataclasses.dataclass
class _Budget:
    """Bytes written so far against download.max_total_bytes: counted as written, since sizes can lie."""

    source: Path
    limit: int
    written: int = 0

    def take(self, n: int) -> None:
        self.written += n
        if self.written > self.limit:
            raise InspectionError(
                f"{self.source}: unpacks to more than download.max_total_bytes ({self.limit:,} bytes); "
                "raise download.max_total_bytes in params.yaml if you trust this archive"
            )


def _check_caps(source: Path, entries: int, declared: int, params: DownloadParams) -> None:
    """Refuse before writing anything: an archive over the caps is a zip bomb or not the data set."""
    if entries > params.max_entries:
        raise InspectionError(
            f"{source}: holds {entries:,} entries, over download.max_entries ({params.max_entries:,}); "
            "raise download.max_entries in params.yaml if you trust this archive"
        )
    if declared > params.max_total_bytes:
        raise InspectionError(
            f"{source}: declares {declared:,} bytes unpacked, over download.max_total_bytes ({params.max_total_bytes:,}); "
            "raise download.max_total_bytes in params.yaml if you trust this archive"
        )


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (*_DAMAGED, NotImplementedError) as exc:
        raise InspectionError(f"{path}: not a readable zip archive ({_one_line(exc)}); download it again") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _check_members(path: Path, members: list[zipfile.ZipInfo], params: DownloadParams) -> None:
    """Refuse the whole archive before writing anything: unsafe names, caps, entries Python cannot read, a name twice."""
    for info in members:
        reason = _unsafe_reason(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            reason = "symbolic link"
        if reason:
            raise InspectionError(f"{path}: unsafe entry {_shown(info.filename)} ({reason}); refusing to extract this archive")
    _check_caps(path, len(members), sum(info.file_size for info in members), params)
    taken = set()
    for info in members:
        if info.is_dir() or _target(info.filename, Path()) is None:
            continue  # never read, so it may be anything
        if info.filename in taken:  # only one of the two could be kept
            raise InspectionError(
                f"{path}: holds the entry {_shown(info.filename)} twice, and only one can be taken; "
                "re-zip the data without the copy, or get the Kaggle original"
            )
        taken.add(info.filename)
        if info.flag_bits & 0x1:
            raise InspectionError(
                f"{path}: entry {_shown(info.filename)} is encrypted (password-protected); "
                f"give an archive without a password, or {_REPACK}"
            )
        if info.compress_type not in _READABLE_METHODS:
            method = _METHOD_NAMES.get(info.compress_type, "unknown")
            raise InspectionError(
                f"{path}: entry {_shown(info.filename)} uses compression method {info.compress_type} ({method}), "
                f"which Python's zipfile cannot read; re-zip it with deflate, or {_REPACK}"
            )


def _extract_zip(path: Path, dest: Path, params: DownloadParams) -> None:
    with _open_zip(path) as archive:
        members = archive.infolist()
        _check_members(path, members, params)
        budget = _Budget(path, params.max_total_bytes)
        for info in members:
            target = None if info.is_dir() else _target(info.filename, dest)
            if target is not None:
                _claim(target, info.filename, path)
                _copy_member(archive, info, target, budget)


def _copy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: _Budget) -> None:
    """Copy one entry, counting what it really holds and checking its CRC here: zipfile cuts an entry at
    its declared size, so asking for one byte more is what shows an entry that holds more than it says."""
    probe = copy.copy(info)
    probe.file_size = info.file_size + 1
    del probe.CRC  # zipfile would check it against the cut data; it is checked below on all of it
    damaged = f"{archive.filename}: entry {_shown(info.filename)} is damaged"
    size, crc = 0, 0
    try:
        source = archive.open(probe)
    except (*_DAMAGED, NotImplementedError, RuntimeError) as exc:
        raise InspectionError(f"{damaged} ({_one_line(exc)}); download the archive again") from None
    with source, _output(target) as out:
        while True:
            try:
                chunk = source.read(_CHUNK)
            except _DAMAGED as exc:
                raise InspectionError(f"{damaged} ({_one_line(exc)}); download the archive again") from None
            if not chunk:
                break
            size += len(chunk)
            if size > info.file_size:
                raise InspectionError(
                    f"{archive.filename}: entry {_shown(info.filename)} holds more than the {info.file_size:,} bytes it "
                    "declares (a zip bomb, or a broken archive); refusing it: get the archive again from Kaggle"
                )
            budget.take(len(chunk))
            crc = zlib.crc32(chunk, crc)
            _write(out, chunk, target)
    if size != info.file_size or crc != info.CRC:
        raise InspectionError(f"{damaged}: it fails its CRC check; download the archive again")


@contextmanager
def _output(target: Path):
    try:
        out = open(target, "wb")
    except OSError as exc:
        raise InspectionError(f"{target}: cannot write ({exc.strerror}); check the disk and its permissions") from None
    with out:
        yield out


def _write(out, chunk: bytes, target: Path) -> None:
    try:
        out.write(chunk)
    except OSError as exc:
        raise InspectionError(f"{target}: cannot write ({exc.strerror}); free space on that disk and run again") from None


def _plan_folder(root: Path, dest: Path, params: DownloadParams) -> list[tuple[Path, str, Path]]:
    """The files to copy, checked before anything is written: no links, only regular files, the caps."""
    plan, entries, declared = [], 0, 0

    def unreadable(exc: OSError) -> None:  # os.walk would leave it out unnamed: a class without its photos
        folder = Path(exc.filename)
        if folder == root or {"train", "test", *CLASS_NAMES} & set(folder.relative_to(root).parts):
            raise InspectionError(f"{folder}: cannot read this folder ({exc.strerror}); fix its permissions") from None
        print(f"download: {folder}: cannot read this folder ({exc.strerror}); left out (no train or test folder in its name)")

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")  # never taken
        entries += len(dirnames) + len(filenames)
        _check_caps(root, entries, 0, params)  # stop walking a folder with millions of files early
        for name in sorted(dirnames + filenames):
            full = Path(dirpath) / name
            if full.is_symlink():
                raise InspectionError(
                    f"{full}: symbolic link inside the data folder; refusing to copy it (replace it with the real file)"
                )
        for name in sorted(filenames):
            full = Path(dirpath) / name
            relative = full.relative_to(root).as_posix()
            target = _target(relative, dest)
            if target is None:
                continue
            if not is_utf8(relative):  # a name the manifest could not hold
                raise InspectionError(f"{_shown(relative)}: its name is not UTF-8 text; rename the file (in {root})")
            info = full.lstat()
            if not stat.S_ISREG(info.st_mode):
                raise InspectionError(f"{full}: not a regular file (a pipe or device?); remove it from the data folder")
            declared += info.st_size
            plan.append((full, relative, target))
    _check_caps(root, entries, declared, params)
    return plan


def _copy_folder(root: Path, dest: Path, params: DownloadParams) -> None:
    budget = _Budget(root, params.max_total_bytes)
    for full, relative, target in _plan_folder(root, dest, params):
        _claim(target, relative, root)
        try:
            source = open(full, "rb")
        except OSError as exc:
            raise InspectionError(f"{full}: cannot read ({exc.strerror}); fix its permissions") from None
        with source, _output(target) as out:
            while chunk := source.read(_CHUNK):
                budget.take(len(chunk))  # counted as copied: a file may grow while it is copied
                _write(out, chunk, target)


def _claim(target: Path, member: str, source: Path) -> None:
    try:
        taken = target.exists()
        if not taken:
            target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a name too long for this file system, a folder that is a file
        raise InspectionError(f"{source}: {_shown(member)} cannot be written here ({exc.strerror}); rename it") from None
    if taken:
        raise InspectionError(
            f"{source}: {_shown(member)} collides with another copy of {target.parent.parent.name}/"
            f"{target.parent.name}/{target.name}; the archive holds two data roots, keep one"
        )


def _count(dest: Path) -> dict[str, int]:
    counts = {}
    for split in SPLITS:
        for label in CLASS_NAMES:
            folder = dest / split / label
            n = sum(1 for _ in folder.iterdir()) if folder.is_dir() else 0
            if n == 0 and label == CLASS_NAMES[0]:  # a new product may have no defect photo yet (train.classifier)
                raise InspectionError(
                    f"no images found for {split}/{label}: the data needs "
                    f"{{train,test}}/{{{','.join(CLASS_NAMES)}}}/ folders as in the Kaggle archive"
                )
            counts[f"{split}/{label}"] = n
    return counts


def _kaggle_api():
    """Import the client lazily (it authenticates and prints on import) and authenticate it."""
    with redirect_stdout(io.StringIO()):
        try:
            from kaggle.api.kaggle_api_extended import KaggleApi
        except ImportError as exc:
            raise InspectionError(f"the 'kaggle' package is not installed ({exc}); run `make repro`, which installs it") from exc
        api = KaggleApi()
        try:
            api.authenticate()
        except SystemExit:
            raise InspectionError(_broken_kaggle_json(api) or f"no Kaggle credentials found; {TWO_WAYS}") from None
    return api


def _broken_kaggle_json(api) -> str | None:
    """Why the client refused the kaggle.json it read (not JSON, no username or key), or None: it says only that it
    found no credentials, which sends a person looking for a file they have."""
    path = Path(getattr(api, "config", "") or "")
    if not path.name or not path.is_file():
        return None
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"{path}: not readable JSON ({_one_line(exc)}); fix it (username and key) or remove it"
    if not isinstance(content, dict) or not content.get("username") or not content.get("key"):
        return f"{path}: needs a username and a key (download it again from your Kaggle account's settings)"
    return None


def download_from_kaggle(params: DownloadParams, dest: Path) -> Path:
    """Download the data set zip into `dest` and check it; return its path."""
    import requests

    api = _kaggle_api()
    try:
        with redirect_stdout(io.StringIO()), _default_timeout(params.timeout_s):
            api.dataset_download_files(params.dataset, path=str(dest), unzip=False, quiet=True, force=True)
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else None
        raise InspectionError(_http_message(code, params.dataset)) from exc
    except (TimeoutError, requests.ConnectionError, requests.Timeout) as exc:
        raise InspectionError(
            f"cannot reach Kaggle to download {params.dataset} (no network, or no answer in {params.timeout_s:g} s); {TWO_WAYS}"
        ) from exc
    except ValueError as exc:
        raise InspectionError(f"the download of {params.dataset} was incomplete ({exc}); run again") from exc
    zips = sorted(dest.glob("*.zip"))
    if len(zips) != 1:
        raise InspectionError(f"Kaggle returned no zip archive for {params.dataset}; run again")
    return zips[0]


@contextmanager
def _default_timeout(seconds: float):
    """Give requests sent without a timeout (the client's first request) this one.

    socket.setdefaulttimeout() is not enough: requests passes timeout=None down to urllib3, which
    then makes the socket blocking, so a server that never answers would hang the stage.
    """
    from requests.adapters import HTTPAdapter

    original = HTTPAdapter.send

    def send(self, request, stream=False, timeout=None, *args, **kwargs):
        return original(self, request, stream, seconds if timeout is None else timeout, *args, **kwargs)

    HTTPAdapter.send = send
    try:
        yield
    finally:
        HTTPAdapter.send = original


def _http_message(code: int | None, dataset: str) -> str:
    if code == 401:
        return (
            "Kaggle rejected the credentials (401): check KAGGLE_USERNAME/KAGGLE_KEY or kaggle.json; "
            "a stale ~/.kaggle/access_token or KAGGLE_API_TOKEN overrides them, so remove it; "
            f"or {TWO_WAYS}"
        )
    if code == 403:
        return f"Kaggle refused {dataset} (403): accept the data set's rules on its Kaggle page with this account, or {TWO_WAYS}"
    if code == 404:
        return f"Kaggle has no data set {dataset} (404): fix download.dataset in params.yaml, or {TWO_WAYS}"
    if code == 429:
        return f"Kaggle is rate-limiting this account (429): wait a few minutes and run again, or {TWO_WAYS}"
    return f"Kaggle answered HTTP {code} for {dataset}: run again later, or {TWO_WAYS}"
