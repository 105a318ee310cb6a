"""The download stage against the real `kaggle` client, talking to a local stand-in server.

Covered: the installed `kaggle` client (with kagglesdk) doing its real download path, and our error
handling around it in `casting_inspection.data.download`. The stage script runs in a subprocess with
`KAGGLE_API_ENVIRONMENT=LOCALHOST` (the client then calls `http://localhost/api/v1/...`) and
`http_proxy` pointing to a standard-library HTTP server on 127.0.0.1 that plays both the Kaggle API
(DownloadDataset → 302) and the storage host (the zip). Checked: a successful download gives the
same files as a local `CASTING_ARCHIVE`; HTTP 401/403/404/429, missing credentials, no network, a
stalled server and a corrupt zip each end in a one-line error with nothing left behind.

Not covered: the real kaggle.com endpoints (their paths, headers and answers are as the client's
source and the stand-in assume), the OAuth / access-token flow (only username and key are used), and
a server that stalls in the middle of the zip (the client's own retries with Range requests).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image
from ruamel.yaml import YAML

from helpers import PROJECT

pytestmark = pytest.mark.slow  # real processes, servers, browsers or dvc runs: skipped by `pytest -m "not slow"`

ROOT = PROJECT
DATASET = YAML(typ="safe", pure=True).load((ROOT / "params.yaml").read_text())["download"]["dataset"]
OWNER, SLUG = DATASET.split("/")[:2]
DOWNLOAD_PATH = "/api/v1/datasets.DatasetApiService/DownloadDataset"
BLOB_URL = "http://storage.example/blobs/archive.zip"  # any host: the proxy (our server) gets it
USERNAME, KEY = "tester", "0123456789abcdef0123456789abcdef"
SPLITS, LABELS, PER_FOLDER = ("train", "test"), ("def_front", "ok_front"), 2
STAGE_TIMEOUT_S = 45  # a hung stage fails the test (TimeoutExpired) instead of hanging it
ALTERNATIVE = "CASTING_ARCHIVE="  # every error about Kaggle itself names the local-archive way
EXPECTED = sorted(  # what --out must hold, relative to it
    f"{split}/{label}/cast_{label}_{split}_{i}.jpeg" for split in SPLITS for label in LABELS for i in range(PER_FOLDER)
)


# --- the data: a small zip with the Kaggle layout --------------------------------------------


def _jpeg(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (16, 16), shade).save(buffer, "JPEG")
    return buffer.getvalue()


def make_archive(compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """Zip bytes with `casting_data/casting_data/{train,test}/{def,ok}_front/*.jpeg` and a 512px copy to ignore."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for i, name in enumerate(EXPECTED):
            archive.writestr(f"casting_data/casting_data/{name}", _jpeg(20 + 25 * i))
        archive.writestr("casting_512x512/casting_512x512/def_front/x.jpeg", _jpeg(255))
    return buffer.getvalue()


