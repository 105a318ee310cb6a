"""The pull-request report, built by the real dvc and git CLIs on two commits of a small repository."""

from __future__ import annotations

import json
import subprocess
import sys

from ruamel.yaml import YAML

from conftest import PROJECT, project_env, run

DVC_YAML = """stages:
  train:
    cmd: python train.py
    params: [train]
    metrics:
      - metrics/test.json:
          cache: false
plots:
  - plots/evaluate/images
"""


def commit(repo, lr: float, accuracy: float, picture: bytes, message: str) -> None:
    (repo / "params.yaml").write_text(f"train:\n  lr: {lr}\n  epochs: 15\n")
    (repo / "metrics/test.json").write_text(json.dumps({"accuracy": accuracy, "missed_defects": 1}))
    (repo / "plots/evaluate/images/sample_grid.png").write_bytes(picture)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", message], repo)


def report(repo, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "casting_inspection.team.pr_report", *args],
        cwd=repo,
        env=project_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def make_repo(tmp_path):
    repo = tmp_path / "repo"
    (repo / "metrics").mkdir(parents=True)
    (repo / "plots/evaluate/images").mkdir(parents=True)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    for cmd in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "config", "user.email", "t@example.com"],
        ["git", "config", "user.name", "t"],
        ["dvc", "init", "-q"],
    ):
        run(cmd, repo)
    return repo


def test_report_shows_changed_params_metrics_and_plots(tmp_path):
    repo = make_repo(tmp_path)
    commit(repo, 0.003, 0.9986, b"old picture", "base")
    run(["git", "checkout", "-qb", "faster-lr"], repo)
    commit(repo, 0.01, 0.9944, b"new picture", "raise lr")
    text = report(repo, "--base", "main")
    assert "## Pipeline report against `main`" in text
    params = text.split("### Params")[1].split("### Metrics")[0]
    assert "train.lr" in params and "0.003" in params and "0.01" in params and "epochs" not in params
    metrics = text.split("### Metrics")[1].split("### Plots")[0]
    assert "accuracy" in metrics and "0.9986" in metrics and "0.9944" in metrics and "-0.0042" in metrics
    assert "missed_defects" not in metrics  # unchanged values stay out of the diff
    assert "`plots/evaluate/images/sample_grid.png`" in text.split("### Plots")[1]


def test_a_missing_base_or_missing_metrics_are_said_plainly(tmp_path):
    repo = make_repo(tmp_path)
    (repo / "params.yaml").write_text("train:\n  lr: 0.003\n")
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "no metrics yet"], repo)
    run(["git", "checkout", "-qb", "first-run"], repo)
    commit(repo, 0.003, 0.99, b"picture", "first metrics")
    text = report(repo, "--base", "main")
    assert "Not on `main` (new metrics, shown without an old value): `metrics/test.json`" in text
    assert "0.99" in text.split("### Metrics")[1]
    shallow = report(repo, "--base", "origin/main")  # as in a shallow CI checkout that never fetched the base
    assert "Base revision `origin/main` is not in this checkout" in shallow and "0.99" in shallow


def test_the_workflow_runs_this_report_with_the_base_fetched():
    workflow = YAML(typ="safe").load((PROJECT / ".github/workflows/pr-report.yml").read_text())
    steps = workflow["jobs"]["report"]["steps"]
    assert steps[0]["with"]["fetch-depth"] == 0
    assert any("make pr-report BASE=origin/${{ github.base_ref }}" in step.get("run", "") for step in steps)
    comment = next(step for step in steps if step.get("name") == "Comment")
    assert "head.repo.full_name == github.repository" in comment["if"]  # forks get no write token
    makefile = (PROJECT / "Makefile").read_text()
    assert "python -m casting_inspection.team.pr_report --base $(BASE)" in makefile
