"""Bounded load test of the inspection service on loopback: a fixed number of requests from a few clients.

Starts `casting-inspect serve` with the exported model on 127.0.0.1, sends real test photos (one per
request, then 8 per request) from concurrent clients, and prints throughput and p50/p99 latency, then checks
that the server's /metrics counted every request and decision.
Run after `make repro`: PYTHONPATH=src python bench/bench_service.py [--requests 400] [--clients 4] [--server-args "..."]
(hostile clients and the server's memory: bench/bench_service_memory.py)
"""

from __future__ import annotations

import argparse
import shlex
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
from prometheus_client.parser import text_string_to_metric_families


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


def check_metrics(url: str, requests: int) -> None:
    """The server's own count of /predict answers and decisions (GET /metrics) against what was sent (warm-up included)."""
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(httpx.get(url + "/metrics").text)
        for s in family.samples
    }
    answered = samples.get(("casting_inspect_requests_total", (("endpoint", "/predict"), ("status", "200"))), 0)
    decided = {labels[0][1]: v for (name, labels), v in samples.items() if name == "casting_inspect_decisions_total"}
    print(f"/metrics: {answered:.0f} of {requests} requests answered 200; decisions {decided}", flush=True)
    if answered != requests:
        raise RuntimeError(f"/metrics counted {answered:.0f} answered requests, {requests} were sent")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=Path("models/model.onnx"))
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--server-args", default="", help="more `serve` arguments, e.g. '--max-active 4'")
    args = parser.parse_args()
    paths = sorted(Path("data/raw/test").rglob("*.jpeg"))[:64]
    photos = [(p.name, p.read_bytes(), "image/jpeg") for p in paths]
    port = free_port()
    command = [sys.executable, "-m", "casting_inspection.serving.cli", "serve", "--port", str(port), "--model", str(args.model)]
    server = subprocess.Popen(
        command + shlex.split(args.server_args),
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
        check_metrics(url, sum(row["requests"] + 2 * row["clients"] for row in rows))
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
