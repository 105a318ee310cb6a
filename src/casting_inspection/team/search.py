"""A hyperparameter search in which every trial is a DVC experiment: Optuna chooses, DVC runs and records.

The search space is a preset with a `search:` block (presets/cnn-search.yaml). Each trial is one
`dvc exp run -n STUDY-N -S key=value ...` in this clone's workspace, so `dvc exp show` lists it with
its params and metrics and `dvc exp apply` brings it back. Optuna's TPE sampler proposes the values;
the objective is a validation figure the train stage writes (the test split chooses nothing), and a
trial whose per-epoch validation curve is hopeless is stopped early (median pruning).

The study lives in a storage that several workers share: a journal file by default (workers on one
machine, or a shared disk), a database URL (PostgreSQL) for workers on several machines, each in its
own clone; `--push REMOTE` shares each finished experiment through git and the DVC remote.

Usage: python -m casting_inspection.team.search [PRESET] [--trials N] [--storage PATH|URL] [--study NAME]
       [--push GIT_REMOTE] [--apply] [--seed N]        (or: make search)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState
from ruamel.yaml import YAML
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from casting_inspection.core.errors import InspectionError
from casting_inspection.core.processes import pid_alive
from casting_inspection.team.presets import PRESETS_DIR, _value, read_preset

SEARCH_DIR = Path("search")  # default storage and the trials' logs (git-ignored)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One param and where Optuna may take it: a float or int range (log-scaled or not), or a list of choices."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple | None = None

    def suggest(self, trial: optuna.Trial):
        if self.choices is not None:  # Optuna stores a choice as a JSON string when it is a list (widths)
            picked = trial.suggest_categorical(self.key, [json.dumps(c) for c in self.choices])
            return json.loads(picked)
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    def distribution(self) -> optuna.distributions.BaseDistribution:
        """What `suggest` asks Optuna for: a study must keep it for each param (Optuna refuses another)."""
        if self.choices is not None:
            return optuna.distributions.CategoricalDistribution([json.dumps(c) for c in self.choices])
        if self.integer:
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)


@dataclasses.dataclass(frozen=True)
class SearchSpec:
    """A preset's `search:` block: what is minimised, where its per-epoch curve is, the space, the pruning."""

    objective: str  # metrics file and key, "metrics/train.json:val_loss"
    curve: str  # the per-epoch values of the same figure (dvclive's TSV), read while a trial runs
    stage: str  # what each trial runs up to: report (the whole pipeline) or train (the objective only)
    space: tuple[Dimension, ...]
    trials: int
    startup_trials: int  # trials that run to the end before any is pruned
    warmup_epochs: int  # epochs of each trial that are never pruned

    @property
    def metrics_file(self) -> Path:
        return Path(self.objective.split(":")[0])

    @property
    def metric(self) -> str:
        return self.objective.split(":")[1]


def _dimension(key: str, spec) -> Dimension:
    if not isinstance(spec, dict):
        raise InspectionError(f"search.space.{key}: give low/high (optional log, int) or choices")
    if "choices" in spec:
        if not isinstance(spec["choices"], list) or not spec["choices"]:
            raise InspectionError(f"search.space.{key}.choices: a non-empty list")
        return Dimension(key, choices=tuple(spec["choices"]))
    low, high = spec.get("low"), spec.get("high")
    if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or not low < high:
        raise InspectionError(f"search.space.{key}: low and high must be numbers with low < high (got {low}, {high})")
    if spec.get("log") and low <= 0:
        raise InspectionError(f"search.space.{key}: a log range must start above 0 (low is {low})")
    return Dimension(key, float(low), float(high), bool(spec.get("log")), bool(spec.get("int")))


def search_spec(preset: dict, where: str) -> SearchSpec:
    block = preset.get("search")
    if not isinstance(block, dict) or not isinstance(block.get("space"), dict) or not block["space"]:
        raise InspectionError(f"{where}: a search preset needs `search:` with a non-empty `space:` mapping")
    objective = str(block.get("objective", ""))
    for key in ("curve", "stage"):
        if not isinstance(block.get(key), str) or not block[key]:
            raise InspectionError(f"{where}: search.{key} is missing")
    if objective.count(":") != 1:
        raise InspectionError(f"{where}: search.objective must be FILE:KEY, e.g. metrics/train.json:val_loss")
    pruning = block.get("pruning") or {}
    if not isinstance(pruning, dict):
        raise InspectionError(f"{where}: search.pruning must be a mapping (startup_trials:, warmup_epochs:)")
    return SearchSpec(
        objective,
        str(block.get("curve", "")),
        str(block.get("stage", "")),
        tuple(_dimension(key, spec) for key, spec in block["space"].items()),
        _count(block, "trials", 20, where),
        _count(pruning, "startup_trials", 5, where),
        _count(pruning, "warmup_epochs", 3, where),
    )


