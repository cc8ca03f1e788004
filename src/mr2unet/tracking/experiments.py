"""Aggregating DVC experiments (e.g. several seeds) into mean +/- std per category.

``dvc exp run --queue -S train.seed=N`` stores each finished experiment as a git commit
under ``refs/exps/``; its committed ``metrics/<model>.json`` and ``params.yaml`` are read
straight from git, so the tables need neither DVC's Python API nor its JSON layout.

Experiments are grouped by their params (:func:`effective_params`) other than
``train.seed``: a sweep of seeds x learning rates gives one mean +/- std table per
learning rate, labelled with the params that tell the groups apart. Each group's Table 1
(mean +/- std over seeds) stands beside the paper's values, and the models are compared
pairwise (:mod:`mr2unet.reporting.significance`) on their per-image scores averaged over the seeds.

The per-image scores (``data/eval/<model>.csv``) are DVC-cached outputs, not in git: an
experiment's file is found through the md5 its committed ``dvc.lock`` records, in the
local cache (``.dvc/cache/files/md5/``, where `dvc exp run` put it); failing that through
``dvc.api.read`` (another cache directory, a remote). Experiments whose files are not
found (``dvc gc``, a fresh clone without ``dvc pull``) are left out of the comparison,
and the report says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mr2unet.config.params import deep_merge
from mr2unet.config.workspace import ModelFiles
from mr2unet.errors import UserError
from mr2unet.models import MODEL_NAMES
from mr2unet.reporting import significance as report_stats
from mr2unet.reporting.inputs import LABELS, paper_categories, paper_table
from mr2unet.reporting.significance import PerImage
from mr2unet.tracking.runs import flatten

log = logging.getLogger(__name__)

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
    # data/eval/<model>.csv of the experiment; None when not found (see the module doc)
    per_image: PerImage | None = field(default=None, compare=False, repr=False)


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


def effective_params(raw: Any) -> dict[str, Any]:
    """The values an experiment ran with: its ``params.yaml``.

    An experiment committed before profiles moved to ``profiles/`` holds a ``profile:``
    key and a ``profiles:`` block; it gets its profile merged in as it was then.
    """
    if not isinstance(raw, dict):
        return {}
    if "profile" not in raw and "profiles" not in raw:
        return raw
    base = {k: v for k, v in raw.items() if k not in ("profile", "profiles")}
    overlay = (raw.get("profiles") or {}).get(raw.get("profile", "paper")) or {}
    return deep_merge(base, overlay)


def _locked_md5(lock_text: str | None, path: str) -> str | None:
    """The md5 ``dvc.lock`` records for the output ``path``, if any."""
    if not lock_text:
        return None
    try:
        lock = yaml.safe_load(lock_text) or {}
    except yaml.YAMLError:
        return None
    for stage in (lock.get("stages") or {}).values():
        for out in (stage or {}).get("outs") or []:
            if out.get("path") == path and out.get("md5"):
                return str(out["md5"])
    return None


def _from_cache(repo: Path, md5: str) -> str | None:
    """The cached file of ``md5`` in the repository's default local cache (DVC 3, then 2)."""
    cache = repo / ".dvc" / "cache"
    for candidate in (cache / "files" / "md5" / md5[:2] / md5[2:], cache / md5[:2] / md5[2:]):
        if candidate.is_file():
            data = candidate.read_bytes()
            if hashlib.md5(data).hexdigest() == md5:
                return data.decode()
    return None


def _from_dvc_api(repo: Path, ref: str, path: str) -> str | None:
    try:
        import dvc.api  # lazy: loading DVC takes seconds; only the fallback reader needs it

        return str(dvc.api.read(path, repo=str(repo), rev=ref))
    except Exception as exc:  # noqa: BLE001 - any failure means "not available"
        log.debug("dvc.api.read(%s, rev=%s): %s", path, ref, exc)
        return None


def read_output(repo: Path, ref: str, path: str, lock_text: str | None = None) -> str | None:
    """The text of a pipeline output ``path`` as of experiment ``ref``, or ``None``.

    Committed to git -> that; else the md5 in the ref's ``dvc.lock`` -> the local cache;
    else ``dvc.api.read`` (only when ``dvc.lock`` lists the file, as it costs a second).
    """
    text = _show(repo, ref, path)
    if text is not None:
        return text
    if lock_text is None:
        lock_text = _show(repo, ref, "dvc.lock")
    md5 = _locked_md5(lock_text, path)
    if md5 is None:
        return None
    return _from_cache(repo, md5) or _from_dvc_api(repo, ref, path)


