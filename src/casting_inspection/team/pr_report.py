"""The pull-request report: what a change did to params, metrics and plots, against a base revision, as Markdown.

`make pr-report BASE=main` prints it locally; `.github/workflows/pr-report.yml` posts it on a pull
request. It reads what is committed (metrics and plots are small and in git), so it works without
the data; when CI could reproduce the pipeline first, the workspace's fresh figures are compared.

A metric that moves from 714/715 to 713/715 may be noise, so the report also pairs the base's and the
workspace's decisions on the same test photos (`plots/evaluate/predictions.csv`): McNemar's exact test
on the photos that changed, and paired-bootstrap intervals for the change in each headline rate.
`--check` (`make pr-report CHECK=1`) then exits 1 on a real regression, one that is significant and
larger than `pr-tolerances.yaml` accepts, and 0 on noise.

Usage: python -m casting_inspection.team.pr_report [--base main] [--plots-out dvc_plots]
                                                   [--check] [--tolerances pr-tolerances.yaml]
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from scipy.stats import binomtest

from casting_inspection import CLASS_NAMES

DVC_FILE = "dvc.yaml"

PREDICTIONS = "plots/evaluate/predictions.csv"  # written by the evaluate stage, committed to git
TOLERANCES_FILE = "pr-tolerances.yaml"
# The same values as the shipped pr-tolerances.yaml (a test keeps them equal), for a checkout without it.
DEFAULT_TOLERANCES = {
    "alpha": 0.05,
    "max_accuracy_drop": 0.0,
    "max_escape_rate_increase": 0.0,
    "max_false_reject_rate_increase": 0.01,
}
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 715  # fixed: the same predictions give the same report, run after run
DEFECTIVE = CLASS_NAMES[1]


class ToleranceError(ValueError):
    """A tolerances file that cannot be used; the message is one line naming the file and the key."""


@dataclass(frozen=True)
class Rate:
    """A headline rate: over which photos, which way is better, and its tolerance key."""

    title: str
    over: str  # "all", "defective" or "good"
    higher_is_better: bool
    tolerance: str


RATES = (
    Rate("accuracy", "all", True, "max_accuracy_drop"),
    Rate("missed defects", "defective", False, "max_escape_rate_increase"),
    Rate("false rejects", "good", False, "max_false_reject_rate_increase"),
)


@dataclass
class Paired:
    """The same photos in one order: the truth and whether each side decided right."""

    defective: np.ndarray
    base_right: np.ndarray
    head_right: np.ndarray


@dataclass
class RateChange:
    """One rate on both sides, the change (head - base), its interval, and how it reads."""

    rate: Rate
    n: int
    base_count: int
    head_count: int
    low: float
    high: float
    p_value: float  # exact McNemar on this rate's photos
    status: str = "noise"  # noise, better, worse (within tolerance) or regression

    @property
    def change(self) -> float:
        """Head minus base, as a share (0.01 = 1 point)."""
        return (self.head_count - self.base_count) / self.n

    @property
    def worsening(self) -> float:
        """The change turned so that > 0 is always worse, to compare with a tolerance."""
        return -self.change if self.rate.higher_is_better else self.change


@dataclass
class Comparison:
    """The paired comparison's result: what `--check` decides on."""

    better: int  # c: wrong on base, right on head
    worse: int  # b: right on base, wrong on head
    p_value: float
    rates: list[RateChange]
    verdict: str
    regression: bool


