"""The shape of the library's code (issue #34): no function in ``src/`` is 80 lines or
longer, so that each one reads on a screen.  A function's length is its ``def`` line (the
first decorator's, if any) to its last line, docstring and comments included."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
LIMIT = 80
# Functions still over the limit, each with the issue that shortens it; an entry that is
# no longer over the limit fails the test, so the list only shrinks.
ALLOWED: dict[str, str] = {}


def long_functions(root: Path, limit: int = LIMIT) -> list[tuple[str, int, str, int]]:
    """(file relative to ``root``'s parent, line, name, length) of each function in the
    Python files under ``root`` that is ``limit`` lines or longer, nested ones included."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                length = node.end_lineno - first + 1
                if length >= limit:
                    found.append((str(path.relative_to(root.parent)), first, node.name,
                                  length))
    return found


def test_the_measure_counts_decorators_and_nested_functions(tmp_path: Path) -> None:
    pkg = tmp_path / "src"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(6))
    (pkg / "m.py").write_text(f"@staticmethod\ndef f():\n{body}\n    def g():\n"
                              f"        return 1\n    return g\n")
    assert long_functions(pkg, limit=11) == [("src/m.py", 1, "f", 11)]
    assert long_functions(pkg, limit=12) == []


def test_no_function_in_src_is_80_lines_or_longer() -> None:
    found = long_functions(SRC)
    offenders = [f"{file}:{line} {name} ({length} lines)"
                 for file, line, name, length in found if f"{file}::{name}" not in ALLOWED]
    stale = set(ALLOWED) - {f"{file}::{name}" for file, _, name, _ in found}
    assert not stale, f"no longer {LIMIT} lines or more: remove from ALLOWED: {stale}"
    assert not offenders, (f"functions of {LIMIT} lines or more (split them into named "
                           f"pieces):\n" + "\n".join(offenders))
