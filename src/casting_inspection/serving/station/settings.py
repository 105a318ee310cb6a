"""What a station is told: its source, folders and outputs' timing, and how its software trigger finds a part.
Plain values, checked here, so that the command line and the tests build a station alike."""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class TriggerSettings:
    width: int = 160  # frames are compared at this width (pixels): cheap, and blind to sensor noise
    difference: int = 30  # grey levels from the empty view that make a pixel part of a part
    min_area: float = 0.01  # the smallest part, as a share of the frame
    centre: float = 0.08  # the part's centre within this share of the frame's width of the frame's centre
    motion: float = 0.03  # most movement between two frames, as a share of the frame's width, for a sharp frame
    jump: float = 0.25  # a centre moving further than this share of the width between frames is another part
    margin: float = 0.0  # the crop's side: the part's larger side times (1 + margin)
    learn: float = 0.05  # how fast an empty frame updates the empty view (0-1)
    dwell: int = 300  # frames something may stay in view before it is learnt as the empty view (10 s at 30 fps)

    def problem(self) -> str | None:
        """The first setting out of its range, named as its option with the range it must lie in; None when all fit."""
        checks = {
            "width": (16 <= self.width <= 4096, "16 to 4096 pixels"),
            "difference": (1 <= self.difference <= 254, "1 to 254 grey levels"),
            "min_area": (0 < self.min_area < 1, "above 0 and under 1 (a share of the frame)"),
            "centre": (0 < self.centre <= 0.5, "above 0 and at most 0.5 (a share of the width)"),
            "motion": (0 <= self.motion <= 1, "0 to 1 (a share of the width)"),
            "jump": (0 < self.jump <= 1, "above 0 and at most 1 (a share of the width)"),
            "margin": (0 <= self.margin <= 1, "0 to 1"),
            "learn": (0 <= self.learn <= 1, "0 to 1"),
            "dwell": (self.dwell >= 2, "2 frames or more"),
        }
        bad = [(name, allowed) for name, (ok, allowed) in checks.items() if not ok]
        if not bad:
            return None
        name, allowed = bad[0]
        return f"--{name.replace('_', '-')} {getattr(self, name)} is out of range: give {allowed}"


@dataclasses.dataclass(frozen=True)
class StationSettings:
    source: str
    out: Path
    model: Path
    name: str = "station-1"  # in every message, so a MES tells stations apart
    trigger: TriggerSettings = TriggerSettings()
    hardware_trigger: bool = False  # decide the frame after each PLC trigger instead of finding parts
    stall_seconds: float = 2.0
    realtime: bool = False  # a video file played at its own frame rate (a live camera's pace)
    log_wait: float = 60.0
    window: int = 200
    threads: int = 0
    trigger_delay: float = 0.0  # hardware trigger: a frame answers an edge only if read this long after it (camera latency)
