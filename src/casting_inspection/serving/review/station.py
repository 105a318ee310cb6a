"""The review station: a person settles the photos the model would not decide, and each verdict becomes a
labelled photo of the line data set (`data/line.py`) that training can learn from.

The queue is read from the watch log (`OUT/inspections.sqlite`, read-only: nothing in the watch folders is
written, moved or deleted): decisions `review` and `not_a_part`, most uncertain first (|p - threshold|
ascending, not-a-part after review), minus the photos this inspector already labelled. A verdict copies
the photo into the line data set under its content hash and appends one row (inspector, time, the model
version and probability from the log); skips are not written; undo takes back this inspector's last one.

"Where the network looked" (Grad-CAM) is left out: it needs PyTorch and the checkpoint, and this module
is on the serving path, which imports neither (tested).

Security as in `service`: bound to loopback, only requests naming a loopback host are answered (a web
page elsewhere cannot reach it by DNS rebinding); bound elsewhere, the service's bearer token is required
by `service.Guard` for everything but /health and the page shell (static HTML and script, no data: the
page asks for the token and sends it with every call). Writes need a JSON body, which a cross-site form
cannot send.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import math
import sqlite3
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from PIL import Image
from pydantic import BaseModel, Field, ValidationError
from starlette.middleware.trustedhost import TrustedHostMiddleware

from casting_inspection.core.errors import InspectionError
from casting_inspection.core.text import printable
from casting_inspection.data import line
from casting_inspection.data.images import BadImage, ImageSpec, load_image, read_photo
from casting_inspection.serving import service
from casting_inspection.serving.watch.log import LOG_NAME, read_back

QUEUE_DECISIONS = ("review", "not_a_part")
SHELL = ("/", "/review.js")  # the page itself: no data, loaded without the token so that it can ask for it
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]
BROWSER_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "BMP": "image/bmp", "WEBP": "image/webp"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; connect-src 'self'; img-src blob:; "
    "style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
LIMITS = service.Limits(max_upload_bytes=4096, max_files=1, max_body_bytes=4096, body_timeout=10.0, max_active=2)


@dataclasses.dataclass(frozen=True)
class Waiting:
    """A photo the watcher left for a person, as its log row says, and where the file is now."""

    sha256: str
    name: str
    decision: str
    defect_probability: float | None
    threshold: float
    model_version: str
    reason: str
    decided_at: str
    path: Path

    def uncertainty_order(self) -> tuple:
        """Review before not-a-part; then the closest to the threshold first (no probability: last)."""
        p = self.defect_probability
        distance = abs(p - self.threshold) if p is not None and math.isfinite(p) else math.inf
        return (self.decision != "review", distance, self.decided_at, self.name)

    def public(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "path"}


def _connect(log: Path) -> sqlite3.Connection:
    """Read-only. A log with no write-ahead file (no watcher running) is opened immutable, so that not
    even SQLite's side files appear in the watch folder; else read-only beside the running watcher."""
    if not log.is_file():
        raise InspectionError(f"{log}: no watch log there; pass the --out folder of casting-inspect watch as --watch-out")
    immutable = not Path(f"{log}-wal").exists()
    uri = f"{log.resolve().as_uri()}?{'immutable=1' if immutable else 'mode=ro'}"
    return sqlite3.connect(uri, uri=True, timeout=5.0)


def _log_rows(watch_out: Path) -> list[tuple]:
    log = Path(watch_out) / LOG_NAME
    query = (
        "SELECT sha256, name, decision, defect_probability, threshold, model_version, reason, decided_at, destination "
        f"FROM inspections WHERE decision IN ({','.join('?' * len(QUEUE_DECISIONS))})"
    )
    for attempt in (1, 2):  # a watcher that started between the look for its WAL and the read: read again
        try:
            with contextlib.closing(_connect(log)) as db:  # sqlite3's own context manager commits; this closes
                return db.execute(query, QUEUE_DECISIONS).fetchall()
        except sqlite3.DatabaseError as exc:
            if attempt == 2:
                raise InspectionError(f"{log}: cannot read the watch log ({exc}); check --watch-out") from None
    return []


def waiting_photos(watch_out: Path) -> tuple[list[Waiting], int]:
    """The photos waiting for a person, once each (by content), most uncertain first; and how many logged
    ones are no longer in the watch folders (moved away by hand: they cannot be shown)."""
    watch_out, found, missing = Path(watch_out), {}, 0
    for sha256, name, decision, p, threshold, version, reason, decided_at, destination in _log_rows(watch_out):
        name, reason, logged = printable(read_back(name)), read_back(reason or ""), Path(read_back(destination))
        here = watch_out / logged.parent.name / logged.name  # the log's path may be relative to the watcher's cwd
        path = here if here.is_file() else logged
        if not path.is_file():
            missing += 1
            continue
        item = Waiting(sha256, name, decision, p, float(threshold), version, reason or "", decided_at, path)
        if sha256 not in found or item.uncertainty_order() < found[sha256].uncertainty_order():
            found[sha256] = item
    return sorted(found.values(), key=Waiting.uncertainty_order), missing


