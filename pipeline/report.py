"""Stage `report`: registry aliases (champion, challenger) and reports/report.{md,html}.

Reads metrics/, metrics/pooled/, metrics/history/, data/eval/ and data/models/; writes
reports/ (report.html, report.md + figures/, category_scores.csv).  docs/evaluation.md.
"""

from __future__ import annotations

from typing import Any

from _common import run_stage_cli

from mr2unet.registry import rank_models
from mr2unet.report import LABELS, run_report


def main(params: dict[str, Any]) -> None:
    inputs = run_report(params)
    ranked = rank_models({m: inputs.metrics[m]["mean"]["iou"] for m in inputs.models})
    for place, m in enumerate(ranked, 1):
        print(f"{place}. {LABELS[m]}: mean IOU {inputs.metrics[m]['mean']['iou']:.4f}, "
              f"Dice {inputs.metrics[m]['mean']['dice']:.4f}")
    for assignment in inputs.registry:
        print(f"{assignment.uri} -> {assignment.arch} (version {assignment.version})")
    print("report: reports/report.html, reports/report.md")


if __name__ == "__main__":
    run_stage_cli(main, __doc__)