def load_tolerances(path: str | None) -> tuple[dict[str, float], str]:
    """The accepted worsening per rate, and alpha, from YAML, so a change to them is reviewed in a pull request.

    Without an explicit path a missing default file means the built-in defaults; returns them and where from.
    """
    file = Path(path or TOLERANCES_FILE)
    if not file.exists():
        if path:
            raise ToleranceError(f"{file}: no such tolerances file")
        return dict(DEFAULT_TOLERANCES), f"built-in defaults (no `{TOLERANCES_FILE}`)"
    try:
        data = YAML(typ="safe").load(file.read_text())
    except (OSError, YAMLError) as error:
        mark = getattr(error, "problem_mark", None)
        raise ToleranceError(f"{file}: not readable YAML" + (f" (line {mark.line + 1})" if mark else "")) from None
    if not isinstance(data, dict | None):
        raise ToleranceError(f"{file}: expected `key: number` lines, got a {type(data).__name__}")
    tolerances = dict(DEFAULT_TOLERANCES)
    for key, value in (data or {}).items():
        if key not in DEFAULT_TOLERANCES:
            raise ToleranceError(f"{file}: unknown key `{key}` (known: {', '.join(DEFAULT_TOLERANCES)})")
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if key == "alpha" and not (number and 0 < value < 1):
            raise ToleranceError(f"{file}: `alpha` must be a number between 0 and 1 (exclusive), got {value!r}")
        if not (number and 0 <= value <= 1):
            raise ToleranceError(f"{file}: `{key}` must be a number from 0 to 1 (a share, 0.01 = 1 point), got {value!r}")
        tolerances[key] = float(value)
    return tolerances, f"`{file}`"


def _read_predictions(text: str, where: str) -> dict[str, tuple[str, str]]:
    """path -> (label, predicted); a file without those columns is said, not guessed at."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ("path", "label", "predicted") if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{where} has no column {', '.join(f'`{c}`' for c in missing)}")
    return {row["path"]: (row["label"], row["predicted"]) for row in reader}


def _pair(base: str) -> tuple[Paired | None, list[str]]:
    """Both sides' decisions on the photos they share, and plain notes on what could not be paired."""
    shown = _run("git", "show", f"{base}:{PREDICTIONS}")
    if shown.returncode != 0:
        return None, [f"No `{PREDICTIONS}` on `{base}`: no earlier decisions to compare with."]
    head_file = Path(PREDICTIONS)
    if not head_file.exists():
        return None, [f"No `{PREDICTIONS}` in this workspace: no decisions to compare (was evaluate run?)."]
    try:
        old = _read_predictions(shown.stdout, f"`{base}:{PREDICTIONS}`")
        new = _read_predictions(head_file.read_text(), f"`{PREDICTIONS}`")
    except ValueError as error:
        return None, [f"{error}: no comparison."]
    paths = sorted(old.keys() & new.keys())
    only_old, only_new = len(old.keys() - new.keys()), len(new.keys() - old.keys())
    if only_old or only_new:
        notes = [
            f"The photo sets differ: {len(paths)} photos paired by `path`; {only_old} only on `{base}`, "
            f"{only_new} only in this change (left out)."
        ]
    else:
        notes = [f"{len(paths)} photos, paired by `path`."]
    if not paths:
        return None, notes + ["No photo in common: nothing to compare."]
    relabelled = sum(old[p][0] != new[p][0] for p in paths)
    if relabelled:
        notes.append(f"{relabelled} photos changed label; both sides are judged against this change's labels.")
    labels = np.array([new[p][0] for p in paths])
    paired = Paired(
        defective=labels == DEFECTIVE,
        base_right=np.array([old[p][1] for p in paths]) == labels,
        head_right=np.array([new[p][1] for p in paths]) == labels,
    )
    return paired, notes


def mcnemar_exact(worse: int, better: int) -> float:
    """Two-sided exact McNemar: only photos whose decision changed carry information about the change."""
    if worse + better == 0:
        return 1.0
    return float(binomtest(min(worse, better), worse + better, 0.5).pvalue)


