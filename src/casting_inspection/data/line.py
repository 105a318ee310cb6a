"""The line data set: photos the plant's inspectors labelled, to flow back into training.

A folder versioned by DVC (default `data/line/`, `dvc add data/line`):
- `images/<sha256>.<ext>`: each photo once, named by the SHA-256 of its bytes (the same photo twice is
  one photo), its extension from its content, checked with `images.load_image` before it is stored;
- `labels.csv`: one row per verdict (`COLUMNS`), only ever appended (synced, under an flock on the folder
  waited for at most a few seconds), never rewritten: an undo appends a `retracted` row that takes back the
  same inspector's last verdict on that photo from the same source. It is read strictly (`read_rows`): a
  line that cannot be trusted is named by number and left out, and the others still count.

`training_labels` is what training reads: one row per photo whose standing verdicts agree. Two different
standing verdicts on one photo, by two people or by one, are a dispute, never an overwrite: the photo stays
in `labels.csv` (the disagreement is information) but is left out, as are photos that are not parts. NumPy,
pandas and Pillow only: the serving path imports it.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import hashlib
import io
import math
import os
import re
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from PIL import Image

from casting_inspection.core.errors import InspectionError
from casting_inspection.core.files import atomic_path
from casting_inspection.core.text import FORMULA_START, is_utf8, printable
from casting_inspection.data.images import BadImage, ImageSpec, load_image, read_photo, walk_files

DEFAULT_LINE = Path("data/line")
LABELS_NAME = "labels.csv"
IMAGES_DIR = "images"
COLUMNS = ("sha256", "image", "verdict", "inspector", "labelled_at", "source", "model_version", "defect_probability")
VERDICTS = ("defective", "ok", "not_a_part")
RETRACTED = "retracted"  # an undo: takes back the same inspector's last verdict on the photo from the same source
LOCK_WAIT_SECONDS = 3.0  # a locked line folder is said within seconds, never waited on without end
TRAINING_LABELS = {"defective": "def_front", "ok": "ok_front"}  # the class folder names of the Kaggle data set
TRAINING_COLUMNS = ["sha256", "image", "label", "inspectors", "disputed"]
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "TIFF": "tif", "WEBP": "webp"}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SOURCE = re.compile(r"review|import:[^\r\n]+")


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One person's verdict on one stored photo; `labelled_at` is set when it is recorded (UTC)."""

    sha256: str
    image: str  # relative to the line folder: images/<sha256>.<ext>
    verdict: str  # defective, ok or not_a_part
    inspector: str
    source: str  # review, or import:<the folder's absolute path>
    model_version: str = ""  # the model that decided the photo, when known
    defect_probability: float | None = None  # what that model said, when known
    labelled_at: str = ""

    def row(self) -> dict[str, str]:
        probability = "" if self.defect_probability is None else repr(float(self.defect_probability))
        return dataclasses.asdict(self) | {"defect_probability": probability}


def check_inspector(name: str) -> str:
    """The inspector's name, stripped; one line naming it when it cannot stand in a CSV cell or in the
    'anna=ok; ben=defective' lists of `disagreements`."""
    stripped = (name or "").strip()
    if (
        not stripped
        or len(stripped) > 64
        or printable(stripped) != stripped
        or not stripped.isprintable()
        or ";" in stripped
        or "=" in stripped
        or stripped.startswith(FORMULA_START)
    ):
        raise InspectionError(
            f"inspector name {printable(repr(name))}: give 1 to 64 printable characters, without ';' or '=', "
            "not starting with + - @ (a spreadsheet would run it) (--inspector NAME)"
        )
    return stripped


