"""Each fact defined once (issue #34): the model list, the output paths, the allowed values.

The source of ``src/`` and ``pipeline/`` is read with :mod:`ast` (comments and docstrings
are not code) and searched for a second definition:

- the model list lives in the models registry (``mr2unet.models.REGISTRY``): a collection
  literal (tuple, list, set, dict keys) holding two or more model names elsewhere is a copy;
- the output paths live in ``mr2unet.config.workspace``: a string without spaces (a path, not
  a sentence of a help text) holding one of its fragments (``data/models``, ``manifest.csv``,
  ``_prob.npz``...) elsewhere is a second spelling;
- each allowed-value list lives in ``mr2unet.config.params``: a collection literal holding two
  or more values of one of its lists elsewhere is a copy; so is a "keep in sync" comment.

dvc.yaml's top-level plots cannot be templated from a list (DVC expands ``matrix``/``foreach``
in stages only), so the test checks that each lists exactly the registry's models, in order.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mr2unet.config import params as config
from mr2unet.errors import UserError
from mr2unet.models import COLOURS, LABELS, MODEL_NAMES, REGISTRY, check_model_params

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "mr2unet"
SCANNED = (SRC, REPO / "pipeline")
REGISTRY_MODULE = SRC / "models" / "__init__.py"
WORKSPACE_MODULE = SRC / "config" / "workspace.py"
PARAMS_MODULE = SRC / "config" / "params.py"

# What the workspace module spells: folders of the pipeline's outputs and its file names
# (and the old record's folder, so that it does not come back).
PATH_FRAGMENTS = ("data/raw", "data/prepared", "data/models", "data/eval", "metrics/history",
                  "metrics/timing", "metrics/evaluation", "metrics/pooled", "manifest.csv",
                  "summary.json", ".run.json", "_pred.npz", "_prob.npz", "reports/")
# The allowed-value lists of config/params.py that code outside it also needs. A dict keyed
# by them is no copy (code that does one thing per value: a dispatch table, JSON fields).
ALLOWED = {
    "IMAGE_SCORES": config.IMAGE_SCORES,
    "FIT_FOR_USE keys": config.FIT_FOR_USE_KEYS,
    "threshold rule forms": (config.BEST_IOU, config.AUTO, config.MAX_FALSE_ALARM_RATE),
    "LOSSES": config.LOSSES,
    "LAYOUTS": config.LAYOUTS,
    "SOURCES": config.SOURCES,
    "ADAM_IMPLS": config.ADAM_IMPLS,
}
# Mappings defined there: a dict with the same keys elsewhere is a copy (the defaults).
MAPPINGS = {"FIT_FOR_USE": tuple(config.FIT_FOR_USE)}


def where(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


def python_files(roots: tuple[Path, ...] = SCANNED) -> list[Path]:
    return sorted(p for root in roots for p in root.rglob("*.py"))


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes of ``tree`` (module, classes, functions)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def strings(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, text) of every string constant of ``tree`` but its docstrings; an f-string's
    literal parts one by one."""
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in skip):
            yield node.lineno, node.value


def collections(tree: ast.AST, dicts: bool = True) -> Iterator[tuple[int, set[str]]]:
    """(line, the string items) of every tuple, list, set literal and (``dicts``) every
    dict literal's keys."""
    for node in ast.walk(tree):
        items: list[ast.expr | None] = []
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            items = list(node.elts)
        elif isinstance(node, ast.Dict) and dicts:
            items = list(node.keys)
        found = {i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)}
        if found:
            yield node.lineno, found


def copies_of_lists(path: Path, lists: dict[str, tuple[str, ...]], dicts: bool = True
                    ) -> list[str]:
    """Collection literals of ``path`` holding two or more values of one of ``lists``;
    with ``dicts`` a dict's keys count (a table keyed by model name is a copy of the list)."""
    tree = ast.parse(path.read_text(), str(path))
    return [f"{where(path)}:{line}: {sorted(found & set(values))} ({name})"
            for line, found in collections(tree, dicts) for name, values in lists.items()
            if len(found & set(values)) >= 2]


def copies_of_mappings(path: Path, mappings: dict[str, tuple[str, ...]]) -> list[str]:
    """Dict literals of ``path`` keyed by exactly the keys of one of ``mappings``."""
    tree = ast.parse(path.read_text(), str(path))
    return [f"{where(path)}:{line}: {sorted(found)} ({name})"
            for line, found in collections(tree) for name, keys in mappings.items()
            if found == set(keys)]


def spelled_paths(path: Path) -> list[str]:
    """Strings of ``path`` without spaces that hold an output path's fragment."""
    tree = ast.parse(path.read_text(), str(path))
    return [f"{where(path)}:{line}: {text!r}" for line, text in strings(tree)
            if not re.search(r"\s", text) and any(f in text for f in PATH_FRAGMENTS)]


