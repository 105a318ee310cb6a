"""The search's bookkeeping without DVC: trials a dead worker left running, and values as `dvc exp run -S` reads them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import warnings

import optuna
import pytest

from casting_inspection.core.errors import InspectionError
from casting_inspection.team.presets import _value
from casting_inspection.team.search import (
    _check_objective,
    _check_same_space,
    check_classifier,
    fail_dead_trials,
    finished,
    free_dead_trials,
    hidden,
    load_search,
    main,
    shown_url,
)
from helpers import PROJECT


def test_a_trial_left_running_by_a_dead_worker_of_this_machine_stops_counting(tmp_path):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "s.journal")))
    study = optuna.create_study(study_name="s", storage=storage)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs
    for host, pid in ((socket.gethostname(), gone.pid), (socket.gethostname(), os.getpid()), ("another-machine", gone.pid)):
        trial = study.ask()
        trial.set_user_attr("host", host)
        trial.set_user_attr("pid", pid)
    assert finished(study) == 3
    fail_dead_trials(study)
    states = [t.state for t in study.trials]
    # only the dead worker of this machine: a live one, or one elsewhere, may still be training
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.RUNNING]


def test_values_are_written_as_dvc_reads_them_back():
    assert [_value(v) for v in (None, True, False, 1.0e-5, [8, 16], 64)] == ["null", "true", "false", "1e-05", "[8,16]", "64"]


def test_a_search_on_the_classifier_refuses_a_project_without_one(tmp_path):
    spec = load_search("cnn-search")
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  classifier: false\n")
    with pytest.raises(InspectionError, match="train.classifier is false, so no trial trains a classifier"):
        check_classifier(spec, params)
    params.write_text("train:\n  classifier: true\n")
    check_classifier(spec, params)  # a classifier to tune: the search runs


def test_a_trial_whose_worker_stopped_beating_is_freed_before_the_study_is_counted(tmp_path):
    """A worker on another machine, killed: a database's heartbeat frees its trial, so the study is not left a trial
    short for good (before, a worker that found the study full never looked)."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    body = (
        "import optuna, time; optuna.logging.set_verbosity(optuna.logging.ERROR);"
        f"s = optuna.storages.RDBStorage({url!r}, heartbeat_interval=1, grace_period=1);"
        "optuna.create_study(study_name='s', storage=s).optimize(lambda t: time.sleep(60), n_trials=1)"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=1)  # the schema, before the worker
        gone = subprocess.Popen([sys.executable, "-c", body])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not storage.get_all_studies():
            time.sleep(0.1)
        study = optuna.load_study(study_name="s", storage=storage)
        while time.monotonic() < deadline and not study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
            time.sleep(0.1)
        time.sleep(1.5)  # a beat recorded
        gone.kill()
        gone.wait()
        time.sleep(2.5)  # past the grace period
        assert finished(study) == 1
        free_dead_trials(study)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL]


def test_a_study_resumed_with_another_space_or_a_misspelt_objective_is_refused_before_a_trial(tmp_path, monkeypatch):
    spec = load_search("cnn-search")
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "s.journal")))
    study = optuna.create_study(study_name="s", storage=storage)
    lr = next(d for d in spec.space if d.key == "train.lr")
    study.add_trial(
        optuna.trial.create_trial(
            params={"train.lr": 1e-3},
            distributions={"train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)},
            value=1.0,
        )
    )
    _check_same_space(study, spec, "s")  # another range: Optuna continues the study, and so does the search
    study.add_trial(
        optuna.trial.create_trial(
            params={"train.lr": 3}, distributions={"train.lr": optuna.distributions.IntDistribution(1, 10)}, value=1.0
        )
    )
    with pytest.raises(InspectionError, match=r"study 's' was run with train.lr over IntDistribution.*another --study name"):
        _check_same_space(study, spec, "s")
    same = optuna.create_study(study_name="same", storage=storage)
    same.add_trial(optuna.trial.create_trial(params={"train.lr": 1e-3}, distributions={"train.lr": lr.distribution()}, value=1.0))
    _check_same_space(same, spec, "same")  # the same space: resumed
    monkeypatch.chdir(tmp_path)
    _check_objective(spec)  # no metrics file yet: the first trial tells
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/train.json").write_text('{"val_los": 0.1, "val_accuracy": 0.99}')
    with pytest.raises(InspectionError, match=r"metrics/train.json has no 'val_loss' \(it has val_accuracy, val_los\)"):
        _check_objective(spec)


def test_apply_runs_no_trial_and_a_misspelt_study_starts_none(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(PROJECT)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        with pytest.raises(SystemExit) as exited:
            main(["cnn-search", "--study", "fwe", "--storage", str(tmp_path / "s.journal"), "--apply"])
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    assert "no study 'fwe' in that storage" in str(exited.value.code)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "s.journal")))
    assert optuna.get_all_study_names(storage) == []


def test_a_database_password_is_never_printed():
    url = "postgresql://alice:S3cretPass@db-host:5432/optuna"
    assert shown_url(url) == "postgresql://alice:***@db-host:5432/optuna"
    assert hidden('connection to "db-host" failed for alice:S3cretPass', url) == 'connection to "db-host" failed for alice:***'
    assert shown_url("search/study.journal") == "search/study.journal"