def add_photo(line_dir: Path, data: bytes, spec: ImageSpec) -> tuple[str, str]:
    """Store a photo once under its content hash, after the checks every other input gets.
    Returns (sha256, image path relative to `line_dir`); raises `images.BadImage` (the one-line reason)
    for a file that is not a usable photo, which is then not stored."""
    load_image(data, spec)  # the reason a bad file is refused is the same as in prepare, predict and serve
    with Image.open(io.BytesIO(data), formats=list(spec.allowed_formats)) as image:  # header only: already checked
        extension = EXTENSIONS.get(image.format or "", (image.format or "img").lower())
    digest = hashlib.sha256(data).hexdigest()
    relative = f"{IMAGES_DIR}/{digest}.{extension}"
    target = Path(line_dir) / relative
    try:
        if not _holds(target, digest):  # absent, or other bytes under its name (a torn copy): a verdict needs this photo
            with atomic_path(target) as tmp:
                with open(tmp, "wb") as file:
                    file.write(data)
                    os.fsync(file.fileno())  # on disk before its name: a verdict never points at an empty file
            _sync_folder(target.parent)
    except OSError as exc:
        raise InspectionError(
            f"{target}: cannot store the photo ({exc.strerror}); check the disk and the folder's rights"
        ) from None
    return digest, relative


def _holds(path: Path, digest: str) -> bool:
    """A stored photo whose bytes are the ones its name says (never a link)."""
    if path.is_symlink() or not path.is_file():
        return False
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest() == digest


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(line_dir: Path, wait: float = LOCK_WAIT_SECONDS):
    """An exclusive flock on the line folder itself (no lock file inside what DVC versions), waited for at most
    `wait` seconds: a folder another process keeps locked is a one-line error, not a hang."""
    line_dir = Path(line_dir)
    try:
        line_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(line_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise InspectionError(f"{line_dir}: cannot use it as the line data set ({exc.strerror}); check --line") from None
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise InspectionError(
                        f"{line_dir}: locked by another process for over {wait:g} s (an import?); no verdict was written, try again"
                    ) from None
                time.sleep(0.05)
        yield line_dir
    finally:
        os.close(fd)


def read_rows(line_dir: Path) -> tuple[list[dict[str, str]], list[tuple[int, str]]]:
    """The rows of labels.csv that training can trust, in the order written, and each line that it cannot, by
    number with why (a spreadsheet's byte-order mark, a cell too many or too few, an unknown verdict...): a bad
    line is named and left out, the others still count. ([], []) when there is no file yet."""
    path = Path(line_dir) / LABELS_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], []
    except OSError as exc:
        raise InspectionError(f"{path}: cannot read it ({exc.strerror}); restore it (dvc checkout data/line)") from None
    problems = []
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
        problems.append((1, "starts with a byte-order mark: saved by another program? check its rows"))
    lines = [raw.decode("utf-8", "surrogateescape") for raw in data.split(b"\n")]  # a stray byte spoils its line only
    if lines and lines[-1] == "":
        lines.pop()
    if lines and next(csv.reader([lines[0]])) != list(COLUMNS):
        raise InspectionError(
            f"{path}: not a line labels file (first line {printable(lines[0][:120])!r}, expected {','.join(COLUMNS)}); "
            "restore it (dvc checkout data/line) or move it aside"
        )
    rows = []
    for number, raw in enumerate(lines[1:], start=2):  # a row is one line: a torn line cannot swallow the next ones
        try:
            cells = next(csv.reader([raw.removesuffix("\r")], strict=True), [])
            reason = "not UTF-8 text" if not all(is_utf8(cell) for cell in cells) else _row_problem(cells)
        except csv.Error as exc:
            reason = f"not a CSV row ({exc})"
        if reason:
            problems.append((number, reason))
        else:
            rows.append(dict(zip(COLUMNS, cells)))
    return rows, problems


