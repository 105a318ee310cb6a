"""What every stage script shares: one-line errors and a non-zero exit status."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager

from casting_inspection.core.errors import InspectionError


@contextmanager
def sigterm_interrupts():
    """SIGTERM (what `kill`, systemd, a CI timeout and `dvc queue kill` send) raises KeyboardInterrupt, so that the
    `finally` blocks that remove a stage's temporary files and staging folders run as on Ctrl-C; a second SIGTERM
    cannot cut that cleanup short."""
    if threading.current_thread() is not threading.main_thread() or "LOCAL_RANK" in os.environ:
        # signal handlers can only be set from the main thread; under torchrun a rank blocked in a collective could
        # not take it until the collective returns, and torchrun stops its ranks itself
        yield
        return

    def interrupt(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_stage(name: str, main: Callable[[], None]) -> None:
    started = time.perf_counter()
    try:
        with sigterm_interrupts():
            main()
        if os.environ.get("RANK", "0") == "0":  # under torchrun, once per job
            print(f"{name}: done in {time.perf_counter() - started:.1f} s")
    except InspectionError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{name}: interrupted; its temporary files are removed: run it again for its outputs", file=sys.stderr)
        sys.exit(130)
