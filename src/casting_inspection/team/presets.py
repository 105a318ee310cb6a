"""The published recipes on this data set as named DVC experiments on our pipeline (same data, split and evaluation).

A preset is a file in `presets/`: `set:` the params it changes (one experiment), or `sweep:` lists of
values (one queued experiment per combination, through DVC's own queue). This only builds the
`dvc exp run` command; DVC runs, queues and records everything. A preset with a `search:` block is
an Optuna study instead (`team.search`, `make search`).

Usage: python -m casting_inspection.team.presets NAME [--queue] [-S KEY=VALUE ...] [--dry-run]    (or: make preset NAME=...)
       python -m casting_inspection.team.presets --list
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from casting_inspection.core.errors import InspectionError

PRESETS_DIR = Path("presets")


def _value(value) -> str:
    """A param value as `dvc exp run -S` (YAML) reads it back."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value).replace(" ", "")
    return str(value)


def read_preset(path: Path) -> dict:
    """A preset file as a mapping; one that is not readable YAML, or not a mapping, is one line naming it."""
    try:
        preset = YAML(typ="safe").load(path.read_text())
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise InspectionError(f"{path}: not readable YAML{where}; fix the file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InspectionError(f"{path}: cannot read ({exc}); fix the file") from None
    if not isinstance(preset, dict):
        raise InspectionError(f"{path}: a preset is a mapping (set:, sweep: or search:, and a description:)")
    return preset


def load(name: str, folder: Path = PRESETS_DIR) -> dict:
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml"))) or "none"
        raise InspectionError(f"{path}: no such preset; known presets: {known}")
    preset = read_preset(path)
    if not ({"set", "sweep", "search"} & set(preset)):
        raise InspectionError(f"{path}: a preset needs a 'set:' or a 'sweep:' mapping of params, or a 'search:' block")
    for key in ("set", "sweep"):
        if not isinstance(preset.get(key) or {}, dict):
            raise InspectionError(f"{path}: '{key}:' must be a mapping of params to values")
    for key, values in (preset.get("sweep") or {}).items():
        if not isinstance(values, list) or not values:
            raise InspectionError(f"{path}: sweep.{key} must be a non-empty list of values")
    return preset


def command(name: str, preset: dict, queue: bool, extra: list[str] = ()) -> list[str]:
    if "search" in preset:
        raise InspectionError(f"{name} is a search (an Optuna study of experiments): run it with `make search PRESET={name}`")
    sweep = preset.get("sweep") or {}
    swept = [override for override in extra if override.split("=", 1)[0] in sweep]
    if swept:  # DVC would take the sweep's values and drop the override without a word
        raise InspectionError(f"-S {swept[0]}: {name} sweeps that param; leave it out, or sweep other values in the preset")
    cmd = ["dvc", "exp", "run"]
    for key, value in (preset.get("set") or {}).items():
        cmd += ["-S", f"{key}={_value(value)}"]
    for override in extra:  # after the preset's own, so they win: e.g. fewer epochs on a slow machine
        cmd += ["-S", override]
    for key, values in sweep.items():  # Hydra's choice sweep: one experiment per combination
        cmd += ["-S", f"{key}=" + ",".join(_value(v) for v in values)]
    if sweep or queue:
        cmd.append("--queue")
    if not sweep:
        cmd += ["-n", name]
    return cmd


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", help="preset name (a file presets/NAME.yaml)")
    parser.add_argument("--queue", action="store_true", help="queue the experiment instead of running it (`dvc queue start`)")
    parser.add_argument(
        "--set",
        "-S",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one more param override, applied after the preset's (repeatable)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the dvc command only")
    parser.add_argument("--list", action="store_true", help="list the presets")
    args = parser.parse_args(argv)
    try:
        if args.list or not args.name:
            for path in sorted(PRESETS_DIR.glob("*.yaml")):
                print(f"{path.stem:<12} {read_preset(path).get('description', '')}")
            return
        cmd = command(args.name, load(args.name), args.queue, args.set)
    except InspectionError as exc:
        sys.exit(f"presets: error: {exc}")
    print(" ".join(f"'{part}'" if any(c in part for c in '[],{}"') else part for part in cmd), flush=True)
    if not args.dry_run:
        sys.exit(subprocess.run(cmd).returncode)


if __name__ == "__main__":
    main()
