"""The pull-request report, built by the real dvc and git CLIs on two commits of a small repository."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from ruamel.yaml import YAML

from helpers import PROJECT, project_env, run

pytestmark = pytest.mark.slow  # real processes, servers, browsers or dvc runs: skipped by `pytest -m "not slow"`

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


def run_report(repo, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "casting_inspection.team.pr_report", *args],
        cwd=repo,
        env=project_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def report(repo, *args: str) -> str:
    result = run_report(repo, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def predictions_csv(wrong: set[int], n: int = 715, defects: int = 453, first: int = 0, folders: bool = True) -> str:
    """The evaluate stage's table for photos first..first+n-1 (the first `defects` defective); `wrong` are decided wrong.

    folders=False leaves the class folder out of `path`, so a photo can change label under the same path.
    """
    rows = ["path,label,defect_probability,predicted,decision,evidence_on_part,leaked,near_duplicate"]
    for i in range(first, first + n):
        label = "def_front" if i - first < defects else "ok_front"
        rejected = (label == "def_front") != (i in wrong)
        predicted, probability = ("def_front", 0.93) if rejected else ("ok_front", 0.04)
        path = f"test/{label}/cast_{i}.jpeg" if folders else f"test/cast_{i}.jpeg"
        rows.append(f"{path},{label},{probability},{predicted},{'defective' if rejected else 'ok'},0.8,False,False")
    return "\n".join(rows) + "\n"


def commit_decisions(repo, wrong: set[int], message: str, **table) -> None:
    """A commit whose evaluate stage decided `wrong` wrong (and its accuracy in metrics/test.json)."""
    (repo / "plots/evaluate/predictions.csv").write_text(predictions_csv(wrong, **table))
    n = table.get("n", 715)
    commit(repo, 0.003, round((n - len(wrong)) / n, 4), message.encode(), message)


BASE_WRONG = {0, 1}  # two missed defects: 713/715, like the real model


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
    assert "Not on `main` (new metrics, shown without an old value): `metrics/test.json`\n" in text  # what dvc.yaml declares
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
    check = next(i for i, step in enumerate(steps) if "CHECK=1" in step.get("run", ""))
    assert check > steps.index(comment)  # the report is posted even when the check fails
    assert "if" not in steps[check]  # forks are checked too
    makefile = (PROJECT / "Makefile").read_text()
    assert "python -m casting_inspection.team.pr_report --base '$(BASE)'" in makefile  # quoted: a ref is any text
    assert "$(if $(CHECK),--check)" in makefile


def decisions(text: str) -> str:
    return text.split("### Decisions on the same test photos")[1].split("### Plots")[0]


def test_one_photo_flipped_is_noise_and_the_check_passes(tmp_path):
    repo = make_repo(tmp_path)
    commit_decisions(repo, BASE_WRONG, "base")
    run(["git", "checkout", "-qb", "one-more-miss"], repo)
    commit_decisions(repo, BASE_WRONG | {2}, "one more missed defect")
    result = run_report(repo, "--base", "main", "--check", "--tolerances", str(PROJECT / "pr-tolerances.yaml"))
    assert result.returncode == 0, result.stderr
    section = decisions(result.stdout)
    assert "715 photos, paired by `path`." in section
    assert "**Verdict: no significant change: 0 photos better, 1 worse, McNemar exact p = 1.00**" in section
    assert "| accuracy (of 715 photos) | 99.72 % (713) | 99.58 % (712) | -0.14 pts |" in section
    assert "| missed defects (of 453 defective photos) | 0.44 % (2) | 0.66 % (3) | +0.22 pts |" in section
    assert "| false rejects (of 262 good photos) | 0.00 % (0) | 0.00 % (0) | +0.00 pts |" in section
    assert section.count("| noise |") == 3 and "95 % interval of the change" in section
    assert f"(`{PROJECT / 'pr-tolerances.yaml'}`)" in section
    assert (
        result.stderr.strip() == "pr-report check passed: no significant change: 0 photos better, 1 worse, McNemar exact p = 1.00"
    )
    again = run_report(repo, "--base", "main", "--tolerances", str(PROJECT / "pr-tolerances.yaml"))
    assert again.stdout == result.stdout  # a fixed seed: the same report every run


def test_thirty_photos_flipped_is_a_regression_and_the_check_fails_with_one_line(tmp_path):
    repo = make_repo(tmp_path)
    commit_decisions(repo, BASE_WRONG, "base")
    run(["git", "checkout", "-qb", "worse"], repo)
    broken = set(range(2, 17)) | set(range(453, 468))  # 15 more missed defects, 15 good parts rejected
    commit_decisions(repo, BASE_WRONG | broken, "thirty more wrong")
    without = run_report(repo, "--base", "main")
    assert without.returncode == 0  # without --check it only reports
    result = run_report(repo, "--base", "main", "--check")
    assert result.returncode == 1 and result.stdout == without.stdout
    verdict = (
        "significant regression in accuracy (-4.20 pts), missed defects (+3.31 pts), false rejects (+5.73 pts): "
        "0 photos better, 30 worse, McNemar exact p = 1.9e-09"
    )
    assert f"**Verdict: {verdict}**" in decisions(result.stdout)
    assert decisions(result.stdout).count("| regression |") == 3
    assert "(built-in defaults (no `pr-tolerances.yaml`))" in result.stdout  # none in this repository
    assert result.stderr.splitlines() == [f"pr-report check failed: {verdict}"]


def test_thirty_photos_fixed_is_an_improvement_and_a_looser_tolerance_is_read(tmp_path):
    repo = make_repo(tmp_path)
    commit_decisions(repo, set(range(30)), "base")
    run(["git", "checkout", "-qb", "better"], repo)
    commit_decisions(repo, set(), "thirty fixed")
    text = report(repo, "--base", "main")
    assert (
        "**Verdict: significant improvement in accuracy (+4.20 pts), missed defects (-6.62 pts): 30 photos better, 0 worse"
        in text
    )
    commit_decisions(repo, set(range(453, 460)), "seven good parts rejected")  # +2.67 pts false rejects
    (repo / "tolerances.yaml").write_text("max_false_reject_rate_increase: 0.03  # a plant that scraps cheaply\n")
    result = run_report(repo, "--base", "main", "--check", "--tolerances", "tolerances.yaml")
    assert result.returncode == 0, result.stderr
    assert "significant but tolerated worsening in false rejects (+2.67 pts): 30 photos better, 7 worse" in result.stdout
    assert "| 3.00 pts | worse, within tolerance |" in result.stdout


def test_a_base_without_predictions_or_with_other_photos_is_said_plainly(tmp_path):
    repo = make_repo(tmp_path)
    commit(repo, 0.003, 0.99, b"picture", "before the evaluate stage wrote decisions")
    run(["git", "checkout", "-qb", "first-decisions"], repo)
    commit_decisions(repo, BASE_WRONG, "first decisions", folders=False)
    result = run_report(repo, "--base", "main", "--check")
    assert result.returncode == 0, result.stderr
    assert "No `plots/evaluate/predictions.csv` on `main`: no earlier decisions to compare with." in decisions(result.stdout)
    assert "Verdict" not in result.stdout and "no paired decisions" in result.stderr
    run(["git", "checkout", "-qb", "new-test-split"], repo)
    commit_decisions(repo, BASE_WRONG, "a test split with 10 photos swapped", first=10, folders=False)
    section = decisions(report(repo, "--base", "first-decisions"))
    assert "The photo sets differ: 705 photos paired by `path`; 10 only on `first-decisions`, 10 only in this change" in section
    assert "10 photos changed label; both sides are judged against this change's labels." in section
    assert "Verdict: " in section


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("alpha: 0.05\nmax_accuracy_drop: lots\n", "`max_accuracy_drop` must be a number from 0 to 1"),
        ("max_escape_rate_increse: 0.0\n", "unknown key `max_escape_rate_increse`"),
        ("alpha: 0\n", "`alpha` must be a number between 0 and 1"),
        ("max_false_reject_rate_increase: true\n", "`max_false_reject_rate_increase` must be a number"),
        ("- 0.05\n", "expected `key: number` lines, got a list"),
        ("alpha: [0.05\n", "not readable YAML (line 2)"),
        (None, "no such tolerances file"),
    ],
)
def test_a_bad_tolerances_file_is_one_line_naming_the_file_and_the_key(tmp_path, content, says):
    if content is not None:
        (tmp_path / "tol.yaml").write_text(content)
    result = run_report(tmp_path, "--check", "--tolerances", "tol.yaml")  # read before any git or dvc
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [result.stderr.strip()] and result.stderr.startswith("error: tol.yaml: ")
    assert says in result.stderr


def test_the_shipped_tolerances_are_the_built_in_defaults():
    from casting_inspection.team.pr_report import DEFAULT_TOLERANCES, load_tolerances

    assert load_tolerances(str(PROJECT / "pr-tolerances.yaml"))[0] == DEFAULT_TOLERANCES


def test_a_metrics_file_that_cannot_be_read_is_said_and_bytes_not_utf8_on_the_base_are_no_traceback(tmp_path):
    """dvc shows an unreadable metrics file as if its metrics were gone: its warning is kept in the report. A base
    whose predictions hold a byte that is not UTF-8 is compared with it replaced, not stopped with exit 1."""
    repo = make_repo(tmp_path)
    (repo / "plots/evaluate/predictions.csv").write_bytes(predictions_csv(BASE_WRONG).encode() + b"test/caf\xe9.jpeg,x\n")
    commit(repo, 0.003, 0.9972, b"picture", "base")
    run(["git", "checkout", "-qb", "broken"], repo)
    commit_decisions(repo, BASE_WRONG, "same decisions")
    (repo / "metrics/test.json").write_text('{"accuracy": 0.98, ')  # cut short
    result = run_report(repo, "--base", "main", "--check")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    said = "_dvc: DVC failed to load some metrics for following revisions: 'workspace'._"
    assert result.stdout.split("### Metrics")[1].count(said) == 1, result.stdout