def _row_problem(cells: list[str]) -> str | None:
    """Why one line of labels.csv cannot be trusted, or None."""
    if len(cells) != len(COLUMNS):
        return f"{len(cells)} cells, expected {len(COLUMNS)} ({', '.join(COLUMNS)})"
    row = dict(zip(COLUMNS, cells))
    if row["verdict"] not in (*VERDICTS, RETRACTED):
        return f"verdict {printable(row['verdict'])!r} is not one of {', '.join(VERDICTS)} (exactly so written)"
    if not _SHA256.fullmatch(row["sha256"]) or not row["image"].startswith(f"{IMAGES_DIR}/{row['sha256']}."):
        return "its sha256 and image do not name a photo of the line data set"
    if not _SOURCE.fullmatch(row["source"]):
        return f"source {printable(row['source'])!r} is not review or import:<folder>"
    name = row["inspector"]
    if not name.strip() or len(name) > 64 or printable(name) != name or ";" in name or "=" in name:
        return f"inspector name {printable(name)!r} cannot be read"
    try:
        datetime.fromisoformat(row["labelled_at"])
        p = float(row["defect_probability"]) if row["defect_probability"] else 0.0
    except ValueError:
        return "its time or probability cannot be read"
    return None if math.isfinite(p) and 0 <= p <= 1 else "its defect probability is not in [0, 1]"


def _read_rows(line_dir: Path) -> list[dict[str, str]]:
    return read_rows(line_dir)[0]


def _append_rows(line_dir: Path, rows: list[dict[str, str]]) -> None:
    """Append to labels.csv (under the caller's lock), synced: rows are never rewritten, a bad line stays as it is.
    A new file gets its header first; a last line cut short gets its line end, so a row is never glued to it."""
    path = Path(line_dir) / LABELS_NAME
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), lineterminator="\n")
    try:
        if not path.exists() or path.stat().st_size == 0:
            writer.writeheader()
        elif not path.read_bytes().endswith(b"\n"):
            buffer.write("\n")
        writer.writerows(rows)
        _append_whole(path, buffer.getvalue().encode("utf-8"))
    except OSError as exc:
        raise InspectionError(
            f"{path}: cannot write the verdict ({exc.strerror}); check the disk and the folder's rights"
        ) from None


def _append_whole(path: Path, data: bytes) -> None:
    """Append all of `data`, synced, or nothing: a write cut short (a full disk) is cut back to the old end, so no
    verdict lands half and no torn line is left for the next one."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        end = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, end)
            os.fsync(fd)
            raise
    finally:
        os.close(fd)


def _check_verdict(line_dir: Path, verdict: Verdict) -> None:
    """A row that training can trust: a known verdict on a photo that is stored, by a named person."""
    if verdict.verdict not in VERDICTS:
        raise InspectionError(f"verdict {verdict.verdict!r}: must be one of {', '.join(VERDICTS)}")
    if not _SHA256.fullmatch(verdict.sha256) or Path(verdict.image).stem != verdict.sha256:
        raise InspectionError(f"{verdict.image}: not a photo of the line data set (images/<sha256>.<ext>); add it first")
    if not (Path(line_dir) / verdict.image).is_file():
        raise InspectionError(f"{Path(line_dir) / verdict.image}: no such photo; add it (add_photo) before its verdict")
    if not _SOURCE.fullmatch(verdict.source):
        raise InspectionError(f"source {verdict.source!r}: must be 'review' or 'import:<folder path>'")
    p = verdict.defect_probability
    if p is not None and not (math.isfinite(p) and 0 <= p <= 1):
        raise InspectionError(f"defect probability {p} of {verdict.image}: must be empty or in [0, 1]")
    check_inspector(verdict.inspector)


def append_verdicts(line_dir: Path, verdicts: Iterable[Verdict]) -> list[Verdict]:
    """Append verdicts to labels.csv in one synced write under the folder's lock (an import of thousands is one
    write, not thousands). Returns them as recorded, with their time."""
    line_dir, now = Path(line_dir), datetime.now(UTC).isoformat(timespec="seconds")
    recorded = [dataclasses.replace(v, inspector=v.inspector.strip(), labelled_at=v.labelled_at or now) for v in verdicts]
    for verdict in recorded:
        _check_verdict(line_dir, verdict)
    if recorded:
        with _locked(line_dir):
            _append_rows(line_dir, [v.row() for v in recorded])
    return recorded


def append_verdict(line_dir: Path, verdict: Verdict) -> Verdict:
    """One verdict, appended atomically."""
    return append_verdicts(line_dir, [verdict])[0]


class AlreadyLabelled(InspectionError):
    """The inspector already has a standing verdict on the photo (given from another page or station)."""


def append_first_verdict(line_dir: Path, verdict: Verdict) -> Verdict:
    """One person's verdict on a photo they have no standing verdict on (the review station's key press). Checked
    under the folder's lock, with the append: two stations under one name cannot both label a photo unseen."""
    recorded = dataclasses.replace(
        verdict, inspector=verdict.inspector.strip(), labelled_at=datetime.now(UTC).isoformat(timespec="seconds")
    )
    _check_verdict(line_dir, recorded)
    with _locked(line_dir):
        standing = [
            r for r in _active(_read_rows(line_dir)) if (r["sha256"], r["inspector"]) == (recorded.sha256, recorded.inspector)
        ]
        if standing:
            raise AlreadyLabelled(
                f"photo {recorded.sha256[:12]} already has {recorded.inspector}'s verdict {standing[-1]['verdict']} "
                f"({standing[-1]['labelled_at']}, {standing[-1]['source']}): reload the page"
            )
        _append_rows(line_dir, [recorded.row()])
    return recorded


