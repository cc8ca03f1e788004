"""Stage `report`: registry aliases (champion, challenger) and reports/report.{md,html}.

Only a network whose verdict is `learned` gets an alias; when none has learned, the old
aliases are removed and the report says so at the top.

Reads metrics/, metrics/pooled/, metrics/history/, data/eval/ and data/models/; writes
reports/ (report.html, report.md + figures/, category_scores.csv).  docs/evaluation.md.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from _common import run_stage_cli

from mr2unet.config.provenance import read_run_info
from mr2unet.evaluation.evaluate import ModelFiles
from mr2unet.reporting.report import (
    LABELS,
    alias_candidates,
    collapsed_models,
    load_report,
    rankable_iou,
    verdict_lines,
    write_report,
)

log = logging.getLogger("report")


def main(params: dict[str, Any]) -> None:
    inputs = load_report(params)
    tracking = params["tracking"]
    runs = {m: read_run_info(ModelFiles(m).run_info) for m in inputs.models}
    # A collapsed network (mr2unet.training.collapse) is neither ranked nor given an alias.
    mean_iou = rankable_iou(inputs)
    collapsed = collapsed_models(inputs)
    for note in collapsed.values():
        log.warning(note)
    # Only a learned network (mr2unet.evaluation.verdict) is given an alias; with none, the
    # old aliases are removed, so a deployment reading @champion does not pick up a dud.
    eligible = alias_candidates(inputs)
    for line in verdict_lines(inputs):
        log.warning(line)
    if tracking["enabled"] and any(r.get("tracking") for r in runs.values()):
        from mr2unet.deploy.publish import attach_onnx
        from mr2unet.tracking.registry import set_aliases
        from mr2unet.tracking.sync import catch_up

        for uri in sorted({r["tracking_uri"] for r in runs.values() if r.get("tracking")}):
            catch_up(uri)  # fail fast; send what the train stages could not
        inputs.registry = set_aliases(runs, eligible, tracking["registry_prefix"],
                                      tracking["champion_alias"], tracking["challenger_alias"])
        # The champion's logged model carries model.onnx (docs/deploy.md)
        onnx_note = attach_onnx(inputs.registry, runs, tracking["champion_alias"],
                                {m: ModelFiles(m).checkpoint for m in inputs.models},
                                inputs.split.images)
        if onnx_note:
            print(onnx_note)
    else:
        log.info("tracking off: registry aliases not set")
    write_report(inputs, Path("reports"))
    for place, m in enumerate(sorted(mean_iou, key=lambda m: (-mean_iou[m], m)), 1):
        print(f"{place}. {LABELS[m]}: mean IOU {mean_iou[m]:.4f}, "
              f"Dice {inputs.metrics[m]['mean']['dice']:.4f}")
    for m in collapsed:
        print(f"not ranked (collapsed): {LABELS[m]}: mean IOU "
              f"{inputs.metrics[m]['mean']['iou']:.4f}")
    for assignment in inputs.registry:
        print(f"{assignment.uri} -> {assignment.arch} (version {assignment.version})")
    print("report: reports/report.html, reports/report.md")


if __name__ == "__main__":
    run_stage_cli(main, __doc__)