def per_image_path(model: str) -> str:
    return ModelFiles(model).per_image.as_posix()


def collect(repo: Path, refs: list[str] | None = None, per_image: bool = True
            ) -> list[ExperimentScores]:
    """The metrics of every model in every experiment ref (missing files skipped), and
    with ``per_image`` its per-image scores where they can be found."""
    scores: list[ExperimentScores] = []
    for ref in refs if refs is not None else experiment_refs(repo):
        params_text = _show(repo, ref, "params.yaml")
        if params_text is None:
            continue
        flat = flatten(effective_params(yaml.safe_load(params_text)))
        if SEED_KEY not in flat:
            log.warning("%s: params.yaml has no %s: left out", ref, SEED_KEY)
            continue
        seed = int(flat.pop(SEED_KEY))
        config = tuple(sorted(flat.items()))
        lock_text = _show(repo, ref, "dvc.lock") if per_image else None
        for model in MODEL_NAMES:
            text = _show(repo, ref, ModelFiles(model).metrics.as_posix())
            if text is None:
                continue
            data = json.loads(text)
            images = None
            if per_image:
                path = per_image_path(model)
                csv_text = read_output(repo, ref, path, lock_text)
                try:
                    images = report_stats.parse_per_image(csv_text, f"{ref}:{path}") \
                        if csv_text is not None else None
                except UserError as exc:
                    log.warning("%s", exc)
            scores.append(ExperimentScores(ref, seed, model, data["per_category"], data["mean"],
                                           config, images))
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
    """Per group of experiments (:func:`group_by_config`): Table 1 per metric, categories x
    models, cells ``mean +/- std`` beside the paper's values, then the paired comparison
    of the models on seed-averaged per-image scores; first a summary of the groups' means."""
    return spread_report(scores)[0]


def spread_report(scores: list[ExperimentScores]) -> tuple[str, dict[str, Any]]:
    """``(markdown, pairwise)``: :func:`spread_markdown`'s text and, per group label, the
    paired comparison as :func:`mr2unet.reporting.significance.pairwise_json` writes it."""
    groups = group_by_config(scores)
    n_runs = len({s.ref for s in scores})
    lines = [f"# Spread over {n_runs} experiments in {len(groups)} configuration(s)", ""]
    if len(groups) > 1:
        models = [m for m in MODEL_NAMES if any(s.model == m for s in scores)]
        lines += ["Mean test IOU over the categories, mean ± sample std over seeds:", "",
                  "| configuration | seeds | " + " | ".join(LABELS[m] for m in models) + " |",
                  "|---|---|" + "---|" * len(models)]
        for label, group in groups.items():
            table = spread(group, "iou")
            cells = [_cell(table.get(m, {}).get("mean")) for m in models]
            seeds = ", ".join(map(str, sorted({s.seed for s in group})))
            lines.append(f"| {label} | {seeds} | " + " | ".join(cells) + " |")
        lines.append("")
    pairwise: dict[str, Any] = {}
    for label, group in groups.items():
        lines += _group_markdown(label, group)
        text, data = _group_pairwise(group)
        lines += [f"### {report_stats.TITLE} (per-image scores averaged over seeds)", "",
                  text.strip(), ""]
        if data is not None:
            pairwise[label] = data
    return "\n".join(lines), pairwise


def _cell(value: tuple[float, float, int] | None) -> str:
    if not value or not value[2]:
        return "–"
    mean, std, _ = value
    return f"{mean:.4f} ± {std:.4f}"


