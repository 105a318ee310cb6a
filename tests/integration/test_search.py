"""The search: an Optuna study whose trials are real DVC experiments, shared by two workers in two clones
through a real PostgreSQL server (Debian's, started here on 127.0.0.1) or a journal file, and pruning
that stops a running `dvc exp run` on its validation curve."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from ruamel.yaml import YAML

from helpers import copy_project, project_env, run

pytestmark = pytest.mark.slow

PRESET = {
    "description": "a small study for the test",
    "search": {
        "objective": "metrics/train.json:val_loss",
        "curve": "plots/train/plots/metrics/val/loss.tsv",
        "stage": "train",
        "trials": 3,
        "pruning": {"startup_trials": 10, "warmup_epochs": 0},  # none stopped: "eager" below prunes
        "space": {"train.lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True}, "train.cnn.dropout": {"choices": [0.0, 0.2]}},
    },
}


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of its own on 127.0.0.1 (as the `postgres` user when we are root): its URL."""
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert initdb, "PostgreSQL's server is not installed: `make postgres` (Debian's postgresql package)"
    bin_dir = Path(initdb[-1]).parent
    data = Path(tempfile.mkdtemp(prefix="pg-"))
    as_user: list[str] = []
    if os.getuid() == 0:  # initdb refuses root
        user = pwd.getpwnam("postgres")
        os.chown(data, user.pw_uid, user.pw_gid)
        as_user = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        [*as_user, bin_dir / "initdb", "-D", data / "db", "-A", "trust", "-U", "search"], check=True, capture_output=True
    )
    server = subprocess.Popen(
        [*as_user, bin_dir / "postgres", "-D", data / "db", "-h", "127.0.0.1", "-p", str(port), "-k", data],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            ready = subprocess.run([bin_dir / "pg_isready", "-h", "127.0.0.1", "-p", str(port)], capture_output=True)
            if ready.returncode == 0:
                break
            time.sleep(0.2)
        subprocess.run([bin_dir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "search", "optuna"], check=True)
        yield f"postgresql://search@127.0.0.1:{port}/optuna"
    finally:
        server.send_signal(signal.SIGINT)  # fast shutdown: it does not wait for clients to disconnect
        server.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="module")
def origin(tmp_path_factory, reproduced_project) -> Path:
    """A bare git remote and a DVC remote holding the reproduced pipeline, with the search presets."""
    root = tmp_path_factory.mktemp("search")
    repo, bare, store = copy_project(reproduced_project[0], root / "repo"), root / "origin.git", root / "dvc-store"
    presets = repo / "presets"
    presets.mkdir()
    YAML().dump(PRESET, presets / "small.yaml")
    eager = {**PRESET, "search": {**PRESET["search"], "pruning": {"startup_trials": 1, "warmup_epochs": 0}}}
    YAML().dump(eager, presets / "eager.yaml")
    broken = {**PRESET, "search": {**PRESET["search"], "space": {"train.no_such_param": {"low": 1, "high": 2}}}}
    YAML().dump(broken, presets / "broken.yaml")
    run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], root)
    run(["dvc", "remote", "add", "-d", "store", str(store)], repo)
    run(["dvc", "push", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "pipeline"], repo)
    run(["git", "remote", "add", "origin", str(bare)], repo)
    run(["git", "push", "-q", "origin", "main"], repo)
    return bare


def clone(origin: Path, dest: Path) -> Path:
    run(["git", "clone", "-q", str(origin), str(dest)], dest.parent)
    run(["git", "config", "user.email", "worker@example.com"], dest)
    run(["git", "config", "user.name", "worker"], dest)
    run(["dvc", "pull", "-q"], dest)
    return dest


def worker(repo: Path, storage: str, study: str, seed: int, *extra: str, preset: str = "small") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "casting_inspection.team.search", preset, "--study", study, "--storage", storage]
    return subprocess.Popen(
        [*cmd, "--seed", str(seed), "--push", "origin", *extra],
        cwd=repo,
        env=project_env(PYTHONPATH=str(repo / "src")),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def experiments(repo: Path, remote: str | None = None) -> set[str]:
    cmd = ["dvc", "exp", "list", "--name-only", *([remote] if remote else [])]
    return set(run(cmd, repo).stdout.split())


def journal(path: str):
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))


