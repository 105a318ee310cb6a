"""What every stage shares: SIGTERM cleans up as Ctrl-C does, and a run killed outright is cleared up by the next."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from casting_inspection.core.files import atomic_dir
from helpers import PROJECT

STAGE = """
import sys, time
from pathlib import Path
from casting_inspection.core.files import atomic_dir, atomic_path
from casting_inspection.core.stage import run_stage

def main():
    out = Path(sys.argv[1])
    with atomic_dir(out / "prepared") as staging, atomic_path(out / "metrics.json") as metrics:
        (staging / "train.npy").write_bytes(b"half")
        metrics.write_text("{")
        print("writing", flush=True)
        time.sleep(60)

run_stage("prepare", main)
"""


def test_sigterm_in_any_stage_removes_its_staging_and_temporary_files(tmp_path):
    env = {"PYTHONPATH": str(PROJECT / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    stage = subprocess.Popen(
        [sys.executable, "-c", STAGE, str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert stage.stdout.readline() == "writing\n"
    started = time.monotonic()
    stage.send_signal(signal.SIGTERM)
    _, err = stage.communicate(timeout=30)
    said = "prepare: interrupted; its temporary files are removed: run it again for its outputs\n"
    assert stage.returncode == 130 and err == said, err
    assert time.monotonic() - started < 10  # not the 60 s it would sleep
    assert list(tmp_path.iterdir()) == []  # no staging folder, no temporary file


def test_a_run_killed_outright_is_cleared_up_and_a_live_one_is_left_alone(tmp_path, capsys):
    """Staging folders of the same output whose process is gone are removed; a live run's (the same stage started
    twice), another output's, and other files stay. The earlier output is replaced whole."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, live = int(gone.stdout), os.getppid()
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared/train.npy").write_bytes(b"the earlier output")
    for name in (
        f".prepared.{dead}.k1ll3d_0.tmp",
        ".prepared.old",
        f".prepared.{live}.l1v3_run.tmp",
        ".raw.k1ll3d_0.tmp",
        "notes",
    ):
        (tmp_path / name).mkdir()
    with atomic_dir(tmp_path / "prepared") as staging:
        (staging / "train.npy").write_bytes(b"new")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [f".prepared.{live}.l1v3_run.tmp", ".raw.k1ll3d_0.tmp", "notes", "prepared"]
    assert (tmp_path / "prepared/train.npy").read_bytes() == b"new"
    said = capsys.readouterr().out.splitlines()
    assert len(said) == 2 and all("left behind by an earlier run that was killed" in line for line in said)