def _count(block: dict, key: str, default: int, where: str) -> int:
    value = block.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InspectionError(f"{where}: search's {key} must be a whole number >= 0 (got {value!r})")
    return value


def load_search(name: str, folder: Path = PRESETS_DIR) -> SearchSpec:
    path = folder / f"{name}.yaml"
    if not path.is_file():
        raise InspectionError(f"{path}: no such preset")
    return search_spec(read_preset(path), str(path))


def open_storage(where: str):
    """A database URL as Optuna's RDB storage (PostgreSQL, SQLite); anything else is a journal file's path."""
    if "://" not in where:
        path = Path(where)
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    for attempt in range(5):  # workers started together race to create the schema in an empty database: retry
        try:
            with warnings.catch_warnings():  # the heartbeat is "experimental": it fails trials of a worker that died
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(where, heartbeat_interval=60, grace_period=180)
        except Exception as exc:  # SQLAlchemy's connection and integrity errors come in many classes
            error = exc
            time.sleep(1 + attempt)
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise InspectionError(f"--storage {shown_url(where)}: cannot open the study's database ({hidden(first, where)})") from error


def shown_url(where: str) -> str:
    """A database URL as it may be printed (in a CI log): its password starred."""
    try:
        return make_url(where).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: nothing in it is known to be a password
        return where


def hidden(text: str, where: str) -> str:
    """`text` without the URL's password, wherever a driver's message repeats it."""
    try:
        password = make_url(where).password
    except Exception:
        return text
    return text.replace(str(password), "***") if password else text


def read_curve(path: Path) -> list[float]:
    """The per-epoch values in a dvclive metrics TSV (step, value); a line not yet ended by its newline is
    still being written and is left for the next read."""
    try:
        text = path.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return []
    values = []
    for line in text.split("\n")[1:-1]:  # the header, and what follows the last newline
        try:
            values.append(float(line.split("\t")[-1]))
        except ValueError:
            break
    return values


class TrialFailed(Exception):
    """A trial's `dvc exp run` failed; the study goes on without it."""


MAX_FAILURES_IN_A_ROW = 3  # then the worker stops: a broken clone must not spend the study's shared budget


@dataclasses.dataclass
class Worker:
    """One worker: runs trials in this clone's workspace, one at a time."""

    spec: SearchSpec
    study_name: str
    push: str | None
    logs: Path
    failures: int = 0  # in a row

    def objective(self, trial: optuna.Trial) -> float:
        values = {d.key: d.suggest(trial) for d in self.spec.space}
        name = f"{self.study_name}-{trial.number}"
        for key, value in (("experiment", name), ("host", socket.gethostname()), ("pid", os.getpid())):
            trial.set_user_attr(key, value)
        started = time.monotonic()
        ran = False
        try:
            self._run(trial, name, values)
            ran = True
            value = self._objective_value(trial)
        except TrialFailed as exc:
            if ran:  # an experiment with full metrics must not pass for a finished trial
                subprocess.run(["dvc", "exp", "remove", name], capture_output=True, text=True)
            trial.set_user_attr("error", str(exc))
            self.failures += 1
            raise
        self.failures = 0
        trial.set_user_attr("seconds", round(time.monotonic() - started, 1))
        if self.push:
            pushed = subprocess.run(["dvc", "exp", "push", self.push, name], capture_output=True, text=True)
            if pushed.returncode != 0:  # the trial stands; its experiment stays in this clone
                print(f"search: warning: dvc exp push {self.push} {name} failed: {_last_line(pushed)}", flush=True)
        return value

    def _objective_value(self, trial: optuna.Trial) -> float:
        try:
            figures = json.loads(self.spec.metrics_file.read_text())
            value = float(figures[self.spec.metric])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TrialFailed(f"{self.spec.objective}: not written by the trial ({type(exc).__name__}: {exc})") from exc
        for key, figure in figures.items():
            if isinstance(figure, (int, float)):
                trial.set_user_attr(key, figure)
        return value

    def _run(self, trial: optuna.Trial, name: str, values: dict) -> None:
        cmd = ["dvc", "exp", "run", "-n", name, self.spec.stage]
        for key, value in values.items():
            cmd += ["-S", f"{key}={_value(value)}"]
        curve = Path(self.spec.curve)
        for stale in (curve, self.spec.metrics_file):  # this trial's figures only, never the last trial's
            stale.unlink(missing_ok=True)
        log = self.logs / f"{name}.log"
        with open(log, "w") as out:
            process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                reported = self._watch(trial, process, curve)
            except BaseException:  # Ctrl-C, SIGTERM, a storage error: never leave the trial running alone
                _stop(process)
                raise
        if process.returncode == 0 and not reported:
            raise InspectionError(f"search.curve {curve} was not written by the trial: fix the preset (pruning needs it)")
        if process.returncode != 0:
            lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
            raise TrialFailed(
                f"dvc exp run exited {process.returncode}: {lines[-1].strip() if lines else 'no output'} (log: {log})"
            )

    def _watch(self, trial: optuna.Trial, process: subprocess.Popen, curve: Path) -> int:
        """Report each new epoch while the trial runs; stop it when the pruner says so. Returns the epochs seen."""
        reported = 0
        while process.poll() is None:
            time.sleep(0.2)
            seen = self._report(trial, curve, reported)
            if seen > reported and trial.should_prune():
                _stop(process)
                if process.returncode != 0:  # it had finished on its own: the trial is complete after all
                    raise optuna.TrialPruned(f"epoch {seen}: behind the median of the trials before it")
            reported = seen
        return self._report(trial, curve, reported)  # the epochs written between the last look and the end

    @staticmethod
    def _report(trial: optuna.Trial, curve: Path, reported: int) -> int:
        """Tell Optuna the epochs written since the last look; returns how many it has now."""
        for epoch, value in enumerate(read_curve(curve)[reported:], start=reported + 1):
            trial.report(value, epoch)
            reported = epoch
        return reported


