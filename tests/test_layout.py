"""The package layout's rules (docs/layout.md), checked on the source tree.

1. A package never imports a module above it: from the top level of ``mr2unet`` a package
   may import only ``mr2unet.errors`` (and ``mr2unet`` itself, for ``__version__``).
2. Packages are layered, lowest first, as :data:`LAYERS` lists; each imports only those
   before it, so no two packages import each other and there is no longer circle.
3. Inside a package, the modules' module-level imports form no circle (a circle works
   only by the order Python happens to load them, and hides which module is the base).
4. A module of the project is imported at module level, where a reader sees it. A
   function-local import of one is allowed only with a reason on its line,
   ``# lazy: <why>`` (e.g. the module imports MLflow, an optional dependency, at load).

For rules 1-2, function-local imports count: a lazy import is still an arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mr2unet"
LAYERS = ("config", "metrics", "data", "models", "training", "evaluation", "reporting",
          "tracking", "deploy")
BASE = {"errors", "__init__"}  # top-level modules every package may use
LAZY = "# lazy:"  # the reason a function-local import of a project module must give


def unit_of(module: str) -> str:
    """``mr2unet.training.loop`` -> ``training``; ``mr2unet.cli`` -> ``cli``."""
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def import_graph(root: Path) -> dict[str, set[tuple[str, str]]]:
    """For each unit (package or top-level module) of ``root``: (imported unit, where)."""
    graph: dict[str, set[tuple[str, str]]] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        module = ".".join(p for p in rel.parts if p != "__init__") or root.name
        is_package = path.name == "__init__.py"
        unit = unit_of(module) if len(rel.parts) > 2 or is_package else rel.parts[-1]
        edges = graph.setdefault(unit, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = module.split(".")[: len(module.split(".")) - node.level
                                              + (1 if is_package else 0)]
                    targets = [".".join([*base, node.module or ""]).rstrip(".")]
                else:
                    targets = [node.module or ""]
                if targets[0] == root.name:  # from mr2unet import x
                    targets = [f"{root.name}.{a.name}" for a in node.names]
            for target in targets:
                if target == root.name or target.startswith(root.name + "."):
                    other = unit_of(target)
                    if other != unit:
                        edges.add((other, f"{path.relative_to(root)}:{node.lineno}"))
    return graph


def violations(graph: dict[str, set[tuple[str, str]]], packages: set[str]) -> list[str]:
    """Every arrow that breaks rule 1 or 2, as ``where: a -> b (why)``."""
    found = []
    for unit, edges in sorted(graph.items()):
        if unit not in packages:
            continue  # top-level modules (cli, repro) may import any package
        for other, where in sorted(edges):
            if other in BASE:
                continue
            if other not in packages:
                found.append(f"{where}: {unit} -> {other} (a package imports a module above it)")
            elif other not in LAYERS or unit not in LAYERS:
                found.append(f"{where}: {unit} -> {other} (a package missing from LAYERS)")
            elif LAYERS.index(other) > LAYERS.index(unit):
                found.append(f"{where}: {unit} -> {other} (imports a package above it in "
                             f"LAYERS)")
    return found


def packages_of(root: Path) -> set[str]:
    return {p.parent.name for p in root.glob("*/__init__.py")}


def test_the_source_tree_keeps_the_layering() -> None:
    packages = packages_of(SRC)
    assert packages == set(LAYERS), "a package was added or removed: place it in LAYERS"
    assert violations(import_graph(SRC), packages) == []


def test_every_top_level_module_is_an_entry_point_or_the_errors() -> None:
    """The top level holds only cli, repro and errors: everything else is in a package."""
    assert {p.stem for p in SRC.glob("*.py")} == {"__init__", "cli", "repro", "errors"}


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "mr2unet"
    for name, text in {"__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(("files", "expected"), [
    # tracking importing deploy while deploy imports tracking (the circle this layout removed)
    ({"tracking/__init__.py": "", "deploy/__init__.py": "",
      "tracking/registry.py": "def f():\n    from mr2unet.deploy.export import x\n",
      "deploy/export.py": "from mr2unet.tracking import registry\n"},
     ["tracking/registry.py:2: tracking -> deploy (imports a package above it in LAYERS)"]),
    # a package importing the command line (a module above it), by a relative import
    ({"data/__init__.py": "", "cli.py": "", "data/prepare.py": "from .. import cli\n"},
     ["data/prepare.py:1: data -> cli (a package imports a module above it)"]),
    # from mr2unet import <package>: the arrow goes to that package
    ({"metrics/__init__.py": "", "training/__init__.py": "",
      "metrics/m.py": "from mr2unet import training\nfrom mr2unet import errors\n"},
     ["metrics/m.py:1: metrics -> training (imports a package above it in LAYERS)"]),
])
def test_the_check_finds_a_broken_rule(tmp_path: Path, files: dict[str, str],
                                       expected: list[str]) -> None:
    root = _tree(tmp_path, files)
    assert violations(import_graph(root), packages_of(root)) == expected


# ------------------------------------------------- inside a package: no circle, no hiding


def module_name(path: Path, root: Path) -> str:
    """``<root>/tracking/runs.py`` -> ``mr2unet.tracking.runs``; a package's ``__init__.py``
    is the package itself."""
    rel = path.relative_to(root.parent).with_suffix("")
    return ".".join(p for p in rel.parts if p != "__init__")


def imported_modules(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
                     known: set[str]) -> list[str]:
    """The project modules an import statement loads (``from pkg import mod`` loads
    ``pkg.mod`` when that is a module, else ``pkg``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in known]
    base = node.module or ""
    if node.level:
        parts = module.split(".")
        keep = len(parts) - node.level + (1 if is_package else 0)
        base = ".".join([*parts[:keep], *([base] if base else [])])
    found = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    return sorted({m for m in found if m in known})


