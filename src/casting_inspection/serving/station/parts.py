"""One decided part, as every output of the station tells it, and the one mapping from a decision to the signal
a reject gate acts on: only `ok` is OK. A part in doubt is never OK: REVIEW when a person should look at it
(a gate passes a part on OK alone), NG otherwise."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

SIGNALS = {"ok": "OK", "defective": "NG", "review": "REVIEW", "not_a_part": "NG"}
RESULT_CODES = {"ok": 1, "defective": 2, "review": 3, "not_a_part": 4}  # Modbus and OPC UA: 0 means no result


def signal_of(decision: str) -> str:
    """OK, NG or REVIEW; anything unknown is NG (fail safe)."""
    return SIGNALS.get(decision, "NG")


@dataclasses.dataclass
class Part:
    number: int  # counted from 1 since the station started
    name: str  # its photo's file name
    decision: str  # ok, defective, review or not_a_part (undecided parts and faults are not_a_part, with the reason)
    reason: str  # why not a part, why undecided, or which band sent it to a person; empty for a plain decision
    defect_probability: float | None
    anomaly: float | None
    threshold: float
    model_version: str
    decided_at: str  # UTC, ISO 8601
    frame: int  # the frame it was decided on (or last seen in)
    arrived: float  # perf_counter of that frame's arrival
    photo: bytes  # the JPEG filed (what was decided)
    sha256: str
    image: np.ndarray | None = None  # the network's input, for drift and the anomaly map's overlay
    anomaly_map: np.ndarray | None = None
    filed: Path | None = None  # where its photo was filed (the recorder's)

    @property
    def signal(self) -> str:
        return signal_of(self.decision)

    def message(self, station: str, latency_ms: float) -> dict:
        """The JSON a MES receives (MQTT) and the line a person reads."""
        return {
            "station": station,
            "part": self.number,
            "photo": self.name,
            "decision": self.decision,
            "signal": self.signal,
            "reason": self.reason,
            "defect_probability": self.defect_probability,
            "anomaly": self.anomaly,
            "threshold": self.threshold,
            "model_version": self.model_version,
            "decided_at": self.decided_at,
            "frame": self.frame,
            "latency_ms": round(latency_ms, 2),
        }
