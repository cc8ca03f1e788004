"""The report's "Are the differences significant?" section and ``reports/pairwise.json``.

Every pair of models is compared on the per-image scores `evaluate` wrote
(``data/eval/<model>.csv``: the same test images in the same order for every model) with
:mod:`mr2unet.evaluation.stats`: mean difference, paired bootstrap CI, Wilcoxon signed-rank p-value,
Holm-adjusted p-value, per metric (IOU, Dice), over all test images and per category.
``mr2unet spread`` renders the same section for seed-averaged per-image scores.

Pairs are ordered as the paper's models (U-Net, Residual U-Net, Attention U-Net,
MR2U-Net) and read "later vs earlier": MR2U-Net vs U-Net is MR2U-Net's score minus
U-Net's. Holm's family is the pairs of one metric over one scope (all images, or one
category). docs/evaluation.md explains every figure.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mr2unet.errors import UserError
from mr2unet.evaluation import stats
from mr2unet.models import MODEL_NAMES
from mr2unet.reporting.markup import Block, Bullets, Cell, Table, Text, render_markdown_blocks

TITLE = "Are the differences significant?"
METRICS = ("iou", "dice")
METRIC_LABELS = {"iou": "IOU", "dice": "Dice"}
ALL = "all"  # the scope of a comparison over every test image


# ------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class PerImage:
    """One model's per-image scores (``data/eval/<model>.csv``), in test-split order."""

    sources: np.ndarray  # str (N,)
    categories: np.ndarray  # str (N,)
    scores: dict[str, np.ndarray]  # "iou", "dice" -> float64 (N,)

    def __len__(self) -> int:
        return len(self.sources)


def parse_per_image(text: str, origin: str = "per-image scores") -> PerImage:
    """Parse the CSV `evaluate` writes (source, category, ..., iou, dice)."""
    rows = list(csv.DictReader(io.StringIO(text)))
    missing = {"source", "category", *METRICS} - set(rows[0] if rows else {})
    if not rows or missing:
        raise UserError(f"{origin}: no rows or missing columns {sorted(missing)}: "
                        "run `dvc repro evaluate` again.")
    try:
        scores = {m: np.array([float(r[m]) for r in rows], np.float64) for m in METRICS}
    except ValueError as exc:
        raise UserError(f"{origin}: {exc}") from exc
    return PerImage(np.array([r["source"] for r in rows]),
                    np.array([r["category"] for r in rows]), scores)


def read_per_image(path: Path, stage: str = "evaluate") -> PerImage:
    if not path.is_file():
        raise UserError(f"{path} not found: run `dvc repro {stage}` first.")
    return parse_per_image(path.read_text(), str(path))


def check_aligned(per_image: Mapping[str, PerImage], sources: np.ndarray | None = None,
                  what: str = "the test split") -> None:
    """Every model's rows must be the same images in the same order (``sources``)."""
    reference = sources
    for model, scores in per_image.items():
        if reference is None:
            reference = scores.sources
        if len(scores.sources) != len(reference) or \
                not np.array_equal(scores.sources, reference):
            raise UserError(f"the per-image scores of {model} are not those of {what}: "
                            f"run `dvc repro evaluate@{model}` again.")


# ------------------------------------------------------------------------- comparisons


@dataclass(frozen=True)
class Comparison:
    """``first`` vs ``second`` on ``metric`` over ``scope`` (``"all"`` or a category)."""

    first: str
    second: str
    metric: str
    scope: str
    result: stats.PairedResult

    def as_dict(self) -> dict[str, Any]:
        return {"first": self.first, "second": self.second, "metric": self.metric,
                "scope": self.scope, **self.result.as_dict()}


def model_pairs(models: Sequence[str]) -> list[tuple[str, str]]:
    """``(later, earlier)`` pairs in the paper's model order: 6 pairs for 4 models."""
    ordered = [m for m in MODEL_NAMES if m in models] + \
        sorted(m for m in models if m not in MODEL_NAMES)
    return [(ordered[j], ordered[i]) for j in range(len(ordered)) for i in range(j)]