def _last_line(result: subprocess.CompletedProcess) -> str:
    lines = (result.stderr or result.stdout or "").strip().splitlines()
    return lines[-1] if lines else "no output"


def _stop(process: subprocess.Popen) -> None:
    """Interrupt a trial's `dvc exp run` as Ctrl-C would (DVC cleans up), then kill it if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def fail_dead_trials(study: optuna.Study) -> None:
    """Trials left RUNNING by a worker of this machine that is gone (killed, rebooted): failed, so they neither
    count toward the total nor show as running. A journal file has no heartbeat to do this."""
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = trial.user_attrs.get("pid")
        if trial.user_attrs.get("host") == host and pid and not pid_alive(pid):
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)


def free_dead_trials(study: optuna.Study) -> None:
    """Before the study is counted: trials of this machine's dead workers, and, in a database, of any worker whose
    heartbeat stopped (Optuna frees those only inside `optimize`, which a study that looks full never reaches)."""
    fail_dead_trials(study)
    with warnings.catch_warnings():  # "experimental", as the heartbeat in open_storage
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def finished(study: optuna.Study) -> int:
    """Trials that count toward the study's total: done, pruned, failed, or running in some worker. Two workers
    that look at once may both start the last one: a study can end up to (workers - 1) trials over."""
    return len(
        study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING))
    )


def run_study(spec: SearchSpec, storage, study_name: str, trials: int, seed: int | None, push: str | None) -> optuna.Study:
    """Run trials until the study (all workers together) holds `trials` of them."""
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        direction="minimize",
        # constant liar: a worker counts the others' running trials as bad, so workers do not propose the same point
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(1, trials // 2)), constant_liar=True),
        # steps are 1-based epochs, and the median pruner may stop a trial at step n_warmup_steps itself
        pruner=optuna.pruners.MedianPruner(n_startup_trials=spec.startup_trials, n_warmup_steps=spec.warmup_epochs + 1),
        load_if_exists=True,
    )
    free_dead_trials(study)
    _check_same_space(study, spec, study_name)
    _check_objective(spec)
    _check_names_are_free(study, study_name)
    logs = SEARCH_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    worker = Worker(spec, study_name, push, logs)
    while finished(study) < trials:
        study.optimize(worker.objective, n_trials=1, catch=(TrialFailed,), callbacks=[_say])
        if worker.failures >= MAX_FAILURES_IN_A_ROW:
            raise InspectionError(
                f"{worker.failures} trials in a row failed (the last: {study.trials[-1].user_attrs.get('error')})"
            )
    return study


def _check_same_space(study: optuna.Study, spec: SearchSpec, study_name: str) -> None:
    """A study resumed with a space Optuna cannot continue (another kind of param, log scale or choices) would fail
    each trial at its first suggestion: said at once. A narrower or wider range it takes, and so does this."""
    before = next((t.distributions for t in reversed(study.get_trials(deepcopy=False)) if t.distributions), None)
    if before is None:
        return
    for dimension in spec.space:
        now, then = dimension.distribution(), before.get(dimension.key)
        try:
            if then is not None:
                optuna.distributions.check_distribution_compatibility(then, now)
        except ValueError:
            raise InspectionError(
                f"study {study_name!r} was run with {dimension.key} over {then}, which {now} cannot continue: give "
                "this search space another --study name"
            ) from None


def _check_objective(spec: SearchSpec) -> None:
    """A misspelt objective would fail every trial after it has trained: checked against the metrics file the
    workspace holds, when there is one."""
    try:
        figures = json.loads(spec.metrics_file.read_text())
    except (OSError, ValueError):
        return  # not written yet (a fresh clone): the first trial tells
    if isinstance(figures, dict) and spec.metric not in figures:
        raise InspectionError(
            f"search.objective {spec.objective}: {spec.metrics_file} has no {spec.metric!r} "
            f"(it has {', '.join(sorted(map(str, figures))[:8])}); fix the preset"
        )


def _check_names_are_free(study: optuna.Study, study_name: str) -> None:
    """A new study whose experiment names (STUDY-0, ...) exist already would fail every trial: refuse it at once."""
    if study.trials:
        return
    listed = subprocess.run(["dvc", "exp", "list", "--all-commits", "--name-only"], capture_output=True, text=True)
    taken = [name for name in listed.stdout.split() if re.fullmatch(rf"{re.escape(study_name)}-\d+", name)]
    if taken:
        raise InspectionError(f"experiments {', '.join(taken[:3])} exist already: give this study another --study name")


def _say(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    values = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in trial.params.items())
    if trial.state == TrialState.COMPLETE:
        outcome = f"{trial.value:.6g}"
    elif trial.state == TrialState.PRUNED:
        outcome = f"pruned at epoch {trial.last_step}"
    else:
        outcome = f"{trial.state.name.lower()}: {trial.user_attrs.get('error', 'see search/logs')}"
    print(f"search: trial {trial.number} ({trial.user_attrs.get('experiment')}): {values} -> {outcome}", flush=True)


def table(study: optuna.Study, metric: str) -> str:
    """The study's trials as a Markdown table, best first (what the README and bench/RESULTS.md show)."""
    trials = study.get_trials(deepcopy=False)
    keys = sorted({k for t in trials for k in t.params})
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    rest = [t for t in trials if t.state != TrialState.COMPLETE]
    lines = [
        "| trial | experiment | " + " | ".join(k.removeprefix("train.") for k in keys) + f" | {metric} | val accuracy | state |",
        "|---" * (len(keys) + 5) + "|",
    ]
    for t in done + rest:
        value = f"{t.value:.4f}" if t.state == TrialState.COMPLETE else ""
        accuracy = t.user_attrs.get("val_accuracy")
        state = t.state.name.lower() + (f" at epoch {t.last_step}" if t.state == TrialState.PRUNED else "")
        cells = [_cell(t.params.get(k, "")) for k in keys]
        lines.append(
            f"| {t.number} | {t.user_attrs.get('experiment', '')} | "
            + " | ".join(cells)
            + f" | {value} | {'' if accuracy is None else f'{accuracy:.4f}'} | {state} |"
        )
    return "\n".join(lines)


