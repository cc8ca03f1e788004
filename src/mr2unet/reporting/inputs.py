"""What the report reads: the evaluation and training records, the paper's Table 1.

:func:`read_records` reads what the verdict's ranking rules need (also the promote
stage's input); :func:`load_report` reads everything the report shows. Both only read.
"""

from __future__ import annotations

import csv
import io
import json
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from mr2unet.config.profiles import applied as applied_profile
from mr2unet.config.provenance import git_commit, torch_version
from mr2unet.config.workspace import PREPARED, ModelFiles
from mr2unet.data.prepared import PreparedSplit, load_split
from mr2unet.errors import UserError
from mr2unet.evaluation.verdict import Records
from mr2unet.models import LABELS, MODEL_NAMES
from mr2unet.models.checkpoint import read_checkpoint
from mr2unet.reporting import significance as report_stats


def paper_table() -> dict[tuple[str, str], dict[str, float]]:
    """The paper's Table 1: ``{(model, category): {"iou": .., "dice": ..}}``."""
    text = resources.files("mr2unet.reporting").joinpath("paper_table1.csv").read_text()
    return {(r["model"], r["category"]): {"iou": float(r["iou"]), "dice": float(r["dice"])}
            for r in csv.DictReader(io.StringIO(text))}


def paper_categories() -> set[str]:
    """The 15 MVTec AD categories of the paper's Table 1."""
    return {c for (_, c) in paper_table() if c != "mean"}


def read_json(path: Path, stage: str) -> dict[str, Any]:
    """A stage's JSON output; a missing one is a UserError naming the stage to run."""
    if not path.is_file():
        raise UserError(f"{path} not found: run `dvc repro {stage}` first.")
    return json.loads(path.read_text())


def read_history(path: Path) -> list[dict[str, float]]:
    """``metrics/history/<model>.csv`` as one dict per epoch."""
    if not path.is_file():
        raise UserError(f"{path} not found: run `dvc repro train` first.")
    with path.open(newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def read_records(models: list[str], root: Path = Path(".")) -> Records:
    """The evaluation records of ``models`` (metrics, the evaluate stage's whole record,
    the training history) that the verdict's ranking rules read."""
    metrics, pooled, histories = {}, {}, {}
    for m in models:
        files = ModelFiles(m, root)
        metrics[m] = read_json(files.metrics, f"evaluate@{m}")
        pooled[m] = read_json(files.evaluation, f"evaluate@{m}")
        histories[m] = read_history(files.history)
    return Records(metrics, pooled, histories)


@dataclass
class ReportInputs:
    """Everything the report shows, already loaded."""

    records: Records  # metrics, the evaluate stage's record and the history per model
    split: PreparedSplit  # the test split
    predictions: dict[str, np.ndarray]  # model -> uint8 (N, S, S)
    samples_per_category: int = 2
    provenance: dict[str, str] = field(default_factory=dict)
    timing: dict[str, dict[str, Any]] = field(default_factory=dict)  # metrics/timing/
    per_image: dict[str, report_stats.PerImage] = field(default_factory=dict)  # data/eval/

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        """Model -> ``metrics/<model>.json``."""
        return dict(self.records.metrics)

    @property
    def pooled(self) -> dict[str, dict[str, Any]]:
        """Model -> the evaluate stage's whole record (verdict, pooled scores, cost...)."""
        return dict(self.records.pooled)

    @property
    def histories(self) -> dict[str, list[dict[str, float]]]:
        return dict(self.records.histories)

    @property
    def models(self) -> list[str]:
        return [m for m in MODEL_NAMES if m in self.records.metrics]

    @property
    def categories(self) -> list[str]:
        return sorted({c for m in self.records.metrics.values() for c in m["per_category"]})

    def verdict_of(self, model: str) -> dict[str, Any]:
        """The model's ``verdict`` block (empty when absent)."""
        return dict(self.records.verdict_of(model))


def read_predictions(models: list[str], split: PreparedSplit, root: Path
                     ) -> dict[str, np.ndarray]:
    """``data/eval/<model>_pred.npz`` of each model, checked against the test split."""
    predictions = {}
    for m in models:
        path = ModelFiles(m, root).predictions
        if not path.is_file():
            raise UserError(f"{path} not found: run `dvc repro evaluate@{m}`.")
        with np.load(path) as data:
            predictions[m] = data["predictions"]
        if predictions[m].shape != split.masks.shape:
            raise UserError(f"{path} does not match {root / PREPARED.test}: "
                            f"run `dvc repro evaluate@{m}` again.")
    return predictions


def load_inputs(models: list[str], root: Path = Path("."), samples_per_category: int = 2
                ) -> ReportInputs:
    """Read the evaluation and training outputs of ``models`` under ``root``."""
    split = load_split(root / PREPARED.test)
    records = read_records(models, root)
    predictions = read_predictions(models, split, root)
    per_image = {m: report_stats.read_per_image(ModelFiles(m, root).per_image, f"evaluate@{m}")
                 for m in models}
    report_stats.check_aligned(per_image, split.sources, str(root / PREPARED.test))
    return ReportInputs(records, split, predictions, samples_per_category,
                        per_image=per_image)


def read_timings(models: list[str], root: Path = Path(".")) -> dict[str, dict[str, Any]]:
    """``metrics/timing/<model>.json`` of each model that has one (absent: shown as –)."""
    paths = {m: ModelFiles(m, root).timing for m in models}
    return {m: json.loads(p.read_text()) for m, p in paths.items() if p.is_file()}


def _tiles_note(tiling: dict[str, Any] | None) -> str:
    """``, tiles of 64 px, predicted whole`` for a model trained on crops; else ``""``."""
    if not tiling:
        return ""
    return (f", tiles of {tiling['tile']} px, predicted "
            f"{tiling.get('predict', 'windows')}")


def provenance(params: dict[str, Any], inputs: ReportInputs, root: Path) -> dict[str, str]:
    """Where the numbers come from: commit, params, data, training devices, versions."""
    prov = {
        "git commit": git_commit(root),
        # The profile params.yaml was written from (its first-line note; no stage depends
        # on it, so after hand edits it may say more than the values do).
        "profile": applied_profile(root / "params.yaml"),
        "data source": str(params["data"]["source"]),
        "test images": f"{len(inputs.split)} in {len(inputs.categories)} categories",
    }
    summary = root / PREPARED.summary
    auto = json.loads(summary.read_text()).get("auto") if summary.is_file() else None
    if auto:  # prepare.mode auto: what it chose and why (absent for the paper's resize)
        prov["preparation"] = f"prepare.mode auto -> {auto['mode']}: {auto['reason']}"
    for m in inputs.models:
        meta = read_checkpoint(ModelFiles(m, root).checkpoint).get("meta", {})
        commit = str(meta.get("git_commit", "?"))
        short = commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")
        prov[f"{LABELS[m]} training"] = (
            f"{meta.get('epochs', '?')} epochs on {meta.get('device', '?')}, torch "
            f"{meta.get('torch_version', '?')}, commit {short}"
            + _tiles_note(meta.get("tiling")))
    prov["torch / python (report)"] = f"{torch_version()} / {platform.python_version()}"
    prov["generated"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return prov


def load_report(params: dict[str, Any], root: Path = Path(".")) -> ReportInputs:
    """Everything the report shows: the records, the test split, predictions, provenance."""
    inputs = load_inputs(params["train"]["models"], root, params["evaluate"]["report_samples"])
    inputs.provenance = provenance(params, inputs, root)
    inputs.timing = read_timings(inputs.models, root)
    return inputs
