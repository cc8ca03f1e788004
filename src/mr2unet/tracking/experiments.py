"""Aggregating DVC experiments (e.g. several seeds) into mean +/- std per category.

``dvc exp run --queue -S train.seed=N`` stores each finished experiment as a git commit
under ``refs/exps/``; its committed ``metrics/<model>.json`` and ``params.yaml`` are read
straight from git, so this needs neither DVC's Python API nor its JSON layout.

Experiments are grouped by their effective params (profile applied) other than
``train.seed``: a sweep of seeds x learning rates gives one mean +/- std table per
learning rate, labelled with the params that tell the groups apart.
"""

from __future__ import annotations

import json
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from mr2unet.params import MODEL_NAMES, apply_profile
from mr2unet.tracking.runs import flatten

SEED_KEY = "train.seed"
Config = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ExperimentScores:
    """One experiment's per-category scores of one model."""

    ref: str
    seed: int
    model: str
    per_category: dict[str, dict[str, float]]
    mean: dict[str, float]
    # the experiment's effective params but the seed, flattened: what its group shares
    config: Config = ()


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                          check=True).stdout


def experiment_refs(repo: Path) -> list[str]:
    """Every DVC experiment commit in ``repo`` (``refs/exps/...``), sorted by name."""
    out = _git(repo, "for-each-ref", "--format=%(refname)", "refs/exps")
    return sorted(line for line in out.splitlines() if line and "/exec/" not in line)


def _show(repo: Path, ref: str, path: str) -> str | None:
    result = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=repo, capture_output=True,
                            text=True)
    return result.stdout if result.returncode == 0 else None


def collect(repo: Path, refs: list[str] | None = None) -> list[ExperimentScores]:
    """The metrics of every model in every experiment ref (missing files skipped)."""
    scores: list[ExperimentScores] = []
    for ref in refs if refs is not None else experiment_refs(repo):
        params_text = _show(repo, ref, "params.yaml")
        if params_text is None:
            continue
        flat = flatten(apply_profile(yaml.safe_load(params_text)))
        seed = int(flat.pop(SEED_KEY))
        config = tuple(sorted(flat.items()))
        for model in MODEL_NAMES:
            text = _show(repo, ref, f"metrics/{model}.json")
            if text is None:
                continue
            data = json.loads(text)
            scores.append(ExperimentScores(ref, seed, model, data["per_category"], data["mean"],
                                           config))
    return scores


def spread(scores: list[ExperimentScores], metric: str = "iou"
           ) -> dict[str, dict[str, tuple[float, float, int]]]:
    """``{model: {category or "mean": (mean, std, n)}}`` over experiments (std: sample)."""
    values: dict[str, dict[str, list[float]]] = {}
    for s in scores:
        rows = values.setdefault(s.model, {})
        for category, pair in s.per_category.items():
            rows.setdefault(category, []).append(pair[metric])
        rows.setdefault("mean", []).append(s.mean[metric])
    return {
        model: {cat: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
                for cat, v in rows.items()}
        for model, rows in values.items()
    }


def group_by_config(scores: list[ExperimentScores]
                    ) -> dict[str, list[ExperimentScores]]:
    """``{label: scores}``, one group per distinct config, in sorted label order.

    The label lists the params whose values differ between groups (``train.lr=0.001,
    train.loss=ce``); with a single group it is ``""``.
    """
    configs = {s.config for s in scores}
    keys = sorted({k for c in configs for k, _ in c})
    varying = [k for k in keys if len({dict(c).get(k) for c in configs}) > 1]
    groups: dict[str, list[ExperimentScores]] = {}
    for s in scores:
        values = dict(s.config)
        label = ", ".join(f"{k}={values.get(k, '(unset)')}" for k in varying)
        groups.setdefault(label, []).append(s)
    return dict(sorted(groups.items()))


def spread_markdown(scores: list[ExperimentScores]) -> str:
    """Per group of experiments (:func:`group_by_config`): a table per metric,
    categories x models, cells ``mean +/- std``; first a summary of the groups' means."""
    groups = group_by_config(scores)
    n_runs = len({s.ref for s in scores})
    lines = [f"# Spread over {n_runs} experiments in {len(groups)} configuration(s)", ""]
    if len(groups) > 1:
        models = [m for m in MODEL_NAMES if any(s.model == m for s in scores)]
        lines += ["Mean test IOU over the categories, mean ± sample std over seeds:", "",
                  "| configuration | seeds | " + " | ".join(models) + " |",
                  "|---|---|" + "---|" * len(models)]
        for label, group in groups.items():
            table = spread(group, "iou")
            cells = [_cell(table.get(m, {}).get("mean")) for m in models]
            seeds = ", ".join(map(str, sorted({s.seed for s in group})))
            lines.append(f"| {label} | {seeds} | " + " | ".join(cells) + " |")
        lines.append("")
    for label, group in groups.items():
        lines += _group_markdown(label, group)
    return "\n".join(lines)


def _cell(value: tuple[float, float, int] | None) -> str:
    if not value or not value[2]:
        return "–"
    mean, std, _ = value
    return f"{mean:.4f} ± {std:.4f}"


def _group_markdown(label: str, scores: list[ExperimentScores]) -> list[str]:
    seeds = sorted({s.seed for s in scores})
    title = f"## {label}: " if label else "## "
    lines = [f"{title}{len({s.ref for s in scores})} experiments "
             f"(seeds {', '.join(map(str, seeds))})", ""]
    for metric in ("iou", "dice"):
        table = spread(scores, metric)
        models = [m for m in MODEL_NAMES if m in table]
        categories = sorted({c for m in models for c in table[m] if c != "mean"}) + ["mean"]
        lines += [f"### {metric.upper()} (mean ± sample std)", "",
                  "| category | " + " | ".join(models) + " |",
                  "|---|" + "---|" * len(models)]
        for cat in categories:
            cells = [_cell(table[m].get(cat)) for m in models]
            lines.append(f"| {cat} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def write_spread(repo: Path, out: Path) -> int:
    """Write the spread report of ``repo``'s experiments; returns how many were found."""
    scores = collect(repo)
    if not scores:
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(spread_markdown(scores))
    return len({s.ref for s in scores})