def _cell(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def apply_best(study: optuna.Study, push: str | None) -> str:
    """`dvc exp apply` the best trial's experiment (pulled from the git remote first when another worker ran it)."""
    name = study.best_trial.user_attrs["experiment"]
    local = subprocess.run(["dvc", "exp", "list", "--all-commits", "--name-only"], capture_output=True, text=True).stdout.split()
    if name not in local:
        if not push:
            raise InspectionError(f"the best trial's experiment {name} ran in another clone; pass --push REMOTE to pull it")
        pulled = subprocess.run(["dvc", "exp", "pull", push, name], capture_output=True, text=True)
        if pulled.returncode != 0:
            host = study.best_trial.user_attrs.get("host", "another machine")
            raise InspectionError(
                f"dvc exp pull {push} {name} failed ({_last_line(pulled)}): it ran on {host}; run "
                f"`dvc exp push {push} {name}` in that clone, then apply again"
            )
    subprocess.run(["dvc", "exp", "apply", name], check=True)
    return name


def load_existing(storage, study_name: str) -> optuna.Study:
    """The study its workers ran, for --apply: a misspelt name must not start a new study."""
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise InspectionError(
            f"no study {study_name!r} in that storage: give the --study and --storage its workers used"
        ) from None


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def check_classifier(spec: SearchSpec, params_path: Path = Path("params.yaml")) -> None:
    """A search on the classifier's figures needs a classifier: with train.classifier false no trial writes them."""
    if not params_path.is_file():
        raise InspectionError(f"{params_path}: missing; run the search in the project's folder")
    train = (YAML(typ="safe").load(params_path.read_text()) or {}).get("train") or {}
    tuned = {dimension.key for dimension in spec.space}
    if (
        train.get("classifier", True) is False
        and spec.metrics_file == Path("metrics/train.json")
        and "train.classifier" not in tuned
    ):
        raise InspectionError(
            f"{params_path}: train.classifier is false, so no trial trains a classifier or writes {spec.objective}; "
            "turn it on to search, or choose the model of good parts with bench/choose_anomaly.py"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", nargs="?", default="cnn-search", help="a preset with a search: block (presets/NAME.yaml)")
    parser.add_argument("--trials", type=int, help="trials in the whole study, all workers together (default: the preset's)")
    parser.add_argument("--study", default=None, help="study name, shared by its workers (default: the preset's name)")
    parser.add_argument("--storage", default=None, help="journal file (default search/STUDY.journal) or database URL")
    parser.add_argument("--push", metavar="GIT_REMOTE", help="dvc exp push each finished trial to this git remote")
    parser.add_argument("--apply", action="store_true", help="run no trial: dvc exp apply the best trial of the study")
    parser.add_argument("--seed", type=int, default=None, help="the sampler's seed (give each worker its own)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # stopped by a scheduler or `kill`: as Ctrl-C, the trial stopped with it
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # started with nohup: it outlives the terminal
        signal.signal(signal.SIGHUP, _interrupt)  # its terminal or ssh session closed: stopped as by Ctrl-C
    # Ctrl-C even when started where SIGINT is ignored (a background job of a script), and the trials it starts with it:
    # an ignored SIGINT is inherited by `dvc exp run`, which would then train on past a stop
    signal.signal(signal.SIGINT, signal.default_int_handler)
    study_name = args.study or args.preset
    try:
        if not _NAME.fullmatch(study_name):
            raise InspectionError(f"--study {study_name!r}: letters, digits, - and _ only (it names git refs)")
        spec = load_search(args.preset)
        check_classifier(spec)
        trials = spec.trials if args.trials is None else args.trials
        if trials < 1:
            raise InspectionError(f"--trials {trials}: at least 1")
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial is one line of ours, not a traceback
        storage = open_storage(args.storage or str(SEARCH_DIR / f"{study_name}.journal"))
        if args.apply:
            study = load_existing(storage, study_name)
        else:
            study = run_study(spec, storage, study_name, trials, args.seed, args.push)
        print(table(study, spec.metric))
        if not any(t.state == TrialState.COMPLETE for t in study.trials):
            raise InspectionError("no trial finished; see the logs in search/logs")
        best = study.best_trial
        print(f"search: best trial {best.number} ({best.user_attrs['experiment']}): {spec.metric} {best.value:.6g}")
        if args.apply:
            print(f"search: applied {apply_best(study, args.push)}; compare it with `make pr-report` after committing")
    except InspectionError as exc:
        sys.exit(f"search: error: {exc}")
    except KeyboardInterrupt:
        sys.exit("search: interrupted; the trial that was running is stopped and recorded as failed")
    except (OSError, ValueError, subprocess.CalledProcessError) as exc:  # dvc missing
        sys.exit(f"search: error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    except (optuna.exceptions.OptunaError, SQLAlchemyError, UnboundLocalError) as exc:  # the storage lost mid-study
        cause = exc.__context__ if isinstance(exc, UnboundLocalError) else exc  # Optuna's own error, after the storage's
        if not isinstance(cause, (optuna.exceptions.OptunaError, SQLAlchemyError)):
            raise
        text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        sys.exit(
            f"search: error: the study's storage failed ({type(cause).__name__}: {hidden(text, args.storage or '')}); "
            "check it and run again"
        )


if __name__ == "__main__":
    main()