def pairwise(per_image: Mapping[str, PerImage], seed: int = stats.SEED,
             n_resamples: int = stats.N_RESAMPLES) -> list[Comparison]:
    """Every pair, metric and scope (all images, then each category in sorted order);
    Holm-adjusted over the pairs of each (metric, scope)."""
    check_aligned(per_image, what="the other models")
    pairs = model_pairs(list(per_image))
    if not pairs:
        return []
    categories = next(iter(per_image.values())).categories
    scopes = [ALL, *sorted(set(categories.tolist()))]
    out: list[Comparison] = []
    for metric in METRICS:
        for scope in scopes:
            sel = np.ones(len(categories), bool) if scope == ALL else categories == scope
            family = [stats.compare(per_image[a].scores[metric][sel],
                                    per_image[b].scores[metric][sel], seed, n_resamples)
                      for a, b in pairs]
            out += [Comparison(a, b, metric, scope, r)
                    for (a, b), r in zip(pairs, stats.adjust(family), strict=True)]
    return out


def pairwise_json(comparisons: Sequence[Comparison], per_image: Mapping[str, PerImage],
                  extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What ``pairwise.json`` holds: the settings and one record per comparison."""
    first = next(iter(per_image.values()), None)
    categories = sorted(set(first.categories.tolist())) if first is not None else []
    return {
        **(extra or {}),
        "models": list(per_image),
        "images": len(first) if first is not None else 0,
        "images_per_category": {c: int((first.categories == c).sum()) for c in categories}
        if first is not None else {},
        "difference": "first minus second, per test image",
        "bootstrap": {"statistic": "mean difference", "method": stats.CI_METHOD,
                      "fallback": "percentile", "confidence": stats.CONFIDENCE,
                      "n_resamples": stats.N_RESAMPLES, "seed": stats.SEED},
        "wilcoxon": {"alternative": "two-sided", "zero_method": stats.ZERO_METHOD,
                     "method": "auto"},
        "multiple_comparisons": "holm over the pairs of each (metric, scope)",
        "alpha": stats.ALPHA,
        "significant": "p_holm < alpha",
        "comparisons": [c.as_dict() for c in comparisons],
    }


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


# ---------------------------------------------------------------------------- wording


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def _p(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _level() -> str:
    return f"{stats.CONFIDENCE * 100:g} %"


def _ci(r: stats.PairedResult) -> str:
    return "n/a" if r.ci_low is None else f"[{_num(r.ci_low)}, {_num(r.ci_high)}]"


def verdict(r: stats.PairedResult, alpha: float = stats.ALPHA) -> str:
    significant = r.significant(alpha)
    if significant is None:
        return "not tested" if r.n else "no images"
    return f"significant at {alpha:g}" if significant else f"not significant at {alpha:g}"


def sentence(c: Comparison, labels: Mapping[str, str], alpha: float = stats.ALPHA) -> str:
    """E.g. ``MR2U-Net vs U-Net: +0.031 IOU, 95 % CI [-0.004, +0.066], Wilcoxon p = 0.081
    (Holm 0.243), not significant at 0.05; better on 15, worse on 10, tied on 3 of 28
    images.``"""
    r = c.result
    head = f"{labels.get(c.first, c.first)} vs {labels.get(c.second, c.second)}"
    if r.n == 0:
        return f"{head}: no images."
    text = (f"{head}: {_num(r.mean_diff)} {METRIC_LABELS[c.metric]}, "
            f"{_level()} CI {_ci(r)}")
    if r.p_value is None:
        text += f", identical scores on all {r.n} images: nothing to test."
        return text
    p = _p(r.p_value)
    text += f", Wilcoxon p < {p[1:]}" if p.startswith("<") else f", Wilcoxon p = {p}"
    if r.p_holm is not None and r.p_holm != r.p_value:
        text += f" (Holm {_p(r.p_holm)})"
    return (text + f", {verdict(r, alpha)}; better on {r.better}, worse on {r.worse}, "
            f"tied on {r.tied} of {r.n} images.")


def overall_table(comparisons: Sequence[Comparison], labels: Mapping[str, str]
                  ) -> tuple[list[str], list[list[Cell]]]:
    """One row per pair and metric over all test images."""
    header = ["pair", "metric", "images", "mean Δ", f"{_level()} CI", "better / worse / tied",
              "Wilcoxon p", "Holm p", "significant"]
    rows = []
    for c in comparisons:
        if c.scope != ALL:
            continue
        r = c.result
        sig = r.significant()
        rows.append([Cell(f"{labels.get(c.first, c.first)} vs "
                          f"{labels.get(c.second, c.second)}"),
                     Cell(METRIC_LABELS[c.metric]), Cell(str(r.n)), Cell(_num(r.mean_diff)),
                     Cell(_ci(r)), Cell(f"{r.better} / {r.worse} / {r.tied}"),
                     Cell(_p(r.p_value)), Cell(_p(r.p_holm)),
                     Cell("n/a" if sig is None else "yes" if sig else "no", bool(sig))])
    return header, rows


def category_table(comparisons: Sequence[Comparison], metric: str, labels: Mapping[str, str]
                   ) -> tuple[list[str], list[list[Cell]]]:
    """Rows: categories; columns: pairs; cells ``Δ [CI] p`` (Holm within the category),
    bold when significant."""
    chosen = [c for c in comparisons if c.metric == metric and c.scope != ALL]
    pairs = list(dict.fromkeys((c.first, c.second) for c in chosen))
    scopes = list(dict.fromkeys(c.scope for c in chosen))
    by_key = {(c.scope, c.first, c.second): c.result for c in chosen}
    header = ["category", "images", *(f"{labels.get(a, a)} vs {labels.get(b, b)}"
                                      for a, b in pairs)]
    rows = []
    for scope in scopes:
        results = [by_key[(scope, a, b)] for a, b in pairs]
        cells = [Cell(f"{_num(r.mean_diff)} {_ci(r)} p {_p(r.p_decisive)}",
                      bool(r.significant())) for r in results]
        rows.append([Cell(scope), Cell(str(results[0].n)), *cells])
    return header, rows


def note(n_pairs: int, alpha: float = stats.ALPHA) -> str:
    return (
        "Per-image differences on the same test images, first model minus second. "
        f"{_level()} CI: paired bootstrap of the mean difference ({stats.CI_METHOD}, "
        f"{stats.N_RESAMPLES} resamples of the images, seed {stats.SEED}). Wilcoxon p: "
        "two-sided signed-rank test (images on which both score the same are left out). "
        f"Holm p: adjusted for the {n_pairs} pair{'s' if n_pairs != 1 else ''} of the "
        f"metric (per category: of that category); significant = Holm p < {alpha:g}. "
        "better / worse / tied: images on which the first model scores higher / lower / the "
        f"same. Per category the cells read mean Δ [{_level()} CI] p (Holm), bold when "
        "significant; with few images per category they are exploratory.")


def section_blocks(comparisons: Sequence[Comparison], labels: Mapping[str, str],
                   intro: str = "") -> list[Block]:
    """The significance section as blocks (:mod:`mr2unet.reporting.markup` documents)."""
    if not comparisons:
        return [Text("Fewer than two models: nothing to compare.")]
    n_pairs = len({(c.first, c.second) for c in comparisons})
    blocks: list[Block] = [Text((intro + " " if intro else "") + note(n_pairs)),
                           Table(*overall_table(comparisons, labels))]
    for metric in METRICS:
        blocks += [Text(f"{METRIC_LABELS[metric]}, all test images:", bold=True),
                   Bullets([sentence(c, labels) for c in comparisons
                            if c.scope == ALL and c.metric == metric])]
    for metric in METRICS:
        table = category_table(comparisons, metric, labels)
        if table[1]:
            blocks += [Text(f"{METRIC_LABELS[metric]} per category:", bold=True),
                       Table(*table)]
    return blocks


def section(comparisons: Sequence[Comparison], labels: Mapping[str, str],
            intro: str = "") -> str:
    """The significance section's Markdown (without a title)."""
    return render_markdown_blocks(section_blocks(comparisons, labels, intro))