def retract(
    line_dir: Path, sha256: str, inspector: str, source: str, recorded_at: str | None = None, every: bool = False
) -> dict[str, str] | None:
    """Take back this inspector's last verdict on this photo from this source by appending a `retracted` row
    (rows are only ever appended); only if it was recorded at `recorded_at`, when given (an undo takes back its own
    verdict, never one given since); with `every`, each of them. Returns the (last) verdict taken back, or None."""
    inspector = check_inspector(inspector)
    with _locked(line_dir):
        mine = [
            row
            for row in _active(_read_rows(line_dir))
            if (row["sha256"], row["inspector"], row["source"]) == (sha256, inspector, source)
        ]
        if not mine or (recorded_at is not None and mine[-1]["labelled_at"] != recorded_at):
            return None
        now = datetime.now(UTC).isoformat(timespec="seconds")
        _append_rows(line_dir, [row | {"verdict": RETRACTED, "labelled_at": now} for row in (mine if every else mine[-1:])])
    return mine[-1]


def _active(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The verdicts that stand, in order: each `retracted` row removes its inspector's last standing verdict on
    that photo from the same source."""
    standing: list[dict[str, str]] = []
    for row in rows:
        if row["verdict"] != RETRACTED:
            standing.append(row)
            continue
        key = (row["sha256"], row["inspector"], row["source"])
        for index in range(len(standing) - 1, -1, -1):
            if (standing[index]["sha256"], standing[index]["inspector"], standing[index]["source"]) == key:
                del standing[index]
                break
    return standing


def read_labels(line_dir: Path) -> pd.DataFrame:
    """Every verdict ever recorded, in the order written (all columns as text; empty when unknown)."""
    return pd.DataFrame(_read_rows(line_dir), columns=list(COLUMNS))


def latest_verdicts(line_dir: Path) -> pd.DataFrame:
    """The verdicts that stand (not taken back), each inspector's distinct verdicts once per photo. A person who
    gives a photo another verdict without taking the first back disagrees with themself: a dispute, not an overwrite."""
    labels = pd.DataFrame(_active(_read_rows(line_dir)), columns=list(COLUMNS))
    return labels.drop_duplicates(["sha256", "inspector", "verdict"], keep="last").reset_index(drop=True)


def _by_photo(line_dir: Path) -> pd.DataFrame:
    """One row per photo: its image, its inspectors, their distinct verdicts, who said what, and whether they conflict."""
    latest = latest_verdicts(line_dir)
    latest["said"] = latest["inspector"] + "=" + latest["verdict"]
    grouped = latest.groupby("sha256", sort=False)
    photos = pd.DataFrame(
        {
            "image": grouped["image"].last(),
            "inspectors": grouped["inspector"].agg(lambda names: ";".join(sorted(set(names)))),
            "verdicts": grouped["verdict"].agg(lambda verdicts: tuple(sorted(set(verdicts)))),
            "said": grouped["said"].agg(lambda said: "; ".join(sorted(said))),
        }
    )
    photos["disputed"] = photos["verdicts"].map(len) > 1
    return photos.rename_axis("sha256").reset_index()


def training_labels(line_dir: Path = DEFAULT_LINE, include_disputed: bool = False) -> pd.DataFrame:
    """What training may use: one row per photo its inspectors agree is defective or ok, with the label
    as a class folder name (def_front, ok_front). Disputed photos and not-a-part photos are left out;
    `include_disputed` adds the disputed ones (label empty, disputed True) for a report."""
    photos = _by_photo(line_dir)
    if photos.empty:
        return pd.DataFrame(columns=TRAINING_COLUMNS).astype({"disputed": bool})
    agreed = photos["verdicts"].map(lambda v: TRAINING_LABELS.get(v[0], "") if len(v) == 1 else "")
    photos["label"] = agreed
    keep = (agreed != "") | (photos["disputed"] & include_disputed)
    return photos.loc[keep, TRAINING_COLUMNS].reset_index(drop=True)


def disagreements(line_dir: Path = DEFAULT_LINE) -> pd.DataFrame:
    """Photos whose inspectors' latest verdicts conflict, with who said what ('anna=defective; ben=ok'):
    the ones to settle, or to learn what the inspectors disagree on."""
    photos = _by_photo(line_dir)
    columns = ["sha256", "image", "inspectors", "verdicts"]
    if photos.empty:
        return pd.DataFrame(columns=columns)
    disputed = photos[photos["disputed"]].assign(verdicts=lambda t: t["said"])
    return disputed[columns].reset_index(drop=True)


@dataclasses.dataclass
class ImportReport:
    """What an import did: verdicts recorded per verdict, files that were a photo already counted, files skipped."""

    recorded: dict[str, int]
    duplicates: list[str]
    skipped: list[tuple[str, str]]  # (path, reason)


def class_folders(folder: Path, mapping: dict[str, str]) -> dict[Path, str]:
    """Each class sub-folder of `folder` with the verdict it maps to; one line naming what is unmapped,
    mapped but absent, or mapped to no verdict, before anything is added."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InspectionError(f"{folder}: no such folder to import")
    subfolders = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))
    present = set(subfolders)
    if not subfolders:
        raise InspectionError(f"{folder}: no class sub-folders; put the photos in FOLDER/<class>/ and map each with --map")
    for name, verdict in mapping.items():
        if verdict not in VERDICTS:
            raise InspectionError(f"--map {name}={verdict}: the verdict must be one of {', '.join(VERDICTS)}")
        if name not in present:
            raise InspectionError(
                f"--map {name}={verdict}: {folder} has no sub-folder {name!r} (it has: {', '.join(subfolders)})"
            )
    unmapped = [name for name in subfolders if name not in mapping]
    if unmapped:
        maps = " ".join(f"--map {name}=<{'|'.join(VERDICTS)}>" for name in unmapped)
        raise InspectionError(f"{folder}: sub-folder(s) {', '.join(unmapped)} not mapped to a verdict; add {maps}")
    return {folder / name: mapping[name] for name in subfolders}


