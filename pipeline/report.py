"""Stage `report`: reports/report.{md,html}, the score tables and pairwise.json.

The report only reads: metrics/, metrics/evaluation/, metrics/history/, data/eval/ and
data/models/ (the model files' provenance). It says which network the verdicts allow to
hold a registry alias; the `promote` stage after it sets them. docs/evaluation.md.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from _common import run_stage_cli

from mr2unet.evaluation.verdict import rank_models
from mr2unet.reporting.inputs import LABELS, load_report
from mr2unet.reporting.report import write_report
from mr2unet.reporting.verdicts import verdict_lines

log = logging.getLogger("report")


def main(params: dict[str, Any]) -> None:
    inputs = load_report(params)
    collapsed = inputs.records.collapse_notes(LABELS)
    for note in collapsed.values():
        log.warning(note)
    for line in verdict_lines(inputs):
        log.warning(line)
    write_report(inputs, Path("reports"))
    mean_iou = inputs.records.rankable()  # a collapsed network is not ranked
    for place, m in enumerate(rank_models(mean_iou), 1):
        print(f"{place}. {LABELS[m]}: mean IOU {mean_iou[m]:.4f}, "
              f"Dice {inputs.metrics[m]['mean']['dice']:.4f}")
    for m in collapsed:
        print(f"not ranked (collapsed): {LABELS[m]}: mean IOU "
              f"{inputs.metrics[m]['mean']['iou']:.4f}")
    print("report: reports/report.html, reports/report.md")


if __name__ == "__main__":
    run_stage_cli(main, __doc__)