def review_queue(watch_out: Path, line_dir: Path, inspector: str) -> tuple[list[Waiting], int]:
    """`waiting_photos` minus those on which this inspector has a standing verdict (whatever the source)."""
    waiting, missing = waiting_photos(watch_out)
    labels = line.latest_verdicts(line_dir)
    done = set(labels.loc[labels["inspector"] == inspector, "sha256"])
    return [item for item in waiting if item.sha256 not in done], missing


def _displayable(data: bytes, spec: ImageSpec) -> tuple[bytes, str]:
    """The photo as a browser shows it: as is for JPEG, PNG, BMP and WebP; others (TIFF) checked with the
    decoding policy, then as PNG."""
    try:
        load_image(data, spec)
        with Image.open(io.BytesIO(data), formats=list(spec.allowed_formats)) as image:
            if image.format in BROWSER_FORMATS:
                return data, BROWSER_FORMATS[image.format]
            buffer = io.BytesIO()
            image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode).save(buffer, "PNG")
            return buffer.getvalue(), "image/png"
    except BadImage as exc:
        raise service.ClientError(422, f"the photo cannot be shown: {exc}") from None


class _Guard(service.Guard):
    """`service.Guard`'s token and body checks, except for the page shell (static, no data)."""

    def refusal(self, headers: dict[bytes, bytes], path: str):
        return super().refusal(headers, "/health" if path in SHELL else path)


PAGE_ID = r"^[A-Za-z0-9-]{8,64}$"  # each open page names itself: an undo takes back only that page's verdict
UNDO_SECONDS = 60.0  # an undo takes back a slip of the key, not a verdict given long ago
MAX_PAGES = 1000  # pages whose last verdict the station remembers for an undo


class _VerdictIn(BaseModel):
    sha256: str
    verdict: Literal["defective", "ok", "not_a_part"]
    page: str = Field(pattern=PAGE_ID)


class _UndoIn(BaseModel):
    page: str = Field(pattern=PAGE_ID)


class Station:
    """The review station's state: where to read, where to write, who is labelling."""

    def __init__(self, watch_out: Path, line_dir: Path, spec: ImageSpec, inspector: str):
        self.watch_out, self.line_dir, self.spec = Path(watch_out), Path(line_dir), spec
        self.inspector = line.check_inspector(inspector)
        self.writing = threading.Lock()  # two key presses at once must not label one photo twice
        self.recent: dict[str, tuple[str, float, str]] = {}  # page -> its last verdict's photo, when, and its recorded time
        _log_rows(self.watch_out)  # a wrong --watch-out fails at start, in one line
        if self.line_dir.exists() and not self.line_dir.is_dir():
            raise InspectionError(f"--line {self.line_dir}: a file, not a folder; give the line data set's folder")
        line.read_rows(self.line_dir)  # and so does a labels file that is not one

    def queue(self) -> dict:
        with _unavailable_as_503():  # a labels file damaged meanwhile: said on the page, in one line
            items, missing = review_queue(self.watch_out, self.line_dir, self.inspector)
            _, bad_lines = line.read_rows(self.line_dir)
        problems = [f"{self.line_dir / line.LABELS_NAME} line {n}: {reason}" for n, reason in bad_lines]
        queue = {"inspector": self.inspector, "left": len(items), "missing": missing, "problems": problems}
        return queue | {"items": [i.public() for i in items]}

    def find(self, sha256: str) -> Waiting:
        with _unavailable_as_503():
            items, _ = review_queue(self.watch_out, self.line_dir, self.inspector)
        for item in items:
            if item.sha256 == sha256:
                return item
        raise service.ClientError(409, f"photo {sha256[:12]} is not waiting for {self.inspector}: reload the page")

    def photo(self, sha256: str) -> tuple[bytes, str]:
        item = self.find(sha256)
        return _displayable(self._read(item), self.spec)

    def anomaly_map(self, sha256: str) -> bytes:
        """The overlay the watcher kept in maps/ for this photo (PNG), or 404 when it kept none."""
        item = self.find(sha256)
        path = self.watch_out / "maps" / item.path.parent.name / f"{item.path.name}.anomaly.png"
        try:
            if item.decision == "not_a_part" or path.is_symlink():  # never decided: no map of its own
                raise BadImage("none kept")
            return read_photo(path, self.spec.max_file_bytes)
        except BadImage:
            raise service.ClientError(404, f"no anomaly map for {item.name}") from None

    def _read(self, item: Waiting) -> bytes:
        """The photo's bytes, which must still be the ones the model decided."""
        try:
            data = read_photo(item.path, self.spec.max_file_bytes)  # a queued 2 GB file is refused unread
        except BadImage as exc:
            raise service.ClientError(409, f"{item.path}: {exc}; reload the page") from None
        if hashlib.sha256(data).hexdigest() != item.sha256:
            raise service.ClientError(409, f"{item.path}: changed since the model decided it; it cannot be labelled here")
        return data

    def label(self, sha256: str, verdict: str, page: str) -> dict:
        """Copy the photo into the line data set and append the verdict with what the model said of it. A verdict
        that differs from one already standing (another station, another person) is recorded as a dispute."""
        with self.writing, _unavailable_as_503():
            item = self.find(sha256)
            try:
                digest, image = line.add_photo(self.line_dir, self._read(item), self.spec)
            except BadImage as exc:
                raise service.ClientError(422, f"{item.path}: {exc}; it cannot be labelled") from None
            given = line.Verdict(digest, image, verdict, self.inspector, "review", item.model_version, item.defect_probability)
            try:
                recorded = line.append_first_verdict(self.line_dir, given)
            except line.AlreadyLabelled as exc:  # given meanwhile by a station of the same name
                raise service.ClientError(409, str(exc)) from None
            self.recent[page] = (digest, time.monotonic(), recorded.labelled_at)
            while len(self.recent) > MAX_PAGES:  # the oldest pages' undo went stale long ago
                self.recent.pop(next(iter(self.recent)))
            standing = line.latest_verdicts(self.line_dir)
            others = standing[(standing["sha256"] == digest) & (standing["verdict"] != verdict)]
        disputed = sorted(others["inspector"] + "=" + others["verdict"])
        return {"recorded": recorded.row(), "name": item.name, "disputed": disputed} | self.queue_size()

    def undo(self, page: str) -> dict:
        """Take back this page's own last verdict, within UNDO_SECONDS, once."""
        with self.writing, _unavailable_as_503():
            sha256, when, recorded_at = self.recent.pop(page, (None, 0.0, ""))
            if sha256 is None or time.monotonic() - when > UNDO_SECONDS:
                raise service.ClientError(
                    409, f"nothing of this page to undo: an undo takes back this page's last verdict within {UNDO_SECONDS:g} s"
                )
            undone = line.retract(self.line_dir, sha256, self.inspector, "review", recorded_at=recorded_at)
        return {"undone": undone} | self.queue_size()

    def queue_size(self) -> dict:
        return {"left": len(review_queue(self.watch_out, self.line_dir, self.inspector)[0])}