def import_folder(
    folder: Path,
    mapping: dict[str, str],
    line_dir: Path,
    spec: ImageSpec,
    inspector: str,
    not_a_part: Callable[[bytes], str | None] | None = None,
) -> ImportReport:
    """Add a folder the plant already labelled (FOLDER/<class>/...) with one verdict per photo, source
    `import:<the folder's absolute path>`. A bad file is skipped with its reason; a photo already counted (twice in the
    folder, or labelled so by this inspector before) is stored and recorded once; a photo found in two
    classes is recorded in neither, and every verdict an earlier import of this folder gave it is taken back (say which it
    is, then import again). `not_a_part` (the model's guard)
    says why a photo labelled defective or ok is not a part the model can judge: such a photo is left out."""
    _refuse_overlap(Path(folder), Path(line_dir))
    source = _import_source(Path(folder))
    classes, inspector = class_folders(folder, mapping), check_inspector(inspector)
    report = ImportReport(dict.fromkeys(VERDICTS, 0), [], [])
    for entry in sorted(Path(folder).iterdir()):
        if entry.name.startswith(".") and entry.is_dir() and not entry.is_symlink():
            report.skipped.append((str(entry), "a hidden folder: not a class, not imported"))
        elif entry.is_symlink() and entry.is_dir():
            report.skipped.append((str(entry), "a link to a folder, not followed: give the folder itself"))
        elif not entry.is_dir():
            report.skipped.append((str(entry), "not in a class sub-folder, so it has no label"))
    mine = latest_verdicts(line_dir).query("inspector == @inspector")
    before = dict(zip(mine["sha256"], mine["verdict"]))
    pending: dict[str, Verdict] = {}  # sha256 -> the verdict to record
    seen: dict[str, tuple[str, str]] = {}  # sha256 -> (its class's verdict, the first file found with it)
    both_ways: set[str] = set()
    for class_dir, verdict in classes.items():
        paths, problems = walk_files(class_dir)
        report.skipped += problems
        for path in paths:
            stored = _store(path, line_dir, spec, report, not_a_part if verdict != "not_a_part" else None)
            if stored is None:
                continue
            digest, image = stored
            first = seen.setdefault(digest, (verdict, str(path)))
            if digest in both_ways or first[0] != verdict:
                if digest not in both_ways:  # the first file of it was counted (or taken as counted before): undone
                    both_ways.add(digest)
                    pending.pop(digest, None)
                    report.duplicates = [name for name in report.duplicates if name != first[1]]
                    report.skipped.append((first[1], f"the same photo as {path} (another class); recorded in neither"))
                report.skipped.append((str(path), f"the same photo as {first[1]} (another class); recorded in neither"))
            elif first[1] != str(path) or before.get(digest) == verdict:
                report.duplicates.append(str(path))
            else:
                pending[digest] = Verdict(digest, image, verdict, inspector, source)
    for recorded in append_verdicts(line_dir, list(pending.values())):
        report.recorded[recorded.verdict] += 1
    for digest in sorted(both_ways):  # the folder now holds it in two classes: what it said before no longer stands
        if retract(line_dir, digest, inspector, source, every=True) is not None:
            report.skipped.append((seen[digest][1], "its verdict from an earlier import of this folder is taken back"))
    return report


