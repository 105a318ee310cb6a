"""The line's health, live, on a Prometheus registry: the rolling shares of each decision and the rolling
input drift against the training range the model carries. `serve`, `watch` and `station` share it, so one
set of alert rules (deploy/prometheus/alerts.yml) watches them all.

Rolling means the last `window` parts: a camera that drifts or a reject rate that jumps shows within a few
hundred parts, while a single odd part moves nothing.
"""

from __future__ import annotations

import collections
import threading

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from casting_inspection.core.errors import InspectionError
from casting_inspection.data import drift

DECISIONS = ("ok", "defective", "review", "not_a_part")
LATENCY_BUCKETS = (0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)


class LineHealth:
    def __init__(self, registry: CollectorRegistry, window: int = 200):
        if window < 1:
            raise ValueError(f"the rolling window must hold at least one part (got {window})")
        self.reference: dict | None = None  # the model's training range; set by `use_model`
        self.decisions: collections.deque = collections.deque(maxlen=window)
        self.outside: collections.deque = collections.deque(maxlen=window)
        self.lock = threading.Lock()
        r = registry
        self.parts = Counter("casting_inspect_parts", "Parts decided, by decision", ["decision"], registry=r)
        self.share = Gauge(
            "casting_inspect_rolling_share", "Share of each decision over the last parts (the window)", ["decision"], registry=r
        )
        self.filled = Gauge("casting_inspect_rolling_parts", "Parts in the rolling window", registry=r)
        self.drift_share = Gauge(
            "casting_inspect_drift_share_outside",
            "Share of the last parts outside the training range, per image statistic",
            ["statistic"],
            registry=r,
        )
        self.drift_alarm = Gauge(
            "casting_inspect_drift_alarm",
            "1 while a statistic's share outside the training range exceeds the alarm share",
            registry=r,
        )
        self.alarm_share = Gauge("casting_inspect_drift_alarm_share", "The model's alarm share for input drift", registry=r)
        self.latency = Histogram(
            "casting_inspect_part_latency_seconds",
            "From a frame arriving to its decision handed to the outputs",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        for decision in DECISIONS:
            self.share.labels(decision).set(0)
            self.parts.labels(decision)

    def use_model(self, drift_reference: dict) -> None:
        """The training range the loaded model carries; the drift window starts afresh."""
        with self.lock:
            self.reference = drift_reference
            self.outside.clear()
            self.alarm_share.set(float(drift_reference["alarm_share"]))
            for name in drift_reference["statistics"]:
                self.drift_share.labels(name).set(0)

    def observe(self, decisions: list[str], images: np.ndarray | None) -> None:
        """Count decided parts; `images` are the decided ones' network inputs (N, C, H, W uint8), for drift."""
        with self.lock:
            for decision in decisions:
                self.parts.labels(decision if decision in DECISIONS else "not_a_part").inc()
                self.decisions.append(decision)
            if images is not None and len(images) and self.reference is not None:
                flags = drift.outside(drift.image_statistics(np.asarray(images)), self.reference)
                self.outside.extend(flags.to_numpy())
            self._update()

    def _update(self) -> None:
        n = len(self.decisions)
        self.filled.set(n)
        for decision in DECISIONS:
            self.share.labels(decision).set(sum(d == decision for d in self.decisions) / n if n else 0)
        if self.outside:
            shares = np.mean(np.stack(self.outside), axis=0)
            for name, share in zip(self.reference["statistics"], shares):
                self.drift_share.labels(name).set(float(share))
            self.drift_alarm.set(float(bool((shares > self.reference["alarm_share"]).any())))


def expose(registry: CollectorRegistry, host: str, port: int):
    """Serve `registry` for Prometheus on http://HOST:PORT/metrics in a thread; the server, to shut down at stop."""
    try:
        server, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise InspectionError(f"--metrics {host}:{port}: cannot listen ({exc.strerror}); choose another port") from None
    return server


def watched(inspector, address: tuple[str, int] | None, window: int):
    """The line's health for `watch --metrics`: a registry with the rolling rates and drift, served; or (None, None)."""
    if address is None:
        return None, None
    registry = CollectorRegistry()
    health = LineHealth(registry, window)
    health.use_model(inspector.drift_reference)
    return health, expose(registry, *address)
