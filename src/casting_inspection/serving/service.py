"""The inspection service: FastAPI over one loaded model.

POST /predict (multipart, one or several files in the field `files`), GET /health, GET /model, GET /metrics.
Every error is a 4xx with a one-line JSON body that says what to change; clients never see a stack trace.

What a hostile or broken client cannot do (`Guard`, `HeaderDeadline`, `LingeringClose`): send a body larger than the limits (counted
as it arrives, chunked or not, and refused at once), take longer than the deadlines for its headers or body, reach
anything but /health without the token when one is set, or have more than `max_active` uploads in memory at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import ipaddress
import logging
import os
import re
import time
from pathlib import Path

import h11
import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, Info, generate_latest
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from casting_inspection.core.errors import InspectionError
from casting_inspection.core.text import printable
from casting_inspection.serving.health import LineHealth
from casting_inspection.serving.inference import Inspector

log = logging.getLogger("casting_inspection.serving.service")

TOKEN_ENV = "CASTING_INSPECT_TOKEN"
ENDPOINTS = ("/predict", "/health", "/model", "/metrics")  # the endpoint label; anything else is "other"
MAX_LABEL_VALUES = 32  # per label, so that no input can grow the metrics without bound


@dataclasses.dataclass(frozen=True)
class Limits:
    max_upload_bytes: int  # per file, refused as soon as a file passes it
    max_files: int  # per request
    max_body_bytes: int = 64_000_000  # the whole request body, counted as it arrives
    body_timeout: float = 60.0  # seconds to receive the whole body, from the moment the server starts reading it
    max_active: int = 2  # uploads read and decided at once; the others wait (this bounds the memory)


class ClientError(Exception):
    def __init__(self, status: int, message: str, **details):
        super().__init__(message)
        self.status, self.message, self.details = status, message, details


MIN_TOKEN_CHARS = 16  # a guessable token is no token


def resolve_token(token_file: Path | None, environ=os.environ) -> str | None:
    """The bearer token from --token-file, else from $CASTING_INSPECT_TOKEN; None when neither is set."""
    if token_file is not None:
        try:
            token, source = Path(token_file).read_text(encoding="utf-8").strip(), str(token_file)
        except (OSError, UnicodeDecodeError) as exc:
            raise InspectionError(f"{token_file}: cannot read the token file ({getattr(exc, 'strerror', None) or exc})") from None
    elif environ.get(TOKEN_ENV) is not None:
        token, source = environ[TOKEN_ENV].strip(), f"${TOKEN_ENV}"
    else:
        return None
    if not token:
        raise InspectionError(f"{source} is empty: put the token in it (one line)")
    if not (token.isascii() and token.isprintable() and " " not in token):
        raise InspectionError(f"{source}: the token must be one word of printable ASCII (it travels in an HTTP header)")
    if len(token) < MIN_TOKEN_CHARS:
        raise InspectionError(
            f"{source}: the token has {len(token)} characters; use at least {MIN_TOKEN_CHARS} (e.g. `openssl rand -hex 16`)"
        )
    return token


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: the only addresses served without a token."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def reason_category(reason: str) -> str:
    """The first words of a rejection reason ('absurd size', 'not an image'): a label value that names no file."""
    head = re.split(r"[:(]", reason, maxsplit=1)[0]
    return " ".join(re.findall(r"[a-z]+", head.lower())[:3]) or "other"


class Metrics:
    """The service's Prometheus metrics, in a registry per app (several apps in one process do not collide)."""

    def __init__(self, model_version: str, drift_reference: dict | None = None, window: int = 200):
        self.registry = CollectorRegistry()
        r = self.registry
        self.health = LineHealth(r, window) if drift_reference else None  # rolling rates and drift, for the alert rules
        if self.health:
            self.health.use_model(drift_reference)
        self.requests = Counter("casting_inspect_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.latency = Histogram("casting_inspect_request_seconds", "Time to answer a request", ["endpoint"], registry=r)
        self.decisions = Counter("casting_inspect_decisions", "Decisions returned to clients", ["decision"], registry=r)
        self.rejected = Counter("casting_inspect_files_rejected", "Files refused, by reason category", ["reason"], registry=r)
        Info("casting_inspect_model", "The model being served", registry=r).info({"version": model_version})
        self._seen: dict[str, set[str]] = {"decision": set(), "reason": set()}

    def bounded(self, label: str, value: str) -> str:
        """`value`, or 'other' once the label has MAX_LABEL_VALUES values."""
        seen = self._seen[label]
        if value not in seen and len(seen) >= MAX_LABEL_VALUES:
            return "other"
        seen.add(value)
        return value

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def decided(self, decision: str) -> None:
        self.decisions.labels(self.bounded("decision", decision)).inc()

    def reject(self, reason: str) -> None:
        self.rejected.labels(self.bounded("reason", reason_category(reason))).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Body:
    """The request body as it arrives: bytes counted and a deadline, both raised as ClientErrors the app answers."""

    def __init__(self, scope, receive, limits: Limits):
        headers = dict(scope["headers"])
        self.done = headers.get(b"content-length", b"0") == b"0" and b"transfer-encoding" not in headers  # no body
        self.receive_, self.limits, self.received, self.deadline = receive, limits, 0, None

    async def receive(self):
        if self.done:
            return await self.receive_()
        loop = asyncio.get_running_loop()
        if self.deadline is None:  # from the first read: a request waiting for a free slot is not penalised
            self.deadline = loop.time() + self.limits.body_timeout
        try:
            async with asyncio.timeout(self.deadline - loop.time()):
                message = await self.receive_()
        except TimeoutError:
            raise ClientError(
                408, f"request body not received within {self.limits.body_timeout:g} s: send it faster or in smaller requests"
            ) from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limits.max_body_bytes:
                raise ClientError(
                    413, f"request body larger than {self.limits.max_body_bytes} bytes: send fewer or smaller files"
                )
            self.done = not message.get("more_body", False)
        return message


class Guard:
    """Pure ASGI middleware in front of FastAPI: the token, the body's size and time limits, request metrics.
    A response sent before the body was read in full closes the connection, so the rest is never read."""

    def __init__(self, app, limits: Limits, token: str | None, metrics: Metrics):
        self.app, self.limits, self.metrics = app, limits, metrics
        self.token = token.encode() if token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        body, status, started = _Body(scope, receive, self.limits), 500, time.perf_counter()

        async def send_closing(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if not body.done:  # the rest of the body is not wanted: close rather than read it
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            refusal = self.refusal(dict(scope["headers"]), scope["path"])
            await (refusal or self.app)(scope, body.receive, send_closing)
        finally:
            self.metrics.request(endpoint, status, time.perf_counter() - started)

    def refusal(self, headers: dict[bytes, bytes], path: str) -> JSONResponse | None:
        """401 without the token (except /health); 413 when the declared length is over the limit."""
        if self.token and path != "/health":
            scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
            if not (scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)):
                message = "missing or wrong token: send the header 'Authorization: Bearer <token>'"
                return JSONResponse({"error": message}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        if b"content-length" in headers and b"transfer-encoding" in headers:  # RFC 9112 6.3: answer, then close
            message = "both Content-Length and Transfer-Encoding: send one of them"
            return JSONResponse({"error": message}, status_code=400)
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limits.max_body_bytes:
            message = f"request body larger than {self.limits.max_body_bytes} bytes: send fewer or smaller files"
            return JSONResponse({"error": message}, status_code=413)
        return None


class _Lingering:
    """A connection's transport whose close, while the client is still sending its request, is a lingering close (as
    nginx and Apache do): the response is followed by a FIN, and what the client still sends is dropped until it
    closes or `seconds` pass. A socket closed at once over unread bytes makes the kernel send a reset, which can
    destroy the response in flight: the client of a refused upload would see its connection reset, not the 413."""

    def __init__(self, transport, loop: asyncio.AbstractEventLoop, seconds: float, unread):
        self._transport, self._loop, self._seconds, self._unread = transport, loop, seconds, unread
        self.timer: asyncio.TimerHandle | None = None

    def __getattr__(self, name: str):
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self.timer is not None or self._transport.is_closing()

    def close(self) -> None:
        if self.is_closing():
            return
        if not (self._unread() and self._transport.can_write_eof()):
            return self._transport.close()
        self._transport.write_eof()  # sent once the response is out
        self._transport.resume_reading()
        self.timer = self._loop.call_later(self._seconds, self._transport.close)

    def pause_reading(self) -> None:
        if self.timer is None:
            self._transport.pause_reading()


class LingeringClose(H11Protocol):
    """uvicorn's h11 protocol, closing with `_Lingering` a connection whose request is not read in full."""

    linger_seconds = 5.0

    def connection_made(self, transport) -> None:
        super().connection_made(_Lingering(transport, self.loop, self.linger_seconds, self._request_unread))

    def _request_unread(self) -> bool:
        return self.conn.their_state in (h11.SEND_BODY, h11.ERROR)

    def data_received(self, data: bytes) -> None:
        if self.transport.timer is None:  # else the rest of a refused request: dropped
            super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport.timer is not None:
            self.transport.timer.cancel()
        super().connection_lost(exc)


class HeaderDeadline(LingeringClose):
    """uvicorn's h11 protocol with a deadline for the request line and headers, which uvicorn 0.54 lacks (its
    keep-alive timer only runs between requests and every byte resets it): the connection is closed when they are
    not complete `header_timeout` seconds after the connection opened or the request's first byte arrived."""

    header_timeout = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()  # a connection that never sends a byte is closed too

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self.conn.their_state is h11.IDLE:
            self._arm()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the headers are in: the body's deadline is the app's (Guard)
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def header_deadline_protocol(seconds: float) -> type[HeaderDeadline]:
    """The protocol class to give uvicorn (`http=`), with its header deadline."""
    return type("HeaderDeadline", (HeaderDeadline,), {"header_timeout": seconds})


class _LimitedMultiPart(MultiPartParser):
    """Starlette's multipart parser, refusing a file as soon as it passes the per-file limit, not after spooling it."""

    def __init__(self, headers, stream, max_upload_bytes: int, **kwargs):
        super().__init__(headers, stream, **kwargs)
        self.max_upload_bytes, self.part_bytes, self.complete = max_upload_bytes, 0, False

    def on_part_begin(self) -> None:
        super().on_part_begin()
        self.part_bytes = 0

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.part_bytes += end - start
        upload = self._current_part.file
        if upload is not None and self.part_bytes > self.max_upload_bytes:
            raise ClientError(
                413,
                f"{printable(upload.filename or '')}: larger than {self.max_upload_bytes} bytes; send a smaller photo "
                "or start the service with a larger --max-upload-mb",
                file=upload.filename,
            )
        super().on_part_data(data, start, end)

    def on_end(self) -> None:
        """The closing boundary: only then has every part arrived whole (python-multipart reads a cut body quietly)."""
        super().on_end()
        self.complete = True


async def read_uploads(request: Request, limits: Limits) -> list[tuple[str, bytes]]:
    """(name, bytes) of the files in the field `files`, read as they stream in and refused at the first limit passed."""
    parser = _LimitedMultiPart(
        request.headers, request.stream(), limits.max_upload_bytes, max_files=limits.max_files, max_fields=16
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ClientError(
            400,
            f"{exc.message.rstrip('.')}: send the images (at most {limits.max_files}) in the one multipart field 'files', "
            "in a well-formed body",
        ) from None
    except ClientDisconnect:
        raise ClientError(400, "the client went away before the request body was complete") from None
    try:
        if not parser.complete:  # a proxy or client that cut the body: its last file would go unnamed
            raise ClientError(
                400,
                "the multipart body ends before its closing boundary (cut off on the way?): nothing was decided; send it again",
            )
        stray = sorted({key for key, _ in form.multi_items() if key != "files"})
        if stray:  # nothing sent is passed over without a word
            raise ClientError(400, f"field {stray[0]!r} is not read: send every image in the multipart field 'files'")
        uploads = form.getlist("files")
        if not uploads:
            raise ClientError(400, "no files: send one or more images in the multipart field 'files'")
        if not all(isinstance(item, UploadFile) and item.filename for item in uploads):
            raise ClientError(400, "a part of 'files' is not a file: send each image as a file, with its file name")
        named = []
        for upload in uploads:  # each spooled copy is freed as soon as it is read: one copy of the body, not two
            named.append((upload.filename or "", await upload.read()))
            await upload.close()
        return named
    finally:
        await form.close()


def _shown(value):
    """An answer's texts as JSON can carry them: a name's bytes that are not UTF-8, or a control character, escaped."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {key: _shown(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shown(item) for item in value]
    return value


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError):
        return JSONResponse(_shown({"error": exc.message, **exc.details}), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        routes = sorted(
            f"{method} {route.path}" for route in app.routes if isinstance(route, APIRoute) for method in route.methods - {"HEAD"}
        )
        where = f" (this service answers {', '.join(routes)})" if exc.status_code in (404, 405) else ""
        return JSONResponse({"error": str(exc.detail) + where}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return JSONResponse({"error": "invalid request", "details": [e.get("msg", "") for e in exc.errors()]}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)  # the trace stays in the server's log
        return JSONResponse({"error": "internal error; see the server log"}, status_code=500)


def create_app(inspector: Inspector, limits: Limits, token: str | None = None, window: int = 200) -> FastAPI:
    """The app, behind its Guard; with a token every endpoint but /health requires it."""
    app = FastAPI(  # no /docs: its page loads scripts from a public CDN, which a line network must not need
        title="Casting inspection",
        version=inspector.version,
        description="Decides whether a cast impeller in a top-view photo is defective.",
        docs_url=None,
        redoc_url=None,
    )
    metrics = Metrics(inspector.version, inspector.drift_reference, window)
    app.add_middleware(Guard, limits=limits, token=token, metrics=metrics)
    _error_handlers(app)
    gate = asyncio.Semaphore(limits.max_active)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model_version": inspector.version}

    @app.get("/model")
    def model() -> dict:
        return inspector.info()

    @app.get("/metrics")
    def scrape() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            raise ClientError(415, "send the images as multipart/form-data in the field 'files'")
        async with gate:  # at most max_active bodies in memory and being decided at once
            try:
                named = await read_uploads(request, limits)
            except ClientError as exc:
                if "file" in exc.details:
                    metrics.reject("file too large: over the upload limit")
                raise
            decoded: list = []
            results = await run_in_threadpool(lambda: inspector.inspect(named, decoded=decoded))
        bad = [{"file": r.path, "reason": r.error} for r in results if r.error]
        for item in bad:
            metrics.reject(item["reason"])
        if len(bad) == len(results):  # nothing decided: the request failed; otherwise the good photos are answered
            named = "; ".join(f"{printable(b['file'])}: {b['reason']}" for b in bad)
            raise ClientError(422, f"not a usable image: {named}", files=bad)
        decided = [r.decision for r in results if not r.error]
        for decision in decided:
            metrics.decided(decision)
        if metrics.health is not None:
            metrics.health.observe(decided, np.stack(decoded) if decoded else None)
        return _answer(inspector, results)

    return app


def _answer(inspector: Inspector, results: list) -> dict:
    """POST /predict's body: which model and rule decided, and each photo's decision with its reasons."""
    return {
        "model_version": inspector.version,
        "threshold": inspector.threshold,
        "review_band": list(inspector.review_band) if inspector.review_band else None,
        "skipped": sum(1 for r in results if r.error),  # files of the request not decided: each says why in results
        "results": [
            {"file": r.path, "decision": r.decision or None, "defect_probability": r.defect_probability}
            | ({"error": r.error} if r.error else {})  # not a usable image: not decided, never ok
            | ({"not_a_part": r.flag} if r.flag else {})  # why the model would not judge this photo
            | ({"review_reason": r.review_reason} if r.review_reason else {})  # which band sent it to a person
            for r in results
        ],
    }