def _import_source(folder: Path) -> str:
    """`import:` and the folder's whole path (two folders of one name are two sources), checked before anything is stored."""
    source = f"import:{folder.resolve()}"
    if not is_utf8(source) or not _SOURCE.fullmatch(source):
        raise InspectionError(
            f"{printable(str(folder))}: its path names the verdicts' source, and it is not UTF-8 text or holds a line "
            "break; rename the folder"
        )
    return source


def _refuse_overlap(folder: Path, line_dir: Path) -> None:
    """The line data set is not a labelled folder: importing it into itself would relabel its own photos."""
    a, b = folder.resolve(), line_dir.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise InspectionError(f"{folder}: overlaps the line data set {line_dir}; import a folder outside it")


def _store(path: Path, line_dir: Path, spec: ImageSpec, report: ImportReport, screen=None) -> tuple[str, str] | None:
    """Add one file's photo; a file that cannot be read, is not a usable photo or (`screen`) not a part the
    model can judge is named in the report and not stored."""
    try:
        data = read_photo(path, spec.max_file_bytes)
        load_image(data, spec)
        reason = screen(data) if screen is not None else None
        if reason:
            report.skipped.append((str(path), f"not a part the model can judge ({reason}); not imported"))
            return None
        return add_photo(line_dir, data, spec)
    except BadImage as exc:
        report.skipped.append((str(path), str(exc)))
    return None
