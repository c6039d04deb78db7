"""The layout's rules, read from the source with ``ast``: no import cycles between modules, Ray only in the adapters."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hummingml", "schemas", "ray_jobs")
# The only modules that import Ray: the Ray Data and Ray Train adapters, and the one ray.init. ray_jobs are entry
# points that call into them.
RAY_ADAPTERS = {"hummingml.extract.ray", "hummingml.train.ray", "hummingml.serve.app", "hummingml.serve.ray",
                "hummingml.cluster"}
# Which other parts each part may import (docs/architecture.md, "Import rules"; the packages' __init__ docstrings).
# The package root ``hummingml`` (its version only) may be imported by any part.
ANY = "*"
ALLOWED: dict[str, set[str] | str] = {
    "hummingml.audio": set(),
    "hummingml.config": set(),
    "hummingml.quiet": set(),
    "hummingml.alloc": set(),
    "hummingml.cluster": set(),
    "hummingml.output": {"schemas"},
    "schemas": set(),
    "hummingml.model": set(),
    "hummingml.weights": {"hummingml.audio", "hummingml.config"},
    "hummingml.stages": {"hummingml.audio", "hummingml.weights"},
    "hummingml.testing": {"hummingml.audio", "hummingml.stages", "hummingml.output"},
    "hummingml.stems": {"hummingml.audio", "hummingml.config", "hummingml.stages", "hummingml.testing"},
    "hummingml.extract": {
        "hummingml.audio", "hummingml.config", "hummingml.cluster", "hummingml.stages", "hummingml.weights",
        "hummingml.testing", "hummingml.output", "hummingml.quiet", "hummingml.alloc", "schemas",
    },
    "hummingml.train": {
        "hummingml.model", "hummingml.config", "hummingml.cluster", "hummingml.audio", "hummingml.output",
    },
    "hummingml.eval": ANY,
    "hummingml.serve": ANY,
    "hummingml.doctor": {"hummingml.stages"},
    "hummingml.cli": ANY,
    "hummingml.api": ANY,
    "ray_jobs": ANY,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = ast.parse(path.read_text(), filename=str(path))
    return found


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:`` (annotations only: not imports at run time)."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside.update(id(n) for n in ast.walk(node))
    return inside


def imported_names(tree: ast.Module) -> list[str]:
    """Every module name an import statement anywhere in ``tree`` names (``from a.b import c`` gives a.b and a.b.c)."""
    skip = _type_checking_nodes(tree)
    names = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{a.name}" for a in node.names)
    return names


def project_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    trees = modules()
    return {name: {n for n in imported_names(tree) if n in trees and n != name} for name, tree in trees.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_import_cycles_between_modules() -> None:
    cycle = find_cycle(project_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def part_of(module: str) -> str:
    """The part of the layout a module belongs to (a key of ALLOWED), or the module itself."""
    return next((p for p in ALLOWED if module == p or module.startswith(p + ".")), module)


def test_each_part_imports_only_the_parts_it_may() -> None:
    wrong = set()
    for module, imported in project_graph().items():
        allowed = ALLOWED.get(part_of(module), set())
        for target in imported:
            if target == "hummingml" or part_of(target) == part_of(module) or allowed == ANY:
                continue
            if part_of(target) not in allowed:
                wrong.add(f"{module} -> {target}")
    assert not wrong, "imports the layout does not allow: " + ", ".join(sorted(wrong))


def test_every_module_belongs_to_a_part() -> None:
    assert {name for name in modules() if part_of(name) == name and name not in ALLOWED} == {"hummingml"}


def test_ray_is_imported_only_by_the_adapters() -> None:
    offenders = {
        name: sorted({n for n in imported_names(tree) if n == "ray" or n.startswith("ray.")})
        for name, tree in modules().items()
        if name not in RAY_ADAPTERS
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"Ray imported outside {sorted(RAY_ADAPTERS)}: {offenders}"


def test_every_adapter_exists_and_imports_ray() -> None:
    trees = modules()
    for name in RAY_ADAPTERS:
        assert "ray" in {n.split(".")[0] for n in imported_names(trees[name])}, name


@pytest.mark.parametrize(
    ("graph", "expected"),
    [({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]), ({"a": {"b"}, "b": set()}, None)],
)
def test_the_cycle_finder_finds_cycles(graph: dict[str, set[str]], expected: list[str] | None) -> None:
    assert find_cycle(graph) == expected


def test_ray_imports_are_seen_inside_functions() -> None:
    tree = ast.parse("def f():\n    import ray.data\n\ndef g():\n    from ray.train import report\n")
    assert {"ray.data", "ray.train", "ray.train.report"} <= set(imported_names(tree))


def test_the_command_line_parser_imports_neither_torch_nor_ray() -> None:
    """``hummingml --help`` and every job's flag parsing stay fast: configs are light modules."""
    import subprocess
    import sys

    code = (
        "import sys, hummingml.cli, ray_jobs.extract, ray_jobs.train, ray_jobs.evaluate;"
        "hummingml.cli.build_parser();"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