def corrupt(data: bytes) -> bytes:
    """The same zip with bytes flipped in the middle of one member's data: same length, bad content."""
    info = zipfile.ZipFile(io.BytesIO(data)).infolist()[0]
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    middle = info.header_offset + 30 + name_len + extra_len + info.compress_size // 2
    broken = bytearray(data)
    for i in range(middle - 4, middle + 4):
        broken[i] ^= 0xFF
    return bytes(broken)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- the stand-in: Kaggle API and storage host behind one HTTP proxy address ------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class StandIn(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.archive = b""  # what the storage GET serves
        self.fail_with: int | None = None  # HTTP status for DownloadDataset instead of the redirect
        self.stall = False  # read requests, never answer (until teardown, or longer than any stage runs)
        self.release = threading.Event()
        self.seen: list[Seen] = []

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: StandIn
    protocol_version = "HTTP/1.1"
    timeout = 30  # bounds a handler whose client went away

    def log_message(self, *args):
        pass

    def _receive(self) -> str | None:
        """Record the request (proxy form: `POST http://localhost/api/...`); its path, or None when stalling."""
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = urlsplit(self.path).path
        self.server.seen.append(Seen(self.command, path, dict(self.headers), body))
        if self.server.stall:
            self.server.release.wait(2 * STAGE_TIMEOUT_S)
            self.close_connection = True
            return None
        return path

    def do_POST(self):
        path = self._receive()
        if path is None:
            return
        if path != DOWNLOAD_PATH:
            return self._error(404, f"no endpoint {path}")
        if self.server.fail_with:
            return self._error(self.server.fail_with, "refused by the stand-in")
        self.send_response(302)
        self.send_header("Location", BLOB_URL)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        path = self._receive()
        if path is None:
            return
        if path != urlsplit(BLOB_URL).path:
            return self._error(404, f"no blob {path}")
        data = self.server.archive
        start = int(re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "bytes=0-")).group(1))
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Last-Modified", formatdate(usegmt=True))
        self.send_header("ETag", '"stand-in-1"')
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(data[start:])

    def _error(self, code: int, message: str):
        body = json.dumps({"code": code, "message": message}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    stand_in = StandIn()
    thread = threading.Thread(target=stand_in.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield stand_in
    finally:
        stand_in.release.set()
        stand_in.shutdown()
        stand_in.server_close()
        thread.join(timeout=10)


# --- the stage, run as `dvc repro` runs it, in a throw-away copy of the project -------------------


@dataclass
class Stage:
    project: Path  # copy of params.yaml, stages/ and src/: the working directory
    home: Path  # empty HOME and Kaggle config folder
    out: Path

    def set_param(self, key: str, value: str) -> None:
        params = self.project / "params.yaml"
        text, n = re.subn(rf"(?m)^(\s+{key}:)\s*\S+", rf"\g<1> {value}", params.read_text(), count=1)
        assert n == 1, key
        params.write_text(text)

    def run(self, *, proxy: str | None, credentials: bool = True, archive: Path | None = None, out: Path | None = None):
        env = {
            k: v
            for k, v in os.environ.items()
            if not (k.lower().endswith("_proxy") or k.startswith("KAGGLE_") or k == "CASTING_ARCHIVE")
        }
        env.update(
            HOME=str(self.home),
            KAGGLE_CONFIG_DIR=str(self.home / ".kaggle"),
            KAGGLE_API_ENVIRONMENT="LOCALHOST",
            PYTHONPATH="src",
            PYTHONDONTWRITEBYTECODE="1",
        )
        if proxy:
            env.update(http_proxy=proxy, HTTP_PROXY=proxy)
        if credentials:
            env.update(KAGGLE_USERNAME=USERNAME, KAGGLE_KEY=KEY)
        if archive:
            env["CASTING_ARCHIVE"] = str(archive)
        return subprocess.run(
            [sys.executable, "stages/download.py", "--out", str(out or self.out)],
            cwd=self.project,
            env=env,
            capture_output=True,
            text=True,
            timeout=STAGE_TIMEOUT_S,
        )


@pytest.fixture
def stage(tmp_path) -> Stage:
    project = tmp_path / "project"
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "src", project / "src", ignore=skip)
    shutil.copytree(ROOT / "stages", project / "stages", ignore=skip)
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")
    home = tmp_path / "home"
    home.mkdir()
    return Stage(project=project, home=home, out=tmp_path / "data" / "out")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_failed_cleanly(result, out: Path, *needles: str) -> None:
    """Exit 1, one `download: error:` line naming every needle, and nothing left next to `out`."""
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("download: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not out.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == [], "temporary folders left behind"


# --- the tests ------------------------------------------------------------------------------------


def test_download_matches_local_archive(server, stage, tmp_path):
    server.archive = make_archive()
    archive = tmp_path / "archive.zip"
    archive.write_bytes(server.archive)
    local_out = tmp_path / "local" / "out"

    result = stage.run(proxy=server.proxy)
    local = stage.run(proxy=None, archive=archive, out=local_out)

    assert result.returncode == 0, result.stderr
    assert local.returncode == 0, local.stderr
    downloaded = tree(stage.out)
    assert sorted(downloaded) == EXPECTED
    assert downloaded == tree(local_out)
    assert sorted(p.name for p in stage.out.parent.iterdir()) == ["out"], "temporary folders left behind"

    api_calls = [s for s in server.seen if s.method == "POST"]
    assert [s.path for s in api_calls] == [DOWNLOAD_PATH]
    assert json.loads(api_calls[0].body) == {"ownerSlug": OWNER, "datasetSlug": SLUG}
    credentials = base64.b64encode(f"{USERNAME}:{KEY}".encode()).decode()
    assert api_calls[0].headers.get("Authorization") == f"Basic {credentials}"
    assert [s.path for s in server.seen if s.method == "GET"] == [urlsplit(BLOB_URL).path]


@pytest.mark.parametrize(
    "code, needles",
    [
        (401, ("401", "rejected the credentials", "stale ~/.kaggle/access_token or KAGGLE_API_TOKEN")),
        (403, ("403", "accept the data set's rules")),
        (404, ("404", f"no data set {DATASET}", "download.dataset")),
        (429, ("429", "rate-limiting")),
    ],
)
def test_http_error_is_one_line(server, stage, code, needles):
    server.fail_with = code
    result = stage.run(proxy=server.proxy)
    assert_failed_cleanly(result, stage.out, *needles, ALTERNATIVE)
    assert [s.path for s in server.seen] == [DOWNLOAD_PATH]


def test_no_credentials(server, stage):
    result = stage.run(proxy=server.proxy, credentials=False)
    assert_failed_cleanly(result, stage.out, "no Kaggle credentials", ALTERNATIVE)
    assert result.stdout.splitlines() == [f"download: from Kaggle {DATASET}"]  # the client's help text is hidden
    assert server.seen == []


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('{"username": "anna", ', "kaggle.json: not readable JSON"),
        ('{"username": "anna"}', "kaggle.json: needs a username and a key"),
    ],
    ids=["cut-short", "no-key"],
)
def test_a_kaggle_json_that_is_there_but_unusable_is_named(server, stage, content, needle):
    """The client says only that it found no credentials: a person with the file in place is told what is wrong."""
    (stage.home / ".kaggle").mkdir()
    (stage.home / ".kaggle/kaggle.json").write_text(content)
    result = stage.run(proxy=server.proxy, credentials=False)
    assert_failed_cleanly(result, stage.out, str(stage.home / ".kaggle" / "kaggle.json") + needle.removeprefix("kaggle.json"))
    assert server.seen == []


def test_no_network(stage):
    result = stage.run(proxy=f"http://127.0.0.1:{closed_port()}")
    assert_failed_cleanly(result, stage.out, "cannot reach Kaggle", ALTERNATIVE)


def test_stalled_server_times_out(server, stage):
    server.stall = True
    stage.set_param("timeout_s", "2")
    started = time.monotonic()
    result = stage.run(proxy=server.proxy)
    elapsed = time.monotonic() - started
    assert_failed_cleanly(result, stage.out, "cannot reach Kaggle", "no answer in 2 s", ALTERNATIVE)
    assert elapsed < 20, f"took {elapsed:.1f} s with timeout_s: 2"


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["stored", "deflated"])
def test_corrupt_archive(server, stage, compression):
    server.archive = corrupt(make_archive(compression))
    result = stage.run(proxy=server.proxy)
    assert_failed_cleanly(result, stage.out, "again")