def _bootstrap_changes(paired: Paired, alpha: float) -> dict[str, tuple[float, float]]:
    """(1 - alpha) percentile intervals of each rate's change, resampling photos (both sides together).

    Resampled within each class, as the test set's mix of defective and good photos is fixed by design
    (and a rate over defective photos then never divides by zero).
    """
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    gained = paired.head_right.astype(int) - paired.base_right.astype(int)  # +1 fixed, -1 broken, per photo
    sums, sizes = {}, {}
    for over, mask in (("defective", paired.defective), ("good", ~paired.defective)):
        sizes[over] = int(mask.sum())
        draws = rng.integers(0, max(sizes[over], 1), (BOOTSTRAP_RESAMPLES, sizes[over]))  # no photos: sums of 0
        sums[over] = gained[mask][draws].sum(axis=1)
    changes = {
        "all": (sums["defective"] + sums["good"]) / len(gained),
        # a rate of errors moves against the number right
        "defective": -sums["defective"] / max(sizes["defective"], 1),
        "good": -sums["good"] / max(sizes["good"], 1),
    }
    quantiles = (alpha / 2, 1 - alpha / 2)
    return {over: tuple(float(q) for q in np.quantile(values, quantiles)) for over, values in changes.items()}


def _rate_changes(paired: Paired, tolerances: dict[str, float]) -> list[RateChange]:
    """Each headline rate on both sides; significant and worse by more than its tolerance reads as a regression.

    Accuracy is significant by McNemar's exact test. A rate is when its bootstrap interval lies wholly on one
    side of 0 and McNemar on its own photos agrees: with few changed photos (4 more misses, none fewer) the
    percentile interval already excludes 0 while the exact p is 0.125, and the check must not fail on that.
    """
    intervals = _bootstrap_changes(paired, tolerances["alpha"])
    masks = {"all": np.ones_like(paired.defective), "defective": paired.defective, "good": ~paired.defective}
    changes = []
    for rate in RATES:
        mask = masks[rate.over]
        if not mask.any():
            continue
        # accuracy counts the photos decided right; an error rate, those decided wrong
        base_count, head_count = (
            int((right == rate.higher_is_better)[mask].sum()) for right in (paired.base_right, paired.head_right)
        )
        worse = int((paired.base_right & ~paired.head_right)[mask].sum())
        p_value = mcnemar_exact(worse, int((~paired.base_right & paired.head_right)[mask].sum()))
        row = RateChange(rate, int(mask.sum()), base_count, head_count, *intervals[rate.over], p_value)
        worse_low, worse_high = (-row.high, -row.low) if rate.higher_is_better else (row.low, row.high)
        one_sided = worse_low > 0 or worse_high < 0
        significant = p_value < tolerances["alpha"] and (rate.over == "all" or one_sided)
        if significant and row.worsening > tolerances[rate.tolerance] + 1e-12:
            row.status = "regression"
        elif significant and row.worsening > 0:
            row.status = "worse, within tolerance"
        elif significant and row.worsening < 0:
            row.status = "better"
        changes.append(row)
    return changes


def _points(share: float, sign: bool = True) -> str:
    """Percentage points: a change of 1 photo in 715 reads 0.14 pts, not 0.0013986."""
    points = 100 * share + 0.0  # + 0.0: -0.0 reads "+0.00"
    return f"{points:+.2f} pts" if sign else f"{points:.2f} pts"


def _p(p_value: float) -> str:
    """Two decimals for large p, two significant digits for small ones (0.049 must not read 0.05)."""
    return f"{p_value:.2f}" if p_value >= 0.1 else f"{p_value:.2g}"


def compare(paired: Paired, tolerances: dict[str, float]) -> Comparison:
    """McNemar on the photos that changed, the rates' intervals, and a one-line verdict that says which."""
    worse = int((paired.base_right & ~paired.head_right).sum())
    better = int((~paired.base_right & paired.head_right).sum())
    p_value = mcnemar_exact(worse, better)
    rates = _rate_changes(paired, tolerances)
    counts = f"{better} photo{'' if better == 1 else 's'} better, {worse} worse, McNemar exact p = {_p(p_value)}"
    by_status = {s: [r for r in rates if r.status == s] for s in ("regression", "worse, within tolerance", "better")}
    listed = lambda rows: ", ".join(f"{r.rate.title} ({_points(r.change)})" for r in rows)
    if by_status["regression"]:
        verdict = f"significant regression in {listed(by_status['regression'])}: {counts}"
    elif by_status["worse, within tolerance"]:
        verdict = f"significant but tolerated worsening in {listed(by_status['worse, within tolerance'])}: {counts}"
    elif by_status["better"]:
        verdict = f"significant improvement in {listed(by_status['better'])}: {counts}"
    else:
        verdict = f"no significant change: {counts}"
    return Comparison(better, worse, p_value, rates, verdict, bool(by_status["regression"]))