def _table1(table: dict[str, dict[str, tuple[float, float, int]]], metric: str
            ) -> list[str]:
    """Markdown Table 1 over seeds: per model ``mean ± std``, the paper's value and
    mean − paper, laid out like the report's Table 1 (paper columns only when some
    category is the paper's; its Mean compared only for exactly its 15 categories)."""
    paper = paper_table()
    models = [m for m in MODEL_NAMES if m in table]
    categories = sorted({c for m in models for c in table[m] if c != "mean"})
    with_paper = any((m, c) in paper for m in models for c in categories)
    mean_comparable = set(categories) == paper_categories()
    header = ["category"]
    for m in models:
        header += [LABELS[m], "paper", "Δ"] if with_paper else [LABELS[m]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cat in [*categories, "mean"]:
        cells = []
        for m in models:
            value = table[m].get(cat)
            cells.append(_cell(value))
            if with_paper:
                ref = paper.get((m, cat)) if cat != "mean" or mean_comparable else None
                ours = value[0] if value and value[2] else None
                cells += [f"{ref[metric]:.4f}" if ref else "–",
                          f"{ours - ref[metric]:+.4f}" if ref and ours is not None else "–"]
        lines.append(f"| {cat} | " + " | ".join(cells) + " |")
    return lines


def _group_markdown(label: str, scores: list[ExperimentScores]) -> list[str]:
    seeds = sorted({s.seed for s in scores})
    title = f"## {label}: " if label else "## "
    lines = [f"{title}{len({s.ref for s in scores})} experiments "
             f"(seeds {', '.join(map(str, seeds))})", ""]
    for metric in ("iou", "dice"):
        lines += [f"### Table 1: {metric.upper() if metric == 'iou' else 'Dice'} "
                  "(mean ± sample std over seeds; paper: its single run; Δ = mean − paper)",
                  "", *_table1(spread(scores, metric), metric), ""]
    return lines


def seed_averaged(scores: list[ExperimentScores]
                  ) -> tuple[dict[str, PerImage], list[ExperimentScores], str]:
    """Per model the per-image scores averaged over the experiments of ``scores``.

    Only experiments whose per-image scores were found for every model of the group take
    part, so that each model is averaged over the same seeds. Returns ``(averaged,
    experiments used, note)``; ``averaged`` is empty, and ``note`` says why, when fewer than
    two models or no complete experiment remain or the test images differ.
    """
    models = [m for m in MODEL_NAMES if any(s.model == m for s in scores)]
    found: dict[str, dict[str, tuple[int, PerImage]]] = {}  # ref -> model -> (seed, scores)
    for s in scores:
        if s.per_image is not None:
            found.setdefault(s.ref, {})[s.model] = (s.seed, s.per_image)
    refs = sorted({s.ref for s in scores})
    complete = [r for r in refs if all(m in found.get(r, {}) for m in models)]
    missing = [r for r in refs if r not in complete]
    skipped = (f" Left out, per-image scores not found (`dvc pull`?): "
               f"{', '.join(_short(r) for r in missing)}." if missing else "")
    if len(models) < 2:
        return {}, [], "Fewer than two models: nothing to compare."
    if not complete:
        return {}, [], ("No experiment's per-image scores (data/eval/<model>.csv) were found "
                        "in the DVC cache: nothing to compare." + skipped)
    reference = found[complete[0]][models[0]][1]
    for ref in complete:
        for m in models:
            if not np.array_equal(found[ref][m][1].sources, reference.sources):
                return {}, [], (f"The test images of {_short(ref)} ({m}) differ from those "
                                f"of {_short(complete[0])}: no paired comparison.")
    averaged = {m: PerImage(reference.sources, reference.categories,
                            {k: np.mean([found[r][m][1].scores[k] for r in complete], axis=0)
                             for k in report_stats.METRICS})
                for m in models}
    seeds = sorted({found[r][models[0]][0] for r in complete})
    note = (f"Each model's per-image scores averaged over {len(complete)} experiment(s) "
            f"(seeds {', '.join(map(str, seeds))}), then compared as in the report." + skipped)
    return averaged, [s for s in scores if s.ref in complete], note


def _short(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _group_pairwise(scores: list[ExperimentScores]) -> tuple[str, dict[str, Any] | None]:
    """The markdown of the group's paired comparison and its JSON (None: not possible)."""
    averaged, used, note = seed_averaged(scores)
    if not averaged:
        return note + "\n", None
    comparisons = report_stats.pairwise(averaged)
    md = report_stats.section(comparisons, LABELS, intro=note)
    data = report_stats.pairwise_json(comparisons, averaged, extra={
        "seed_averaged": True, "seeds": sorted({s.seed for s in used}),
        "experiments": sorted({s.ref for s in used})})
    return md, data


def write_spread(repo: Path, out: Path) -> int:
    """Write the spread report of ``repo``'s experiments to ``out`` (markdown) and the
    paired comparisons to ``<out stem>_pairwise.json``; returns how many were found."""
    scores = collect(repo)
    if not scores:
        return 0
    text, pairwise = spread_report(scores)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    report_stats.write_json(pairwise_path(out), pairwise)
    return len({s.ref for s in scores})


def pairwise_path(out: Path) -> Path:
    """``reports/seed_spread.md`` -> ``reports/seed_spread_pairwise.json``."""
    return out.with_name(f"{out.stem}_pairwise.json")
