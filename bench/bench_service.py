"""Bounded load test of the inspection service on loopback: a fixed number of requests from a few clients.

Starts `casting-inspect serve` with the exported model on 127.0.0.1, sends real test photos (one per
request, then 8 per request) from concurrent clients, and prints throughput and p50/p99 latency.
Run after `make repro`: PYTHONPATH=src python bench/bench_service.py [--requests 400] [--clients 4]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_load(url: str, photos: list[tuple[str, bytes]], requests: int, clients: int, per_request: int) -> dict:
    local = threading.local()

    def one(k: int) -> float:
        files = [("files", photos[(k * per_request + j) % len(photos)]) for j in range(per_request)]
        if not hasattr(local, "client"):  # one kept-alive connection per client, as a camera PC would hold
            local.client = httpx.Client(timeout=60)
        start = time.perf_counter()
        response = local.client.post(url + "/predict", files=files)
        elapsed = time.perf_counter() - start
        if response.status_code != 200:
            raise RuntimeError(f"request {k}: {response.status_code} {response.text}")
        return elapsed

    for k in range(clients * 2):  # warm up
        one(k)
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - started
    row = {
        "images per request": per_request,
        "requests": requests,
        "clients": clients,
        "requests/s": round(requests / wall, 1),
        "images/s": round(requests * per_request / wall, 1),
        "p50 ms": round(1000 * statistics.median(latencies), 1),
        "p99 ms": round(1000 * float(np.percentile(latencies, 99)), 1),
    }
    print(", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=Path("models/model.onnx"))
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    paths = sorted(Path("data/raw/test").rglob("*.jpeg"))[:64]
    photos = [(p.name, p.read_bytes(), "image/jpeg") for p in paths]
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "casting_inspection.deploy.cli", "serve", "--port", str(port), "--model", str(args.model)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        rows = [run_load(url, photos, args.requests, args.clients, n) for n in (1, 8)]
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
