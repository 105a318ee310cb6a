"""What every stage shares: SIGTERM cleans up as Ctrl-C does, and a run killed outright is cleared up by the next."""

from __future__ import annotations

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
    assert stage.returncode == 130 and err == "prepare: interrupted; outputs were left as they were\n", err
    assert time.monotonic() - started < 10  # not the 60 s it would sleep
    assert list(tmp_path.iterdir()) == []  # no staging folder, no temporary file


def test_a_run_killed_outright_is_cleared_up_and_a_lost_output_put_back(tmp_path, capsys):
    """SIGKILL between moving the output aside and moving the new one in leaves only `.prepared.old`: it is the
    output, put back. Staging folders of the same output are removed; another output's, and other files, stay."""
    for name in (".prepared.old", ".prepared.k1ll3d_0.tmp", ".raw.k1ll3d_0.tmp", "notes"):
        (tmp_path / name).mkdir()
    (tmp_path / ".prepared.old/train.npy").write_bytes(b"the earlier output")
    with atomic_dir(tmp_path / "prepared") as staging:
        assert (tmp_path / "prepared/train.npy").read_bytes() == b"the earlier output"  # back before anything else
        (staging / "train.npy").write_bytes(b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".raw.k1ll3d_0.tmp", "notes", "prepared"]
    assert (tmp_path / "prepared/train.npy").read_bytes() == b"new"
    said = capsys.readouterr().out.splitlines()
    assert len(said) == 2 and "restored" in said[0] and ".prepared.k1ll3d_0.tmp, left behind" in said[1]
