"""dvc.yaml lists, for each stage, exactly the code that stage runs, and only its own params section."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from conftest import PROJECT

PIPELINE = YAML(typ="safe").load((PROJECT / "dvc.yaml").read_text())["stages"]


def local_imports(path: Path, seen: set[Path]) -> set[Path]:
    """The project's own modules that `path` imports, followed transitively."""
    package = PROJECT / "src/casting_inspection"
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y, or from . import y
                names = [node.module] if node.module else [a.name for a in node.names]
            elif node.module and node.module.startswith("casting_inspection"):
                rest = node.module.removeprefix("casting_inspection").lstrip(".")
                names = [rest] if rest else [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.removeprefix("casting_inspection.") for a in node.names if a.name.startswith("casting_inspection.")]
        for name in names:
            module = package / f"{name.replace('.', '/')}.py"
            if module.exists() and module not in seen:
                seen.add(module)
                local_imports(module, seen)
    if path.parent == package or any(p.parent == package for p in seen):
        seen.add(package / "__init__.py")
    return seen


@pytest.mark.parametrize("stage", list(PIPELINE))
def test_code_deps_are_exactly_what_the_stage_imports(stage):
    script = PROJECT / "stages" / f"{stage}.py"
    expected = {script} | local_imports(script, set())
    declared = {PROJECT / d for d in PIPELINE[stage]["deps"] if d.endswith(".py")}
    assert declared == expected, f"missing: {sorted(map(str, expected - declared))}, extra: {sorted(map(str, declared - expected))}"


@pytest.mark.parametrize("stage", list(PIPELINE))
def test_each_stage_reads_its_own_params_section(stage):
    """The report only reads what the other stages wrote, so it has no section of its own."""
    assert PIPELINE[stage].get("params") == (None if stage == "report" else [stage])
