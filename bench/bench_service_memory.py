"""Hostile clients against the inspection service on loopback: what they cost it, and how soon they are cut off.

Starts `casting-inspect serve` on 127.0.0.1 and measures, from the server's /proc/<pid>/status (VmRSS):
  flood     one endless file as a chunked body (no Content-Length): bytes sent before the answer, RSS growth
  slow      one byte a second, in the headers and then in the body: seconds until the server cuts the client off
  parallel  N clients at once, each sending a body at the limit made of real-sized photos: the server's peak RSS
Every loop is bounded (--flood-mb, --slow-limit-s). Run after `make repro`, or with --model:
  PYTHONPATH=src python bench/bench_service_memory.py [--model models/model.onnx] [--parallel 8] [--server-args "..."]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import select
import shlex
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

BOUNDARY = b"bench-boundary"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def head(port: int, *headers: bytes) -> bytes:
    lines = [b"POST /predict HTTP/1.1", b"Host: 127.0.0.1:%d" % port, b"Content-Type: multipart/form-data; boundary=" + BOUNDARY]
    return b"\r\n".join([*lines, *headers]) + b"\r\n\r\n"


def part(name: bytes, data: bytes = b"") -> bytes:
    disposition = b'Content-Disposition: form-data; name="files"; filename="' + name + b'"'
    return b"--" + BOUNDARY + b"\r\n" + disposition + b"\r\nContent-Type: image/jpeg\r\n\r\n" + data


def answer(s: socket.socket, limit_s: float) -> bytes:
    s.settimeout(limit_s)
    data = b""
    with contextlib.suppress(OSError):
        while chunk := s.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and not data.startswith(b"HTTP/1.1 100"):
                break
    return data.split(b"\r\n", 1)[0]


def flood(port: int, pid: int, total_mb: int) -> dict:
    """An endless file, chunked; sending stops at the first byte of an answer."""
    frame = b"10000\r\n" + b"\0" * 0x10000 + b"\r\n"
    baseline, peak, sent, started = rss_mb(pid), 0.0, 0, time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        first = part(b"big.jpeg")
        s.sendall(head(port, b"Transfer-Encoding: chunked") + b"%x\r\n%s\r\n" % (len(first), first))
        pending = memoryview(frame)
        while sent < total_mb << 20:
            readable, writable, _ = select.select([s], [s], [], 30)
            if readable or not writable:
                break
            try:
                n = s.send(pending)
            except OSError:
                break
            sent, pending = sent + n, pending[n:] or memoryview(frame)
            if sent % (1 << 20) < n:
                peak = max(peak, rss_mb(pid))
        status = answer(s, 30)
    return {
        "case": "flood",
        "answer": status.decode(errors="replace"),
        "MB sent before the answer": round(sent / 1e6, 1),
        "seconds": round(time.perf_counter() - started, 2),
        "server RSS growth MB": round(max(peak, rss_mb(pid)) - baseline, 1),
    }


def slow(port: int, where: str, limit_s: int) -> dict:
    """One byte a second, in the headers or in the body; seconds until the server answers or closes."""
    if where == "headers":
        first, drip = b"", head(port) * 4
    else:
        first, drip = head(port, b"Content-Length: 1000000"), part(b"slow.jpeg", b"\xff" * 1000)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(first)
        started = time.monotonic()
        for byte in drip[:limit_s]:
            with contextlib.suppress(OSError):
                s.send(bytes([byte]))
            if select.select([s], [], [], 1.0)[0]:
                break
        seconds = time.monotonic() - started
        status = answer(s, 2)
    return {
        "case": f"slow {where}",
        "answer": status.decode(errors="replace") or "closed",
        "seconds": round(seconds, 1) if seconds < limit_s else f"still open after {limit_s}",
    }


def photo_parts(total_bytes: int, per_file: int, max_files: int) -> bytes:
    """A multipart body of noisy JPEGs (each about `per_file` bytes) just under `total_bytes`."""
    rng = np.random.default_rng(0)
    side = 64
    while True:  # the side at which a noisy gray JPEG reaches per_file bytes
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8), "L").save(buffer, "JPEG", quality=95)
        if buffer.tell() >= per_file or side > 4000:
            break
        side = int(side * 1.25)
    data = buffer.getvalue()
    count = min(max_files, max(1, (total_bytes - 4096) // (len(data) + 200)))
    return b"".join(part(b"%d.jpeg" % k, data) + b"\r\n" for k in range(count)) + b"--" + BOUNDARY + b"--\r\n"


def parallel(url: str, pid: int, clients: int, body: bytes) -> dict:
    """`clients` uploads of `body` at once; the server's peak RSS while they run."""
    baseline, peak, done = rss_mb(pid), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb(pid))
            time.sleep(0.02)

    def one(_):
        headers = {"content-type": "multipart/form-data; boundary=" + BOUNDARY.decode()}
        return httpx.post(url + "/predict", content=body, headers=headers, timeout=300).status_code

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        statuses = list(pool.map(one, range(clients)))
    done.set()
    sampler.join()
    return {
        "case": f"parallel x{clients}",
        "answer": ", ".join(f"{statuses.count(s)}x {s}" for s in sorted(set(statuses))),
        "MB sent": round(clients * len(body) / 1e6, 1),
        "seconds": round(time.perf_counter() - started, 1),
        "server RSS baseline MB": round(baseline),
        "server RSS peak MB": round(peak[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/model.onnx"))
    parser.add_argument("--server-args", default="", help="more `serve` arguments, e.g. '--body-timeout 5 --max-active 2'")
    parser.add_argument("--flood-mb", type=int, default=300, help="most MB the flood sends (default: 300)")
    parser.add_argument("--slow-limit-s", type=int, default=20, help="most seconds a slow client drips (default: 20)")
    parser.add_argument("--parallel", type=int, default=0, help="clients sending a body at the limit at once (default: 0, skip)")
    parser.add_argument("--body-mb", type=float, default=64.0, help="size of each parallel body in MB (default: 64)")
    parser.add_argument("--file-kb", type=int, default=1000, help="size of each photo in the parallel bodies (default: 1000)")
    args = parser.parse_args()
    port = free_port()
    command = [sys.executable, "-m", "casting_inspection.serving.cli", "serve", "--port", str(port), "--model", str(args.model)]
    server = subprocess.Popen(command + shlex.split(args.server_args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        rows = [flood(port, server.pid, args.flood_mb)]
        rows += [slow(port, where, args.slow_limit_s) for where in ("headers", "body")]
        if args.parallel:
            body = photo_parts(int(args.body_mb * 1e6), args.file_kb * 1000, max_files=64)
            rows.append(parallel(url, server.pid, args.parallel, body))
    finally:
        server.terminate()
        server.wait(timeout=10)
    for row in rows:
        print(", ".join(f"{k}: {v}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