@pytest.mark.parametrize("kind", ["postgresql", "journal file"])
def test_two_workers_in_two_clones_share_one_study_and_push_their_experiments(kind, origin, tmp_path, request):
    storage = request.getfixturevalue("postgres") if kind == "postgresql" else str(tmp_path / "shared" / "study.journal")
    name = "pg" if kind == "postgresql" else "file"  # one origin for the module: each study names its own experiments
    clones = [clone(origin, tmp_path / folder) for folder in ("worker-a", "worker-b")]
    workers = [worker(repo, storage, name, seed) for seed, repo in enumerate(clones)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    for w, output in zip(workers, outputs):
        assert w.returncode == 0, output
    study = optuna.load_study(study_name=name, storage=storage if "://" in storage else journal(storage))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    # the total is the study's, not each worker's (two workers looking at once may both start the last trial)
    assert 3 <= len(study.trials) <= 4 and len(done) == len(study.trials), "\n".join(outputs)
    names = {t.user_attrs["experiment"] for t in done}
    assert names == {f"{name}-{t.number}" for t in done}
    local = [experiments(repo) & names for repo in clones]
    assert all(local) and local[0].isdisjoint(local[1]) and local[0] | local[1] == names  # both workers ran trials
    assert {e for e in experiments(clones[0], "origin") if e.startswith(f"{name}-")} == names  # shared through git
    best = study.best_trial
    # any worker applies the best trial, pulling it when the other worker ran it
    result = run(
        [sys.executable, "-m", "casting_inspection.team.search", "small", "--study", name, "--storage", storage]
        + ["--push", "origin", "--apply"],
        clones[1],
        env=project_env(PYTHONPATH=str(clones[1] / "src")),
    )
    assert f"applied {name}-{best.number}" in result.stdout
    params = YAML(typ="safe").load((clones[1] / "params.yaml").read_text())
    assert params["train"]["lr"] == pytest.approx(best.params["train.lr"])
    # the objective is the experiment's own validation metric, as it recorded it
    assert json.loads((clones[1] / "metrics/train.json").read_text())["val_loss"] == best.value
    assert f"| {best.number} | {name}-{best.number} |" in result.stdout  # the table, best first


def test_a_hopeless_trial_is_stopped_mid_run_and_leaves_no_experiment(origin, tmp_path):
    repo = clone(origin, tmp_path / "worker")
    params = YAML().load((repo / "params.yaml").read_text())
    # long enough to be seen and stopped while it runs, however fast the machine: a pruned trial ends at its first epochs
    params["train"]["epochs"] = params["train"]["patience"] = 2000
    YAML().dump(params, repo / "params.yaml")
    storage = str(tmp_path / "study.journal")
    study = optuna.create_study(study_name="hopeless", storage=journal(storage))
    # a finished trial far ahead at every epoch: the next one is behind the median from its first epoch
    study.add_trial(
        optuna.trial.create_trial(
            params={"train.lr": 3.0e-3, "train.cnn.dropout": "0.0"},
            distributions={
                "train.lr": optuna.distributions.FloatDistribution(1.0e-3, 1.0e-2, log=True),
                "train.cnn.dropout": optuna.distributions.CategoricalDistribution(["0.0", "0.2"]),
            },
            value=1.0e-9,
            intermediate_values=dict.fromkeys(range(1, 2001), 1.0e-9),
            user_attrs={"experiment": "elsewhere"},
        )
    )
    w = worker(repo, storage, "hopeless", 0, "--trials", "2", preset="eager")
    output = w.communicate(timeout=600)[0]
    assert w.returncode == 0, output
    trial = optuna.load_study(study_name="hopeless", storage=journal(storage)).trials[1]
    assert trial.state == optuna.trial.TrialState.PRUNED, output
    assert trial.last_step < 2000 and "pruned at epoch" in output  # stopped while training, not after
    assert "hopeless-1" not in experiments(repo)
    assert run(["dvc", "status"], repo).returncode == 0  # the workspace is left usable


def test_a_worker_whose_trials_keep_failing_stops_with_one_line_instead_of_spending_the_study(origin, tmp_path):
    repo = clone(origin, tmp_path / "worker")
    storage = str(tmp_path / "study.journal")
    w = worker(repo, storage, "broken", 0, "--trials", "20", preset="broken")
    output = w.communicate(timeout=600)[0]
    assert w.returncode == 1, output
    assert output.strip().splitlines()[-1].startswith("search: error: 3 trials in a row failed (the last: dvc exp run exited")
    assert "Traceback" not in output
    study = optuna.load_study(study_name="broken", storage=journal(storage))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 3  # 17 of the 20 left for healthy workers
    assert all("no_such_param" in (repo / "search/logs" / f"broken-{t.number}.log").read_text() for t in study.trials)
