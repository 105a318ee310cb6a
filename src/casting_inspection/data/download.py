"""Get the raw images: from Kaggle with the official client, or from a local copy of the archive.

Either way only the official train/test image folders are kept, under a normalised layout
`<out>/{train,test}/{def_front,ok_front}/<file>`, so both sources give byte-identical outputs.
"""

from __future__ import annotations

import io
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

ARCHIVE_ENV = "CASTING_ARCHIVE"
TWO_WAYS = (
    "supply the data one of two ways: Kaggle credentials (KAGGLE_USERNAME and KAGGLE_KEY, "
    "~/.kaggle/kaggle.json or KAGGLE_API_TOKEN), or a downloaded archive with "
    f"{ARCHIVE_ENV}=/path/to/archive.zip (zip or folder with the Kaggle layout)"
)
_WANTED = re.compile(rf"(?:^|/)({'|'.join(SPLITS)})/({'|'.join(CLASS_NAMES)})/([^/]+)$")


def fetch_raw_images(params: DownloadParams, out_dir: Path, archive: str | None) -> dict[str, int]:
    """Fill `out_dir` from `archive` (a zip or folder) or, when it is None, from Kaggle."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as staging:
        if archive:
            source = Path(archive).expanduser()
            if not source.exists():
                raise InspectionError(f"{ARCHIVE_ENV}={archive}: no such file or folder; fix the path")
            _extract(source, staging)
        else:
            with tempfile.TemporaryDirectory(prefix=".kaggle-", dir=out_dir.parent) as download_dir:
                zip_path = download_from_kaggle(params, Path(download_dir))
                _extract(zip_path, staging)
        counts = _count(staging)
    return counts


def _extract(source: Path, dest: Path) -> None:
    if source.is_dir():
        _copy_folder(source, dest)
    elif zipfile.is_zipfile(source):
        _extract_zip(source, dest)
    else:
        raise InspectionError(f"{source}: neither a zip archive nor a folder; give the Kaggle zip or its unpacked folder")


def _target(relative: str, dest: Path) -> Path | None:
    """Where a wanted archive member goes, or None for members outside the train/test image folders."""
    parts = PurePosixPath(relative).parts
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    match = _WANTED.search(relative)
    if not match:
        return None
    split, label, name = match.groups()
    return dest / split / label / name


def _unsafe_reason(name: str) -> str | None:
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or re.match(r"^[A-Za-z]:", normalized):
        return "absolute path"
    if ".." in normalized.split("/"):
        return "path contains '..'"
    return None


def _extract_zip(path: Path, dest: Path) -> None:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InspectionError(f"{path}: not a readable zip archive ({exc}); download it again") from exc
    with archive:
        members = archive.infolist()
        for info in members:  # refuse the whole archive before writing anything
            reason = _unsafe_reason(info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                reason = "symbolic link"
            if reason:
                raise InspectionError(f"{path}: unsafe entry '{info.filename}' ({reason}); refusing to extract this archive")
        try:
            broken = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:  # zlib.error: corrupt deflate data
            raise InspectionError(f"{path}: archive is damaged ({exc}); download it again") from exc
        if broken:
            raise InspectionError(f"{path}: entry '{broken}' fails its CRC check; download the archive again")
        for info in members:
            if info.is_dir():
                continue
            target = _target(info.filename, dest)
            if target is None:
                continue
            _claim(target, info.filename, path)
            with archive.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)


def _copy_folder(root: Path, dest: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
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
            if target is not None:
                _claim(target, relative, root)
                shutil.copyfile(full, target)


def _claim(target: Path, member: str, source: Path) -> None:
    if target.exists():
        raise InspectionError(
            f"{source}: '{member}' collides with another copy of {target.parent.parent.name}/"
            f"{target.parent.name}/{target.name}; the archive holds two data roots, keep one"
        )
    target.parent.mkdir(parents=True, exist_ok=True)


def _count(dest: Path) -> dict[str, int]:
    counts = {}
    for split in SPLITS:
        for label in CLASS_NAMES:
            folder = dest / split / label
            n = sum(1 for _ in folder.iterdir()) if folder.is_dir() else 0
            if n == 0:
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
            raise InspectionError(f"no Kaggle credentials found; {TWO_WAYS}") from None
    return api


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