def _rate_table(comparison: Comparison, tolerances: dict[str, float]) -> list[str]:
    """The Markdown table: each rate on both sides, the change, its interval and how it reads."""
    level = f"{100 * (1 - tolerances['alpha']):g} %"
    lines = [
        f"| rate | base | head | change | {level} interval of the change | McNemar p | accepted worsening | reads as |",
        "|---|---|---|---|---|---|---|---|",
    ]
    over = {"all": "photos", "defective": "defective photos", "good": "good photos"}
    for row in comparison.rates:
        lines.append(
            f"| {row.rate.title} (of {row.n} {over[row.rate.over]}) "
            f"| {100 * row.base_count / row.n:.2f} % ({row.base_count}) | {100 * row.head_count / row.n:.2f} % ({row.head_count}) "
            f"| {_points(row.change)} | {_points(row.low)} to {_points(row.high)} | {_p(row.p_value)} "
            f"| {_points(tolerances[row.rate.tolerance], sign=False)} | {row.status} |"
        )
    return lines


def decisions_section(base: str, tolerances: dict[str, float], source: str) -> tuple[list[str], Comparison | None]:
    """The report's section on decisions on the same test photos, and the comparison behind it (None: none made)."""
    lines = ["### Decisions on the same test photos", ""]
    paired, notes = _pair(base)
    lines += [" ".join(notes), ""]
    if paired is None:
        return lines, None
    comparison = compare(paired, tolerances)
    lines += [f"**Verdict: {comparison.verdict}**", ""]
    lines += _rate_table(comparison, tolerances)
    lines += [
        "",
        f"Decisions are the `predicted` column, as in `metrics/test.json`. McNemar p: exact, on the photos whose "
        f"decision changed (a rate: among its own photos). Accuracy counts as significant when p < "
        f"{tolerances['alpha']:g}; a rate, when its p is too and its interval (paired bootstrap over photos, "
        f"{BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}) lies wholly on one side of 0. A regression is "
        f"significant and worse by more than the accepted worsening ({source}).",
        "",
    ]
    return lines, comparison


def _run(*cmd: str) -> subprocess.CompletedProcess:
    """A git or dvc command whose failure the report says rather than raises (bytes that are not UTF-8, in a file
    a revision holds, are shown replaced, never a traceback)."""
    return subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace")


def _dvc_md(*args: str) -> str:
    """A dvc diff as Markdown, or one line saying why there is none; dvc's warnings (a metrics file it could not
    read, shown as if the metric were gone) are kept under it."""
    result = _run("dvc", *args, "--md")
    if result.returncode != 0:
        return f"_`dvc {' '.join(args)}` failed: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'no output'}_\n"
    text = result.stdout.strip() + "\n" if result.stdout.strip() else "_no change_\n"
    said = re.findall(r"(?:WARNING|ERROR)[^\n]*|DVC failed to load [^:\n]*: '[^'\n]*'(?:, '[^'\n]*')*\.?", result.stderr)
    return text + "".join(f"\n_dvc: {line.strip()}_\n" for line in dict.fromkeys(said))


def declared_metrics() -> list[str]:
    """The metrics files this checkout's dvc.yaml declares (the head's), in its order."""
    try:
        stages = (YAML(typ="safe").load(Path(DVC_FILE).read_text()) or {}).get("stages") or {}
    except (OSError, YAMLError):
        return []
    files = []
    for stage in stages.values():
        for entry in (stage or {}).get("metrics") or []:
            files += [entry] if isinstance(entry, str) else list(entry) if isinstance(entry, dict) else []
    return list(dict.fromkeys(files))


