"""The pull-request report: what a change did to params, metrics and plots, against a base revision, as Markdown.

`make pr-report BASE=main` prints it locally; `.github/workflows/pr-report.yml` posts it on a pull
request. It reads what is committed (metrics and plots are small and in git), so it works without
the data; when CI could reproduce the pipeline first, the workspace's fresh figures are compared.

Usage: python -m casting_inspection.team.pr_report [--base main] [--plots-out dvc_plots]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

METRIC_FILES = (
    "metrics/test.json",
    "metrics/robustness.json",
    "metrics/train.json",
    "metrics/export.json",
    "metrics/data.json",
    "metrics/drift.json",
)


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True)


def _dvc_md(*args: str) -> str:
    result = _run("dvc", *args, "--md")
    if result.returncode != 0:
        return f"_`dvc {' '.join(args)}` failed: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'no output'}_\n"
    return result.stdout.strip() + "\n" if result.stdout.strip() else "_no change_\n"


def build_report(base: str, plots_out: str | None = None) -> str:
    lines = [f"## Pipeline report against `{base}`", ""]
    if _run("git", "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}").returncode != 0:
        lines += [
            f"Base revision `{base}` is not in this checkout (a shallow clone? fetch it, e.g. "
            "`actions/checkout` with `fetch-depth: 0`), so there is nothing to compare with. Current metrics:",
            "",
            _dvc_md("metrics", "show"),
        ]
        return "\n".join(lines)
    missing = [f for f in METRIC_FILES if _run("git", "cat-file", "-e", f"{base}:{f}").returncode != 0]
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
    changed = _run("git", "diff", "--name-only", base, "--", "plots").stdout.split()
    changed += _run("git", "ls-files", "--others", "--exclude-standard", "--", "plots").stdout.split()
    lines += ["### Plots", ""]
    if changed:
        lines += [f"{len(changed)} plot files changed: " + ", ".join(f"`{p}`" for p in sorted(set(changed))[:30])]
        if plots_out:
            result = _run("dvc", "plots", "diff", base, "--out", plots_out)
            lines += [
                "",
                f"Side by side (old and new): `{plots_out}/index.html`"
                if result.returncode == 0
                else f"_`dvc plots diff` failed: {result.stderr.strip()[-300:]}_",
            ]
    else:
        lines += ["_no plot changed_"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="main", help="git revision to compare with (default: main)")
    parser.add_argument("--plots-out", help="also write `dvc plots diff` (old and new side by side) into this folder")
    args = parser.parse_args()
    sys.stdout.write(build_report(args.base, args.plots_out))


if __name__ == "__main__":
    main()