def _module_level(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The imports Python runs when it loads the module: not inside a function, not under
    ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def package_graphs(root: Path) -> dict[str, dict[str, set[str]]]:
    """Per package: module -> the modules of the same package it imports at module level."""
    paths = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graphs: dict[str, dict[str, set[str]]] = {}
    for module, path in paths.items():
        package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
        edges = graphs.setdefault(package, {}).setdefault(module, set())
        for node in _module_level(ast.parse(path.read_text(), str(path))):
            for target in imported_modules(node, module, path.name == "__init__.py",
                                           set(paths)):
                if target != module and (target == package
                                         or target.rsplit(".", 1)[0] == package):
                    edges.add(target)
    return graphs


def _circle_from(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    """The shortest import path from ``start`` back to itself, or None."""
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                return [*paths[node], start]
            if nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    return None


def package_circles(root: Path) -> list[str]:
    """Each import circle among a package's modules, once: ``a -> b -> a``."""
    found, seen = [], set()
    for graph in package_graphs(root).values():
        for module in sorted(graph):
            circle = _circle_from(module, graph)
            if circle and frozenset(circle) not in seen:
                seen.add(frozenset(circle))
                found.append(" -> ".join(m.removeprefix(f"{root.name}.") for m in circle))
    return found


def hidden_imports(root: Path) -> list[str]:
    """Function-local imports of project modules without a ``# lazy: <why>`` reason."""
    found = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        lines = text.splitlines()
        module, top, seen = module_name(path, root), root.name, set()
        for node in ast.walk(ast.parse(text, str(path))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for sub in ast.walk(node):
                if not isinstance(sub, ast.Import | ast.ImportFrom) or sub.lineno in seen:
                    continue
                seen.add(sub.lineno)  # a nested function's import: named by the outer one
                names = [a.name for a in sub.names] if isinstance(sub, ast.Import) \
                    else [sub.module or ""]
                ours = (isinstance(sub, ast.ImportFrom) and sub.level > 0) or any(
                    n == top or n.startswith(top + ".") for n in names)
                span = lines[sub.lineno - 1:(sub.end_lineno or sub.lineno)]
                if ours and not any(LAZY in line for line in span):
                    found.append(f"{path.relative_to(root)}:{sub.lineno}: "
                                 f"{lines[sub.lineno - 1].strip()} (in {module}.{node.name})")
    return sorted(found)


def test_no_import_circle_inside_a_package() -> None:
    assert package_circles(SRC) == []


def test_project_modules_are_imported_where_a_reader_sees_them() -> None:
    """Rule 4: every function-local import of a project module says why it is lazy."""
    assert hidden_imports(SRC) == []


CIRCLE = {"tracking/__init__.py": "", "tracking/registry.py": "from .runs import x\n",
          "tracking/runs.py": "from mr2unet.tracking.sync import y\n",
          "tracking/sync.py": "from mr2unet.tracking import registry\n"}


def test_the_check_finds_a_circle_inside_a_package(tmp_path: Path) -> None:
    """tracking's former registry -> runs -> sync -> registry, by three kinds of import."""
    root = _tree(tmp_path, CIRCLE)
    assert package_circles(root) == ["tracking.registry -> tracking.runs -> tracking.sync "
                                     "-> tracking.registry"]
    # Not at load: a function-local import breaks the circle (and rule 4 shows it).
    root = _tree(tmp_path / "lazy", {**CIRCLE, "tracking/sync.py":
                                     "def f():\n    from mr2unet.tracking import registry\n"})
    assert package_circles(root) == []
    assert hidden_imports(root) == ["tracking/sync.py:2: from mr2unet.tracking import registry "
                                    "(in mr2unet.tracking.sync.f)"]


def test_the_check_lists_hidden_imports_and_accepts_a_reason(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "data/__init__.py": "", "data/a.py": "import mr2unet.data.b\n",
        "data/b.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                      "    from mr2unet.data import a\n"
                      "def f():\n    import json\n"
                      "    from mr2unet.data import a  # lazy: a loads a large table\n"
                      "def g():\n    from . import a\n"
                      "def h():\n    from mr2unet.data.a import (  # lazy: why\n        x)\n")})
    assert package_circles(root) == []  # b's TYPE_CHECKING import runs only for type checkers
    assert hidden_imports(root) == ["data/b.py:8: from . import a (in mr2unet.data.b.g)"]


def test_the_check_passes_a_layered_tree(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"config/__init__.py": "", "deploy/__init__.py": "",
                            "deploy/a.py": "from mr2unet.config import params\n"
                                           "from mr2unet.errors import UserError\n",
                            "cli.py": "from mr2unet.deploy import a\n"})
    assert violations(import_graph(root), packages_of(root)) == []
