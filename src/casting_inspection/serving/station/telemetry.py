"""The station's Prometheus endpoint: the line's health (serving.health) plus the station's own state: ready or
not, frames read and dropped, parts undecided, and which model decides."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Info

from casting_inspection.serving.health import LineHealth, expose


class StationMetrics:
    def __init__(self, host: str, port: int | None, window: int):
        self.registry = r = CollectorRegistry()
        self.started = time.monotonic()
        self.health = LineHealth(r, window)
        self.ready = Gauge("casting_inspect_station_ready", "1 while the station can decide parts and signal them", registry=r)
        self.frames = Counter("casting_inspect_frames", "Frames the station looked at", registry=r)
        self.dropped = Gauge(
            "casting_inspect_frames_dropped", "Frames of a live camera the station had no time for, since start", registry=r
        )
        self.undecided = Counter(
            "casting_inspect_parts_undecided", "Parts that left the view undecided (signalled NG)", registry=r
        )
        self.model = Info("casting_inspect_model", "The model deciding", registry=r)
        self.server = expose(r, host, port) if port is not None else None

    def model_loaded(self, inspector) -> None:
        self.model.info({"version": inspector.version})
        self.health.use_model(inspector.drift_reference)

    def decided(self, part, latency: float) -> None:
        self.health.observe([part.decision], None if part.image is None else part.image[None])
        self.health.latency.observe(latency)
        if part.reason.startswith("undecided"):
            self.undecided.inc()

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
