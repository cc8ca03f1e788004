"""The package layout's rules (docs/layout.md), checked on the source tree.

1. A package never imports a module above it: from the top level of ``mr2unet`` a package
   may import only ``mr2unet.errors`` (and ``mr2unet`` itself, for ``__version__``).
2. Packages are layered, lowest first, as :data:`LAYERS` lists; each imports only those
   before it, so no two packages import each other and there is no longer circle.

Function-local imports count: a lazy import is still an arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mr2unet"
LAYERS = ("config", "metrics", "data", "models", "training", "evaluation", "reporting",
          "tracking", "deploy")
BASE = {"errors", "__init__"}  # top-level modules every package may use


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


def test_the_check_passes_a_layered_tree(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"config/__init__.py": "", "deploy/__init__.py": "",
                            "deploy/a.py": "from mr2unet.config import params\n"
                                           "from mr2unet.errors import UserError\n",
                            "cli.py": "from mr2unet.deploy import a\n"})
    assert violations(import_graph(root), packages_of(root)) == []
