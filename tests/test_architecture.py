"""dvc.yaml lists, for each stage, exactly the code that stage runs, and only its own params section; the rooms
of the package import one way, and no stage depends on a later stage's concern."""

from __future__ import annotations

import ast

import pytest
from ruamel.yaml import YAML

from casting_inspection.evaluation.retaken_set import CHANGES
from helpers import PACKAGE, PROJECT, local_imports, room, third_party

PIPELINE = YAML(typ="safe").load((PROJECT / "dvc.yaml").read_text())["stages"]
ROOMS = ["core", "data", "modeling", "evaluation", "export", "serving", "team"]  # each may import only rooms before it
STAGE_ROOM = {
    "download": "data",
    "prepare": "data",
    "train": "modeling",
    "paint": "evaluation",
    "anomaly": "evaluation",
    "departures": "evaluation",
    "evaluate": "evaluation",
    "retake": "evaluation",
    "retaken_departures": "evaluation",
    "robustness": "evaluation",
    "report": "evaluation",
    "export": "export",
}
SERVING = sorted(str(p.relative_to(PACKAGE)) for p in (PACKAGE / "serving").rglob("*.py"))


@pytest.mark.parametrize("stage", list(PIPELINE))
def test_code_deps_are_exactly_what_the_stage_imports(stage):
    script = PROJECT / "stages" / f"{stage}.py"
    expected = {script} | local_imports(script)
    declared = {PROJECT / d for d in PIPELINE[stage]["deps"] if d.endswith(".py")}
    assert declared == expected, (
        f"missing: {sorted(map(str, expected - declared))}, extra: {sorted(map(str, declared - expected))}"
    )


@pytest.mark.parametrize("stage", list(PIPELINE))
def test_no_stage_depends_on_a_later_stages_concern(stage):
    allowed = ROOMS[: ROOMS.index(STAGE_ROOM[stage]) + 1]
    rooms = {room(PROJECT / d) for d in PIPELINE[stage]["deps"] if d.startswith("src/")} - {None}
    assert rooms <= set(allowed), f"{stage} depends on {sorted(rooms - set(allowed))}"


def test_training_depends_on_nothing_of_evaluation_or_export():
    deps = " ".join(PIPELINE["train"]["deps"])
    for word in ("evaluation", "robustness", "perturbation", "explain", "export", "serving"):
        assert word not in deps


@pytest.mark.parametrize("module", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_one_way(module):
    here = room(module)
    if here is None:
        return
    later = set(ROOMS[ROOMS.index(here) + 1 :])
    imported = {room(f) for f in local_imports(module)} - {None}
    assert not imported & later, f"{module.name} in {here} imports {sorted(imported & later)}"


@pytest.mark.parametrize("module", SERVING)
def test_the_serving_path_needs_no_torch_and_no_params(module):
    path = PACKAGE / module
    assert not {"torch", "torchvision", "ruamel", "dvclive"} & third_party(path)
    assert PACKAGE / "core/params.py" not in local_imports(path)


@pytest.mark.parametrize("stage", list(PIPELINE))
def test_each_stage_reads_its_own_params_section(stage):
    """The report only reads what the other stages wrote, so it has no section of its own; the retake renders the
    line changes robustness names, and reads those keys of its section only (not how robustness batches); the paint
    stage reads what the anomaly section's `painted` says to paint; the two departures stages score with the model of
    good parts as its section batches it."""
    if stage == "retake":
        assert PIPELINE[stage]["params"] == [f"robustness.{key}" for key in ("seed", "workers", *CHANGES)]
        return
    if stage == "paint":  # paints what the model of good parts is judged on: what to paint, not how it is judged
        assert PIPELINE[stage]["params"] == [f"anomaly.painted.{key}" for key in ("kinds", "held_out", "seed")]
        return
    if stage == "departures":  # the model of good parts' scores: how it batches them, nothing that judges them
        assert PIPELINE[stage]["params"] == ["anomaly.batch_size"]
        return
    if stage == "retaken_departures":  # ... of the re-taken parts, checked against the seed they were rendered with
        assert PIPELINE[stage]["params"] == ["robustness.seed", "anomaly.batch_size"]
        return
    assert PIPELINE[stage].get("params") == (None if stage == "report" else [stage])


@pytest.mark.parametrize("module", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_function_is_longer_than_a_screen(module):
    """60 lines is a lot: a longer function does several things and hides its steps."""
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(module.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 60
    ]
    assert not long, f"{module.name}: {', '.join(long)}"


@pytest.mark.parametrize("module", SERVING)
def test_the_serving_path_imports_only_core_and_data(module):
    """It runs the exported model: nothing of training, evaluation or export may load with it."""
    rooms = {room(f) for f in local_imports(PACKAGE / module)} - {None}
    assert rooms <= {"core", "data", "serving"}, f"{module} imports {sorted(rooms - {'core', 'data', 'serving'})}"