def test_the_model_list_is_the_registrys_only() -> None:
    found = [hit for path in python_files() if path != REGISTRY_MODULE
             for hit in copies_of_lists(path, {"model names": MODEL_NAMES})]
    assert found == [], "model names listed outside mr2unet.models.REGISTRY:\n" + "\n".join(found)


def test_output_paths_are_spelled_in_the_workspace_module_only() -> None:
    found = [hit for path in python_files() if path != WORKSPACE_MODULE
             for hit in spelled_paths(path)]
    assert found == [], ("output paths spelled outside mr2unet.config.workspace (use "
                         "ModelFiles / PREPARED / RAW / REPORTS):\n" + "\n".join(found))


def test_each_allowed_value_list_is_defined_once() -> None:
    found = [hit for path in python_files() if path != PARAMS_MODULE
             for hit in (*copies_of_lists(path, ALLOWED, dicts=False),
                         *copies_of_mappings(path, MAPPINGS))]
    assert found == [], ("allowed values listed outside mr2unet.config.params:\n"
                         + "\n".join(found))


def test_no_list_is_kept_in_sync_by_hand() -> None:
    found = [f"{where(path)}:{n}" for path in python_files()
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if re.search(r"keep(s)? in sync|in sync with", line, re.IGNORECASE)]
    assert found == [], "a copy kept in sync by hand:\n" + "\n".join(found)


def test_the_scans_catch_a_copy(tmp_path: Path) -> None:
    """Each scan reports a planted second definition (and not a sentence that names one)."""
    planted = tmp_path / "planted.py"
    planted.write_text('"""Writes data/models/<model>.pt (a docstring: fine)."""\n'
                       'NAMES = ("unet", "mr2unet")\n'
                       'HELP = "a .pt file (data/models/<arch>.pt)"\n'
                       'OUT = Path("data/eval") / f"{arch}_prob.npz"\n'
                       'SCORES = ["max_smoothed", "top_k_mean"]\n'
                       'FIT = {"pixel_auroc": 0.9, "iou": 0.3, "false_alarm_rate": 0.2}\n'
                       'RUN = {"max_smoothed": max, "top_k_mean": sum}\n')
    assert [h.split(": ")[0] for h in copies_of_lists(planted, {"m": MODEL_NAMES})] == [
        "planted.py:2"]
    assert [h.split(": ")[0] for h in spelled_paths(planted)] == ["planted.py:4"] * 2
    assert [h.split(": ")[0] for h in copies_of_lists(planted, ALLOWED, dicts=False)] == [
        "planted.py:5"]  # the dispatch table on line 7 is no copy
    assert [h.split(": ")[0] for h in copies_of_mappings(planted, MAPPINGS)] == [
        "planted.py:6"]


def test_the_registry_gives_every_network_a_label_and_a_colour() -> None:
    assert MODEL_NAMES == tuple(REGISTRY) == tuple(LABELS) == tuple(COLOURS)
    assert len(set(LABELS.values())) == len(set(COLOURS.values())) == len(MODEL_NAMES)
    assert REGISTRY["mr2unet"].relative_cost > REGISTRY["unet"].relative_cost == 1.0


def test_dvc_yaml_plots_list_exactly_the_registrys_models() -> None:
    """DVC expands ``matrix`` in stages only, so the top-level plots name every model: they
    must name exactly the registry's, in its order, from one file pattern per plot."""
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    assert plots, "dvc.yaml has no top-level plots"
    for plot in plots:
        (name, spec), = plot.items()
        files = list(spec["y"])
        patterns = {f.replace(m, "<model>") for f, m in zip(files, MODEL_NAMES, strict=False)}
        assert len(patterns) == 1 and len(files) == len(MODEL_NAMES), (name, files)
        pattern = patterns.pop()
        assert files == [pattern.replace("<model>", m) for m in MODEL_NAMES], name


@pytest.mark.parametrize(("key", "value"), [("train.models", ["unet", "segformer"]),
                                            ("train.model_options", {"segformer": {}})])
def test_model_names_are_checked_against_the_registry(key: str, value: object) -> None:
    """config.params sits below the registry and checks the form only; the stages call
    check_model_params right after load_params (pipeline/_common.py)."""
    params = config.load_params(REPO / "params.yaml")
    section, field = key.split(".")
    params[section][field] = value
    with pytest.raises(UserError, match=f"`{key}`.*unet, resunet, attention_unet, mr2unet"):
        check_model_params(params)
    check_model_params(config.load_params(REPO / "params.yaml"))  # the committed file: fine
