"""Stage `promote`: the registry aliases from the verdicts, and the champion's ONNX file.

Runs after `report` and decides nothing itself: the networks that may hold an alias are
those the verdicts allow (:meth:`mr2unet.evaluation.verdict.Records.alias_candidates`:
learned, not collapsed). The best by mean test IOU gets `tracking.champion_alias`, the
second `tracking.challenger_alias`, on its registered model and on `<prefix>best`; every
other holder loses them (with no candidate, every alias is removed, so a deployment never
picks up a network that did not learn). The champion's logged model gets `model.onnx`.

Writes data/promotion.json: who may hold an alias, who may not and why, what was set.
docs/pipeline.md, docs/deploy.md.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from _common import run_stage_cli

from mr2unet.config.provenance import read_run_info
from mr2unet.config.workspace import PREPARED, PROMOTION, ModelFiles
from mr2unet.data.prepared import load_split
from mr2unet.deploy.publish import attach_onnx
from mr2unet.evaluation.verdict import Records
from mr2unet.reporting.inputs import read_records
from mr2unet.tracking.registry import set_aliases
from mr2unet.tracking.sync import catch_up

log = logging.getLogger("promote")


def set_registry(records: Records, runs: dict[str, dict[str, Any]],
                 tracking: dict[str, Any]) -> tuple[list[Any], str | None]:
    """Aliases from the verdicts, then the champion's ONNX file: (assignments, its line)."""
    for uri in sorted({r["tracking_uri"] for r in runs.values() if r.get("tracking")}):
        catch_up(uri)  # fail fast; send what the train stages could not
    assignments = set_aliases(runs, records.alias_candidates(), tracking["registry_prefix"],
                              tracking["champion_alias"], tracking["challenger_alias"])
    onnx = attach_onnx(assignments, runs, tracking["champion_alias"],
                       {m: ModelFiles(m).checkpoint for m in records.metrics},
                       load_split(PREPARED.test).images)
    return assignments, onnx


def main(params: dict[str, Any]) -> None:
    records = read_records(params["train"]["models"])
    tracking = params["tracking"]
    runs = {m: read_run_info(ModelFiles(m).run_info) for m in records.metrics}
    for m, why in records.excluded().items():
        log.warning("%s may hold no registry alias: %s", m, why)
    assignments: list[Any] = []
    onnx = None
    tracked = tracking["enabled"] and any(r.get("tracking") for r in runs.values())
    if tracked:
        assignments, onnx = set_registry(records, runs, tracking)
    else:
        log.info("tracking off: registry aliases not set")
    record = {
        "tracking": tracked,
        "candidates": {m: round(v, 6) for m, v in records.alias_candidates().items()},
        "excluded": records.excluded(),
        "aliases": [{"alias": a.alias, "arch": a.arch, "registered_model": a.registered_model,
                     "version": a.version, "uri": a.uri} for a in assignments],
        "onnx": onnx,
    }
    PROMOTION.parent.mkdir(parents=True, exist_ok=True)
    PROMOTION.write_text(json.dumps(record, indent=2) + "\n")
    if onnx:
        print(onnx)
    for a in assignments:
        print(f"{a.uri} -> {a.arch} (version {a.version})")
    print(f"promote: {PROMOTION}")


if __name__ == "__main__":
    run_stage_cli(main, __doc__)
