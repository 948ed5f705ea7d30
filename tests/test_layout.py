"""The package's shape (issue 16): no import cycles, no private names taken across modules, modules of a
readable size. Read from the sources with ``ast`` (imports inside functions count too), so that a new
cycle or a new private import fails here, not in a reader's head."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "python" / "svfnet"
# Modules allowed above MAX_LINES, each with why (issue 16 asks for a reason written beside it).
MAX_LINES = 600
LONG_MODULES: dict[str, str] = {}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, str]]:
    """(imported svfnet module, name) for every ``from svfnet... import name`` and ``import svfnet...``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "svfnet":
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.append((submodule, "") if submodule in modules else (node.module, alias.name))
        elif isinstance(node, ast.Import):
            found += [(a.name, "") for a in node.names if a.name.split(".")[0] == "svfnet"]
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        graph[name] = {
            target for target, _ in _imports(path, modules) if target in modules and target != name
        }
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules, or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            # a package's __init__ is imported by each of its submodules: it is not an edge back
            if node.startswith(f"{target}."):
                continue
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_cycle_and_only_one_that_is_there():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) is None
    assert find_cycle({"p.x": {"p"}, "p": set()}) is None  # a submodule importing its package


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50 and "svfnet.ops.fields" in graph["svfnet.registration.arrays"] | {
        t for m in graph["svfnet.registration.arrays"] for t in graph[m]
    }
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


@pytest.mark.parametrize("folder", ["python", "tests", "benchmarks"])
def test_no_private_name_is_imported_from_another_module(folder):
    modules = _modules()
    offenders = []
    for path in (ROOT / folder).rglob("*.py"):
        own = _module_name(path) if folder == "python" else None
        for module, name in _imports(path, modules):
            if module != own and name.startswith("_") and not name.startswith("__") and name != "_core":
                offenders.append(f"{path.relative_to(ROOT)}: {module}.{name}")
    assert not offenders, "private names imported across modules:\n" + "\n".join(offenders)


def test_modules_stay_readable():
    long = {
        name: len(path.read_text().splitlines())
        for name, path in _modules().items()
        if len(path.read_text().splitlines()) > MAX_LINES
    }
    assert set(long) <= set(LONG_MODULES), f"modules over {MAX_LINES} lines: {long}"


STAGE_ENTRY_POINTS = {
    "svfnet.data.prepare": "run_prepare",
    "svfnet.data.split": "run_split",
    "svfnet.shapes.stage": "run_shapes",
    "svfnet.references.stage": "run_references",
    "svfnet.training.train": "run_training",
    "svfnet.evaluation.evaluate": "run_evaluation",
}


@pytest.mark.parametrize(("module", "name"), list(STAGE_ENTRY_POINTS.items()))
def test_every_stage_has_one_entry_point_named_alike(module, name):
    """run_<stage>(workdir, ...): the work folder first (docs/architecture.md), and the pipeline calls it."""
    import importlib
    import inspect

    function = getattr(importlib.import_module(module), name)
    first = next(iter(inspect.signature(function).parameters))
    assert first == "workdir", f"{module}.{name} takes {first!r} first"
    assert f"{name}(" in (PACKAGE / "pipeline.py").read_text()