def build_report(
    base: str,
    plots_out: str | None = None,
    tolerances: dict[str, float] | None = None,
    source: str = f"`{TOLERANCES_FILE}`",
) -> tuple[str, Comparison | None, bool]:
    """The report's Markdown, the paired comparison (None when none could be made), and whether `base` exists."""
    tolerances = tolerances or dict(DEFAULT_TOLERANCES)
    lines = [f"## Pipeline report against `{base}`", ""]
    if _run("git", "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}").returncode != 0:
        lines += [
            f"Base revision `{base}` is not in this checkout (a shallow clone? fetch it, e.g. "
            "`actions/checkout` with `fetch-depth: 0`), so there is nothing to compare with. Current metrics:",
            "",
            _dvc_md("metrics", "show"),
        ]
        return "\n".join(lines), None, False
    missing = [f for f in declared_metrics() if _run("git", "cat-file", "-e", f"{base}:{f}").returncode != 0]
    if missing:
        lines += [f"Not on `{base}` (new metrics, shown without an old value): " + ", ".join(f"`{f}`" for f in missing), ""]
    lines += [
        "### Params",
        "",
        _dvc_md("params", "diff", base),
        "### Metrics",
        "",
        _dvc_md("metrics", "diff", base, "--precision", "4"),
    ]
    decisions, comparison = decisions_section(base, tolerances, source)
    lines += decisions
    lines += ["### Plots", "", *_plots_lines(base, plots_out)]
    return "\n".join(lines) + "\n", comparison, True


def _plots_lines(base: str, plots_out: str | None) -> list[str]:
    """Which plot files changed, and `dvc plots diff` side by side when asked for."""
    changed = _run("git", "diff", "--name-only", base, "--", "plots").stdout.split()
    changed += _run("git", "ls-files", "--others", "--exclude-standard", "--", "plots").stdout.split()
    if not changed:
        return ["_no plot changed_"]
    lines = [f"{len(changed)} plot files changed: " + ", ".join(f"`{p}`" for p in sorted(set(changed))[:30])]
    if plots_out:
        result = _run("dvc", "plots", "diff", base, "--out", plots_out)
        lines += [
            "",
            f"Side by side (old and new): `{plots_out}/index.html`"
            if result.returncode == 0
            else f"_`dvc plots diff` failed: {result.stderr.strip()[-300:]}_",
        ]
    return lines


def main() -> None:
    """Print the report; with --check, exit 1 with a one-line reason on a real regression (2 on unusable input)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="main", help="git revision to compare with (default: main)")
    parser.add_argument("--plots-out", help="also write `dvc plots diff` (old and new side by side) into this folder")
    parser.add_argument("--check", action="store_true", help="exit 1 when the decisions show a real regression")
    parser.add_argument("--tolerances", help=f"alpha and the accepted worsening per rate (default: {TOLERANCES_FILE})")
    args = parser.parse_args()
    try:
        tolerances, source = load_tolerances(args.tolerances)
    except ToleranceError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    text, comparison, base_found = build_report(args.base, args.plots_out, tolerances, source)
    sys.stdout.write(text)
    sys.stdout.flush()
    if not args.check:
        return
    if not base_found:
        print(f"error: base revision `{args.base}` is not in this checkout: nothing to check against", file=sys.stderr)
        sys.exit(2)
    if comparison is None:
        print("pr-report check passed: no paired decisions to compare (see the report)", file=sys.stderr)
    elif comparison.regression:
        print(f"pr-report check failed: {comparison.verdict}", file=sys.stderr)
        sys.exit(1)
    else:
        print(f"pr-report check passed: {comparison.verdict}", file=sys.stderr)


if __name__ == "__main__":
    main()
