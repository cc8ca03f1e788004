"""The report: our Table 1 beside the paper's, the verdicts, training curves, sample grids.

:func:`~mr2unet.reporting.inputs.load_report` reads what `evaluate` and `train` wrote;
:func:`write_report` writes ``reports/``. The report only reads: the registry aliases are
set by the `promote` stage after it, from the same verdicts.

- ``report.md`` with its figures in ``figures/`` (SVG and PNG files) and ``report.html``
  (one self-contained page: SVG charts inline, base64 PNG grids), both rendered from one
  description of the sections (:func:`document`, :mod:`mr2unet.reporting.markup`);
- ``category_scores.csv`` (model, category, iou, dice) and, for ``dvc plots``, the same
  per model in ``category_scores/<model>.csv``;
- ``pairwise.json``: every pair of models compared on the same test images (mean
  difference, bootstrap CI, Wilcoxon and Holm p-values; :mod:`mr2unet.reporting.significance`).

Everything except the provenance's time stamp is a function of the inputs.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mr2unet.reporting import significance as report_stats
from mr2unet.reporting.figures import GRID_NOTE, charts, png_bytes, sample_grid
from mr2unet.reporting.inputs import LABELS, ReportInputs
from mr2unet.reporting.markup import (
    Block,
    Cell,
    Figure,
    Section,
    Table,
    Text,
    png_img,
    render_html,
    render_markdown,
)
from mr2unet.reporting.tables import (
    COST_NOTE,
    DETECTION_NOTE,
    RANKING_NOTE,
    TABLE1_NOTE,
    category_scores,
    cost_table,
    detection_table,
    ranking_table,
    summary_table,
    table1,
)
from mr2unet.reporting.verdicts import (
    LINE_NOTE,
    PROMOTION_NOTE,
    VERDICT_NOTE,
    baseline_table,
    line_table,
    promotion_table,
    verdict_lines,
    verdict_table,
)

TITLE = "MR2U-Net reproduction report"


@dataclass(frozen=True)
class Pictures:
    """The figures the report shows, already drawn: SVG charts by name, and per category
    the PNG sample grid and the test images of its rows."""

    svgs: dict[str, str]
    grids: dict[str, tuple[bytes, list[str]]]


def safe_name(name: str) -> str:
    """``name`` usable in a file name (categories may hold any character)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def draw(inputs: ReportInputs) -> Pictures:
    """The charts and one sample grid per category."""
    grids = {}
    for category in inputs.categories:
        grid, rows = sample_grid(inputs, category)
        grids[category] = (png_bytes(grid), [str(inputs.split.sources[i]) for i in rows])
    return Pictures(charts(inputs), grids)


def _noted(note: str, *tables: tuple[list[str], list[list[Any]]]) -> list[Block]:
    return [Text(note), *(Table(*t) for t in tables)]


def document(inputs: ReportInputs, pictures: Pictures,
             comparisons: list[report_stats.Comparison]) -> tuple[list[Block], list[Section]]:
    """The report once: its lead lines and sections, for Markdown and HTML alike."""
    lead: list[Block] = [Text(line, bold=True) for line in verdict_lines(inputs)]
    warnings = [Text(f"Warning: {n}", bold=True)
                for n in inputs.records.collapse_notes(LABELS).values()]
    roles = promotion_table(inputs)
    sections = [
        Section("For a line: parts rejected and passed", _noted(LINE_NOTE, line_table(inputs))),
        Section("Provenance", [Table(["", ""], [[Cell(k), Cell(str(v))]
                                                for k, v in inputs.provenance.items()])]),
        Section("Summary", [*warnings, Table(*summary_table(inputs))]),
        Section("Did it learn?", _noted(VERDICT_NOTE, verdict_table(inputs),
                                        baseline_table(inputs))),
        Section("Summary: model cost", _noted(COST_NOTE, cost_table(inputs))),
        Section("Table 1: IOU", _noted(TABLE1_NOTE, table1(inputs.metrics, "iou"))),
        Section("Table 1: Dice", [Table(*table1(inputs.metrics, "dice"))]),
        Section("Pixel AUROC and AP (threshold-free)",
                _noted(RANKING_NOTE, ranking_table(inputs))),
        Section("AUPRO and image-level detection",
                _noted(DETECTION_NOTE, detection_table(inputs))),
        Section(report_stats.TITLE, report_stats.section_blocks(comparisons, LABELS)),
        Section("Registry aliases (set by the promote stage)",
                _noted(PROMOTION_NOTE, roles) if roles[1] else
                [Text(PROMOTION_NOTE), Text("No network may hold an alias.")]),
        Section("Charts", [Figure(f"figures/{n}.svg", n, svg)
                           for n, svg in pictures.svgs.items() if svg]),
        Section("Test images (Fig. 4 style)", [Text(GRID_NOTE)]),
    ]
    for category, (png, sources) in pictures.grids.items():
        sections.append(Section(category, [Figure(
            f"figures/samples_{safe_name(category)}.png", category, png_img(png, category),
            "Rows: " + ", ".join(sources))], level=3))
    return lead, sections


def _write_csv(path: Path, header: list[str], rows: list[tuple[Any, ...]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_score_tables(metrics: dict[str, dict[str, Any]], out: Path) -> None:
    """``category_scores.csv`` (long format) and ``category_scores/<model>.csv``.

    The per-model files exist for ``dvc plots``: its bar template draws one panel per
    file, a bar per category, and the revisions side by side in ``dvc plots diff``.
    """
    rows = category_scores(metrics)
    _write_csv(out / "category_scores.csv", ["model", "category", "iou", "dice"], rows)
    for model in metrics:
        _write_csv(out / "category_scores" / f"{model}.csv", ["category", "iou", "dice"],
                   [row[1:] for row in rows if row[0] == model])


def write_figures(pictures: Pictures, folder: Path) -> None:
    """The charts (``<name>.svg``) and grids (``samples_<category>.png``) as files."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, svg in pictures.svgs.items():
        (folder / f"{name}.svg").write_text(svg)
    for category, (png, _) in pictures.grids.items():
        (folder / f"samples_{safe_name(category)}.png").write_bytes(png)


def write_report(inputs: ReportInputs, out: Path) -> None:
    """Write ``report.md`` (+ ``figures/``), ``report.html``, the score tables and
    ``pairwise.json``."""
    pictures = draw(inputs)
    write_figures(pictures, out / "figures")
    write_score_tables(inputs.metrics, out)
    comparisons = report_stats.pairwise(inputs.per_image)
    report_stats.write_json(out / "pairwise.json",
                            report_stats.pairwise_json(comparisons, inputs.per_image))
    lead, sections = document(inputs, pictures, comparisons)
    (out / "report.md").write_text(render_markdown(TITLE, lead, sections))
    (out / "report.html").write_text(render_html(TITLE, lead, sections))
