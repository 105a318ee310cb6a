"""What every stage script shares: one-line errors and a non-zero exit status."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

from casting_inspection.core.errors import InspectionError


def run_stage(name: str, main: Callable[[], None]) -> None:
    started = time.perf_counter()
    try:
        main()
        if os.environ.get("RANK", "0") == "0":  # under torchrun, once per job
            print(f"{name}: done in {time.perf_counter() - started:.1f} s")
    except InspectionError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{name}: interrupted; outputs were left as they were", file=sys.stderr)
        sys.exit(130)
