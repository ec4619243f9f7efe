"""No import circle inside models/, service/, training/ or benchmarks/: no modules that import
each other, directly or around a loop. And the layers hold: models/ imports none of the other packages,
training/ and service/ only models/; benchmarks/ sits on top of them all.

The graph comes from the source (``ast``), so every import counts: at the top, inside a function
(a lazy import is still a dependency), or under ``TYPE_CHECKING``. ``from pkg import name`` is an
edge to ``pkg.name`` when that is a module, else to ``pkg`` (its ``__init__``).
``python -m tests.test_import_cycles [ROOT]`` prints the same check for a checkout.
"""

from __future__ import annotations

import ast
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.Import | ast.ImportFrom, name: str, is_package: bool) -> list[str]:
    """The dotted names one import statement of module ``name`` reaches."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:  # relative: from the module's package, one level up per extra dot
        package = name if is_package else name.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    return [f"{base}.{a.name}" for a in node.names] + [base]


def import_graph(package: str, root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (itself excluded)."""
    paths = {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            targets = _imported(node, name, path.name == "__init__.py")
            if isinstance(node, ast.ImportFrom):  # `from m import a`: m.a if a module, else m
                modules = [t for t in targets[:-1] if t in paths]
                targets = modules if len(modules) == len(targets) - 1 else [*modules, targets[-1]]
            for target in targets:
                while target and target not in paths:  # `import a.b.c`: the nearest module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def import_cycle(package: str, root: Path = ROOT) -> list[str] | None:
    """One circle of imports in ``package`` (``[a, b, ..., a]``), or None when there is none."""
    try:
        tuple(TopologicalSorter(import_graph(package, root)).static_order())
    except CycleError as e:
        return list(reversed(e.args[1]))
    return None


@pytest.mark.parametrize(
    "package",
    ["models", "service", "training", "benchmarks"],
)
def test_no_import_cycle(package: str) -> None:
    graph = import_graph(package)
    assert len(graph) > 5 and sum(map(len, graph.values())) > 5  # the walk found the package
    cycle = import_cycle(package)
    assert cycle is None, f"import circle in {package}/: {' -> '.join(cycle)}"


def imported_packages(package: str, root: Path = ROOT) -> dict[str, set[str]]:
    """Module of ``package`` -> the top-level packages its absolute imports name (lazy ones too)."""
    found: dict[str, set[str]] = {}
    for path in sorted((root / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.partition(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module.partition(".")[0])
        found[module_name(path, root)] = names
    return found


LAYERS = {  # package -> the project's packages it must never import
    "models": {"training", "service", "benchmarks"},
    "training": {"service", "benchmarks"},
    "service": {"training", "benchmarks"},
}


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_no_import_across_the_layers(package: str) -> None:
    found = imported_packages(package)
    assert found and any("models" in names for names in found.values())  # the walk saw imports
    wrong = {m: sorted(names & LAYERS[package]) for m, names in found.items() if names & LAYERS[package]}
    assert not wrong, f"{package}/ must not import {sorted(LAYERS[package])}: {wrong}"


def test_the_layer_check_sees_lazy_and_dotted_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "training"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text(
        "import models.flops\n\ndef late():\n    from benchmarks.harness import output\n"
        "    from . import b\n"
    )
    assert imported_packages("training", tmp_path) == {
        "training": set(),
        "training.a": {"models", "benchmarks"},
    }


def test_the_check_finds_a_circle_through_a_lazy_import(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub.b import thing\n")
    (pkg / "a.py").write_text("import json\nfrom pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("thing = 1\n\ndef late():\n    from ..a import json\n")
    assert import_graph("pkg", tmp_path) == {
        "pkg": set(),
        "pkg.a": {"pkg.sub.b"},
        "pkg.sub": {"pkg.sub.b"},
        "pkg.sub.b": {"pkg.a"},
    }
    assert import_cycle("pkg", tmp_path) in (
        ["pkg.a", "pkg.sub.b", "pkg.a"],
        ["pkg.sub.b", "pkg.a", "pkg.sub.b"],
    )
    (pkg / "sub" / "b.py").write_text("thing = 1\n")
    assert import_cycle("pkg", tmp_path) is None


if __name__ == "__main__":
    checkout = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT
    for name in ("service", "training", "benchmarks"):
        g = import_graph(name, checkout)
        found = import_cycle(name, checkout)
        edges = sum(map(len, g.values()))
        verdict = "no import circle" if found is None else "CIRCLE " + " -> ".join(found)
        print(f"{checkout.name}/{name}: {len(g)} modules, {edges} imports between them: {verdict}")