async def _json_body(request: Request) -> dict:
    """Writes take JSON only: a cross-site form cannot send it without the browser asking first (CORS)."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise service.ClientError(415, "send the request as application/json")
    try:
        body = await request.json()
    except ValueError:
        raise service.ClientError(400, "the request body is not JSON") from None
    if not isinstance(body, dict):
        raise service.ClientError(400, "the request body must be a JSON object")
    return body


@contextlib.contextmanager
def _unavailable_as_503():
    """The line folder locked, read-only or full: the page says what is wrong at once; nothing was written."""
    try:
        yield
    except InspectionError as exc:
        raise service.ClientError(503, str(exc)) from None


def _parsed(model: type[BaseModel], body: dict):
    """The request's fields, checked: a wrong one is a 422 naming it, never a 500."""
    try:
        return model(**body)
    except ValidationError as exc:
        fields = ", ".join(".".join(map(str, e["loc"])) or "body" for e in exc.errors())
        raise service.ClientError(422, f"invalid request: check {fields}") from None


def _asset(name: str) -> str:
    """The page and its script are files of this package (plain HTML and JavaScript, no build step)."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def create_review_app(station: Station, token: str | None = None, host: str = "127.0.0.1") -> FastAPI:
    """The page and its small JSON API, behind `service.Guard` (the token, when set) and, on loopback
    without a token, a Host check."""
    app = FastAPI(title="Casting inspection: review station", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_Guard, limits=LIMITS, token=token, metrics=service.Metrics("review"))
    if token is None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=sorted({*LOOPBACK_NAMES, host}))
    service._error_handlers(app)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    page_html, page_js = _asset("page.html"), _asset("page.js")

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return page_html

    @app.get("/review.js")
    def script() -> Response:
        return Response(page_js, media_type="text/javascript")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "inspector": station.inspector}

    @app.get("/api/queue")
    def queue() -> dict:
        return station.queue()

    @app.get("/api/photo/{sha256}")
    def photo(sha256: str) -> Response:
        data, media_type = station.photo(sha256)
        return Response(data, media_type=media_type)

    @app.get("/api/map/{sha256}")
    def anomaly_map(sha256: str) -> Response:
        return Response(station.anomaly_map(sha256), media_type="image/png")

    @app.post("/api/verdict")
    async def verdict(request: Request) -> dict:
        given = _parsed(_VerdictIn, await _json_body(request))
        return await run_in_threadpool(station.label, given.sha256, given.verdict, given.page)

    @app.post("/api/undo")
    async def undo(request: Request) -> dict:
        given = _parsed(_UndoIn, await _json_body(request))
        return await run_in_threadpool(station.undo, given.page)

    return app
