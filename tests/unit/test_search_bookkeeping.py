"""The search's bookkeeping without DVC: trials a dead worker left running, and values as `dvc exp run -S` reads them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import optuna
import pytest

from casting_inspection.core.errors import InspectionError
from casting_inspection.team.presets import _value
from casting_inspection.team.search import check_classifier, fail_dead_trials, finished, load_search


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
