"""The files evaluate writes and robustness and export read: together they decide a part."""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class ModelFiles:
    """The weights (train), the operating point and the guard's statistics (evaluate), the model of good parts (anomaly)."""

    checkpoint: Path
    operating_point: Path
    guard: Path
    anomaly: Path
