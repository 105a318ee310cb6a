"""The inspection service, started for real on 127.0.0.1 and spoken to over HTTP, by good clients and hostile ones."""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import select
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from casting_inspection.serving.inference import Inspector
from casting_inspection.serving.service import TOKEN_ENV, reason_category, resolve_token

TOKEN = "s3cret-Token_42-for-the-line"
BOUNDARY = b"hostile-boundary"
# The module's server: files of at most 200 kB, 8 files, a 500 kB body, 2 s for the headers and 2 s for the body.
LIMITS = ["--max-upload-mb", "0.2", "--max-files", "8", "--max-body-mb", "0.5", "--header-timeout", "2", "--body-timeout", "2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(model: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "casting_inspection.serving.cli", "serve", "--model", str(model), *args]


def server_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}  # the developer's own token must not leak in
    return {**env, **extra}


@contextlib.contextmanager
def running_server(model: Path, log: Path, *args: str):
    """`casting-inspect serve` on a free port of 127.0.0.1; yields (url, process). Its stderr goes to `log`."""
    port = free_port()
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            serve_command(model, "--port", str(port), *args), stdout=subprocess.DEVNULL, stderr=stderr, env=server_env()
        )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if process.poll() is not None:
                    break
                time.sleep(0.1)
        else:
            raise AssertionError("server did not start: " + log.read_text())
        assert process.poll() is None, "server did not start: " + log.read_text()
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def served(exported_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "stderr.log"
    with running_server(exported_model["onnx"], log, *LIMITS) as (url, process):
        yield url, process, log


@pytest.fixture(scope="module")
def server(served) -> str:
    return served[0]


@pytest.fixture(scope="module")
def token_server(exported_model, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("token")
    (folder / "token").write_text(TOKEN + "\n")
    with running_server(exported_model["onnx"], folder / "stderr.log", "--token-file", str(folder / "token")) as (url, _):
        yield url


def photos(exported_model, n: int) -> list[tuple[str, bytes]]:
    paths = sorted((exported_model["raw"] / "test").rglob("*.jpeg"))[:n]
    return [(p.name, p.read_bytes()) for p in paths]


def test_health_and_model(server, exported_model):
    inspector = Inspector(exported_model["onnx"])
    assert httpx.get(server + "/health").json() == {"status": "ok", "model_version": inspector.version}
    info = httpx.get(server + "/model").json()
    assert info["threshold"] == 0.5 and info["input"]["image_size"] == 32 and "checkpoint_md5" in info["source"]
    assert "git_commit" not in info["source"]  # provenance by content: no git state inside an output


def test_predict_several_images_decides_as_the_cli_does(server, exported_model):
    files = photos(exported_model, 5)
    response = httpx.post(server + "/predict", files=[("files", (name, data, "image/jpeg")) for name, data in files])
    assert response.status_code == 200, response.text
    body = response.json()
    expected = Inspector(exported_model["onnx"]).inspect(files)
    assert [r["file"] for r in body["results"]] == [name for name, _ in files]
    assert [r["decision"] for r in body["results"]] == [r.decision for r in expected]
    assert [r.get("review_reason", "") for r in body["results"]] == [r.review_reason for r in expected]  # which band
    assert [r["defect_probability"] for r in body["results"]] == pytest.approx([r.defect_probability for r in expected], abs=1e-6)


@pytest.mark.slow
def test_concurrent_clients_are_all_served(server, exported_model):
    ((name, data),) = photos(exported_model, 1)

    def one(_):
        return httpx.post(server + "/predict", files={"files": (name, data, "image/jpeg")}, timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(24))) == [200] * 24


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text and "\n" not in response.text.strip()  # one line of JSON
    return response.json()["error"]


def test_bad_requests_get_clear_json_errors(server, exported_model):
    ((name, data),) = photos(exported_model, 1)
    message = error_of(httpx.post(server + "/predict", files={"files": ("notes.jpeg", b"hello", "image/jpeg")}), 422)
    assert "notes.jpeg" in message and "not an image" in message
    assert "'files'" in error_of(httpx.post(server + "/predict", files={"other": (name, data, "image/jpeg")}), 400)
    assert "multipart" in error_of(httpx.post(server + "/predict", content=data, headers={"content-type": "image/jpeg"}), 415)
    big = ("big.jpeg", b"\xff" * 300_000, "image/jpeg")
    assert "larger than 200000 bytes" in error_of(httpx.post(server + "/predict", files={"files": big}), 413)
    many = [("files", (f"{k}.jpeg", data, "image/jpeg")) for k in range(9)]
    assert "files is 8: send the images (at most 8)" in error_of(httpx.post(server + "/predict", files=many), 400)
    tiny = io.BytesIO()
    Image.new("L", (8, 8), 128).save(tiny, "PNG")
    assert "too small" in error_of(
        httpx.post(server + "/predict", files={"files": ("tiny.png", tiny.getvalue(), "image/png")}), 422
    )
    assert httpx.get(server + "/nowhere").json()["error"] == (
        "Not Found (this service answers GET /health, GET /metrics, GET /model, POST /predict)"
    )
    unnamed = [("files", (name, data, "image/jpeg")), ("files", (None, data))]  # the second is a plain field
    assert "with its file name" in error_of(httpx.post(server + "/predict", files=unnamed), 400)
    stray = [("files", (name, data, "image/jpeg")), ("file", (name, data, "image/jpeg"))]
    assert "field 'file' is not read" in error_of(httpx.post(server + "/predict", files=stray), 400)


def test_a_body_cut_short_or_a_file_without_a_name_is_refused_whole(server, exported_model):
    """A proxy that cuts a body leaves its last file unread: nothing of it is decided, and the client hears so. A file
    part with an empty name would be answered under no name."""
    (name, data), (second, defect) = photos(exported_model, 2)
    head = {"content-type": "multipart/form-data; boundary=" + BOUNDARY.decode()}
    whole = file_part(name.encode(), data) + b"\r\n" + file_part(second.encode(), defect)
    for cut in (whole, whole[: -len(defect) // 2], whole + b"\r\n--" + BOUNDARY + b"\r\n"):
        message = error_of(httpx.post(server + "/predict", content=cut, headers=head), 400)
        assert message.startswith("the multipart body ends before its closing boundary"), message
    closed = whole + b"\r\n--" + BOUNDARY + b"--\r\n"
    assert len(httpx.post(server + "/predict", content=closed, headers=head).json()["results"]) == 2
    shouted = {"content-type": "Multipart/Form-Data; boundary=" + BOUNDARY.decode()}  # media types ignore case
    assert httpx.post(server + "/predict", content=closed, headers=shouted).status_code == 200
    unnamed = file_part(b"", data) + b"\r\n--" + BOUNDARY + b"--\r\n"
    assert "with its file name" in error_of(httpx.post(server + "/predict", content=unnamed, headers=head), 400)


def test_a_bad_file_beside_good_ones_is_named_and_the_good_ones_are_decided(server, exported_model):
    good = photos(exported_model, 2)
    sent = [("files", (good[0][0], good[0][1], "image/jpeg")), ("files", ("notes.jpeg", b"hello", "image/jpeg"))]
    answer = httpx.post(server + "/predict", files=[*sent, ("files", (good[1][0], good[1][1], "image/jpeg"))])
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert answer.json()["skipped"] == 1 and [r["file"] for r in results] == [good[0][0], "notes.jpeg", good[1][0]]
    assert results[1]["decision"] is None and "not an image" in results[1]["error"]  # never ok
    assert all(r["decision"] in {"ok", "defective", "review", "not_a_part"} for r in (results[0], results[2]))


# Hostile clients, on raw sockets.


def rss_mb(pid: int) -> float:
    """The resident memory of a process, from /proc/<pid>/status."""
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def read_response(s: socket.socket, limit_s: float = 10) -> bytes:
    """What the server sends until it closes, or until one whole response is in; b'' when it closed without one."""
    s.settimeout(limit_s)
    data = b""
    with contextlib.suppress(OSError):  # a reset after the response, or the time limit
        while chunk := s.recv(65536):
            data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                (line.split(b":")[1] for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")), None
            )
            if length is not None and len(body) >= int(length):
                break
    return data


def status_of(response: bytes) -> int | None:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else None


def upload_head(port: int, *headers: bytes) -> bytes:
    lines = [b"POST /predict HTTP/1.1", b"Host: 127.0.0.1:%d" % port, b"Content-Type: multipart/form-data; boundary=" + BOUNDARY]
    return b"\r\n".join([*lines, *headers]) + b"\r\n\r\n"


def file_part(name: bytes, data: bytes = b"") -> bytes:
    disposition = b'Content-Disposition: form-data; name="files"; filename="' + name + b'"'
    return b"--" + BOUNDARY + b"\r\n" + disposition + b"\r\nContent-Type: image/jpeg\r\n\r\n" + data


def flood(port: int, pid: int, total: int) -> tuple[bytes, int, float]:
    """POST one endless file as a chunked body (no Content-Length), up to `total` bytes, and stop sending at the first
    byte of an answer. Returns the answer, the bytes sent and the server's largest RSS meanwhile, in MB."""
    frame = b"10000\r\n" + b"\0" * 0x10000 + b"\r\n"
    peak, sent = rss_mb(pid), 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        first = file_part(b"big.jpeg")
        s.sendall(upload_head(port, b"Transfer-Encoding: chunked") + b"%x\r\n%s\r\n" % (len(first), first))
        pending = memoryview(frame)
        while sent < total:
            readable, writable, _ = select.select([s], [s], [], 10)
            if readable or not writable:
                break
            try:
                n = s.send(pending)
            except OSError:  # the server closed the connection
                break
            sent, pending = sent + n, pending[n:] or memoryview(frame)
            if sent % (1 << 20) < n:  # once a megabyte
                peak = max(peak, rss_mb(pid))
        answer = read_response(s)
    return answer, sent, max(peak, rss_mb(pid))


@pytest.mark.slow
def test_chunked_oversize_uploads_are_refused_while_they_stream(served):
    """Before: a chunked body was read and spooled in full (300 MB) before the 413. Here each endless upload is
    answered after a few MB (the socket buffers), and 200 MB of them leave the server's memory where it was."""
    url, process, _ = served
    port, baseline, total, peak = int(url.rsplit(":", 1)[1]), rss_mb(process.pid), 0, 0.0
    for _ in range(200):  # bounded: each upload sends at least 200 kB before the per-file limit refuses it
        answer, sent, rss = flood(port, process.pid, total=256 << 20)
        assert status_of(answer) == 413, answer[:300]
        assert b"big.jpeg: larger than 200000 bytes" in answer and b"connection: close" in answer.lower()
        assert sent < 16 << 20, f"sent {sent} bytes before the answer"
        total, peak = total + sent, max(peak, rss)
        if total > 200 << 20:
            break
    assert total > 200 << 20 and peak - baseline < 50, f"{total} bytes sent; server RSS grew {peak - baseline:.0f} MB"


@pytest.mark.slow
def test_a_refused_upload_still_being_sent_ends_in_a_half_close_not_a_reset(served):
    """RFC 9112 9.6: a server that closes at once over unread bytes makes the kernel send a reset, which can destroy
    its last response before the client reads it (seen: a 413 whose body never arrived). Before, a reset followed
    the 413; now the answer is followed by a FIN, and what the client still sends is drained."""
    port = int(served[0].rsplit(":", 1)[1])
    data = file_part(b"big.jpeg", b"\0" * (2 << 20))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(upload_head(port, b"Transfer-Encoding: chunked") + b"%x\r\n%s\r\n" % (len(data), data))
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):  # more of the file, until the sockets' buffers are full
            while s.send(b"10000\r\n" + b"\0" * 0x10000 + b"\r\n"):
                pass
        s.setblocking(True)
        time.sleep(1.0)  # the server has answered and closed by now
        answer = read_response(s)
        assert status_of(answer) == 413 and b"big.jpeg: larger than 200000 bytes" in answer, answer[:300]
        assert s.recv(100) == b"", "the connection was reset after the answer"


def chunked(body: bytes):
    for start in range(0, len(body), 65536):
        yield body[start : start + 65536]


@pytest.mark.slow
def test_body_limit_counts_every_file_chunked_or_not(server):
    """Four files each under the per-file limit, 600 kB in all: over the 500 kB body limit, with or without a length."""
    parts = [file_part(b"%d.jpeg" % k, b"\xff" * 150_000) + b"\r\n" for k in range(4)]
    body = b"".join(parts) + b"--" + BOUNDARY + b"--\r\n"
    headers = {"content-type": "multipart/form-data; boundary=" + BOUNDARY.decode()}
    streamed = httpx.post(server + "/predict", content=chunked(body), headers=headers)
    assert "transfer-encoding" in streamed.request.headers and "content-length" not in streamed.request.headers
    assert "request body larger than 500000 bytes" in error_of(streamed, 413)
    declared = httpx.post(server + "/predict", content=body, headers=headers)
    assert "request body larger than 500000 bytes" in error_of(declared, 413)


def trickle(port: int, head: bytes, drip: bytes, limit_s: int = 8) -> tuple[float, bytes]:
    """Send `head`, then `drip` one byte a second (at most `limit_s` bytes). Returns the seconds from the first drip
    until the server answered or closed, and its answer (b'' when it closed without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        started = time.monotonic()
        for byte in drip[:limit_s]:
            with contextlib.suppress(OSError):
                s.send(bytes([byte]))
            if select.select([s], [], [], 1.0)[0]:  # the server spoke or closed
                break
        return time.monotonic() - started, read_response(s, limit_s=2)


@pytest.mark.slow
def test_a_client_slow_with_its_headers_is_cut_off(server):
    """Before: uvicorn has no header timeout; one byte a second kept the connection for ever. Here: --header-timeout 2."""
    port = int(server.rsplit(":", 1)[1])
    seconds, answer = trickle(port, b"", upload_head(port))
    assert answer == b"" and seconds < 3.5, (seconds, answer)


@pytest.mark.slow
def test_a_client_slow_with_its_body_is_cut_off(server):
    """Before: one byte a second kept the connection for ever. Here: --body-timeout 2, then 408 and the connection closed."""
    port = int(server.rsplit(":", 1)[1])
    seconds, answer = trickle(port, upload_head(port, b"Content-Length: 100000"), file_part(b"slow.jpeg", b"\xff" * 50))
    assert status_of(answer) == 408 and b"not received within 2 s" in answer, answer
    assert b"connection: close" in answer.lower() and seconds < 3.5, seconds


@pytest.mark.slow
def test_without_a_token_the_service_says_it_is_local_only(served):
    assert "unauthenticated, so local only (127.0.0.1)" in served[2].read_text()


@pytest.mark.slow
def test_token_required_everywhere_but_health(token_server, exported_model):
    good, wrong = {"Authorization": f"Bearer {TOKEN}"}, {"Authorization": f"Bearer {TOKEN[:-1]}x"}
    assert httpx.get(token_server + "/health").status_code == 200
    for path in ("/model", "/metrics", "/nowhere", "/docs"):
        for headers in ({}, wrong, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}):
            response = httpx.get(token_server + path, headers=headers)
            assert "Authorization: Bearer" in error_of(response, 401) and response.headers["www-authenticate"] == "Bearer"
    assert httpx.get(token_server + "/model", headers=good).status_code == 200
    assert httpx.get(token_server + "/metrics", headers=good).status_code == 200
    files = [("files", (name, data, "image/jpeg")) for name, data in photos(exported_model, 2)]
    error_of(httpx.post(token_server + "/predict", files=files), 401)
    assert httpx.post(token_server + "/predict", files=files, headers=good).status_code == 200


def refused(model: Path, *args: str, **env: str) -> str:
    """The one line of stderr a `serve` that must not start prints, with exit status 1."""
    command = serve_command(model, "--port", str(free_port()), *args)
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=server_env(**env))
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


@pytest.mark.slow
def test_refuses_to_serve_other_hosts_without_a_token_or_with_an_empty_one(exported_model, tmp_path):
    """0.0.0.0 is served to no one without a token."""
    message = refused(exported_model["onnx"], "--host", "0.0.0.0")
    assert "refusing to serve 0.0.0.0 without a token" in message and TOKEN_ENV in message
    (tmp_path / "empty").write_text("\n")
    assert f"{tmp_path / 'empty'} is empty" in refused(exported_model["onnx"], "--token-file", str(tmp_path / "empty"))
    assert f"{tmp_path / 'missing'}: cannot read" in refused(exported_model["onnx"], "--token-file", str(tmp_path / "missing"))
    assert f"${TOKEN_ENV} is empty" in refused(exported_model["onnx"], **{TOKEN_ENV: " "})


@pytest.mark.slow
def test_an_address_in_use_or_a_limit_that_is_no_number_is_one_line(exported_model):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        message = refused(exported_model["onnx"], "--port", port)
    assert f"--port {port}: cannot listen there" in message and "serve: model" not in message
    assert "--max-upload-mb must be a number above 0 (got inf)" in refused(exported_model["onnx"], "--max-upload-mb", "inf")


def test_token_from_the_file_or_else_the_environment(tmp_path):
    (tmp_path / "token").write_text(f"  {TOKEN}\n")
    assert resolve_token(tmp_path / "token", {TOKEN_ENV: "other"}) == TOKEN
    assert resolve_token(None, {TOKEN_ENV: f"{TOKEN}\n"}) == TOKEN
    assert resolve_token(None, {}) is None


def scrape(url: str) -> dict[tuple, float]:
    """Every sample of /metrics, parsed by prometheus_client: (name, labels) -> value."""
    text = httpx.get(url + "/metrics").text
    return {(s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_metrics_count_what_was_sent(server, exported_model):
    before = scrape(server)
    files = [("files", (name, data, "image/jpeg")) for name, data in photos(exported_model, 5)]
    answers = [httpx.post(server + "/predict", files=files[:3]), httpx.post(server + "/predict", files=files[3:])]
    bad = httpx.post(server + "/predict", files={"files": ("notes.jpeg", b"hello", "image/jpeg")})
    big = httpx.post(server + "/predict", files={"files": ("big.jpeg", b"\xff" * 300_000, "image/jpeg")})
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0) - before.get(key, 0)

    decided = collections.Counter(r["decision"] for a in answers for r in a.json()["results"])
    assert sum(decided.values()) == 5
    for decision, n in decided.items():
        assert delta("casting_inspect_decisions_total", decision=decision) == n
    assert sum(v for (name, _), v in after.items() if name == "casting_inspect_decisions_total") == sum(
        v for (name, _), v in before.items() if name == "casting_inspect_decisions_total"
    ) + len(files)
    assert delta("casting_inspect_requests_total", endpoint="/predict", status="200") == 2
    assert delta("casting_inspect_requests_total", endpoint="/predict", status="422") == 1
    assert delta("casting_inspect_requests_total", endpoint="/predict", status="413") == 1
    assert delta("casting_inspect_requests_total", endpoint="/metrics", status="200") == 1
    assert delta("casting_inspect_request_seconds_count", endpoint="/predict") == 4
    reason = bad.json()["files"][0]["reason"]
    assert delta("casting_inspect_files_rejected_total", reason=reason_category(reason)) == 1
    assert big.status_code == 413 and delta("casting_inspect_files_rejected_total", reason="file too large") == 1
    version = Inspector(exported_model["onnx"]).version
    assert after[("casting_inspect_model_info", frozenset({"version": version}.items()))] == 1
    for decision, n in decided.items():  # the line's health the alert rules watch: rolling shares and drift
        assert delta("casting_inspect_parts_total", decision=decision) == n
    rolled = sum(v for (name, _), v in after.items() if name == "casting_inspect_rolling_share")
    assert after[("casting_inspect_rolling_parts", frozenset())] >= 5 and abs(rolled - 1) < 1e-9
    assert ("casting_inspect_drift_alarm", frozenset()) in after


def test_a_photo_that_is_not_a_part_is_never_ok_over_http(server, exported_model):
    """Black, white, a 1000x40 strip: `not_a_part` with its reason, beside a real part that is still decided."""
    from test_predict import frames

    sent = [(name, frames()[name]) for name in ("black.png", "white.png", "strip.png")] + photos(exported_model, 1)
    files = [("files", (name, data, "application/octet-stream")) for name, data in sent]
    results = httpx.post(server + "/predict", files=files, timeout=30).json()["results"]
    assert [r["decision"] for r in results[:3]] == ["not_a_part"] * 3
    assert all(r["not_a_part"] for r in results[:3]) and results[3]["decision"] in {"ok", "defective", "review"}


def test_ambiguous_framing_is_refused_and_the_connection_closed(server):
    """RFC 9112 6.3: a request with both Content-Length and Transfer-Encoding is answered, then the connection closed
    (else the rest of its body could be read as a second, smuggled request)."""
    port = int(server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\nGET /health HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )
        answer = read_response(s)
        assert answer.startswith(b"HTTP/1.1 400") and b"Content-Length and Transfer-Encoding" in answer
        s.settimeout(5)
        rest = b""
        while chunk := s.recv(65536):
            rest += chunk
        assert b"HTTP/1.1 200" not in rest  # the smuggled request was never answered: the connection was closed


def test_no_page_loads_from_elsewhere_and_the_model_shows_no_server_path(server, exported_model):
    assert httpx.get(server + "/docs").status_code == 404 and httpx.get(server + "/redoc").status_code == 404
    info = httpx.get(server + "/model").json()
    assert info["file"] == exported_model["onnx"].name and str(exported_model["onnx"].parent) not in json.dumps(info)


def test_a_guessable_token_is_refused(exported_model, tmp_path):
    assert "use at least 16" in refused(exported_model["onnx"], **{TOKEN_ENV: "x"})
    (tmp_path / "token").write_text("short-token\n")
    assert "use at least 16" in refused(exported_model["onnx"], "--token-file", str(tmp_path / "token"))
