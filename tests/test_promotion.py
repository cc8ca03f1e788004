"""Who may hold a registry alias (issue #34): one pure rule over the evaluation records
(``mr2unet.evaluation.verdict.Records``), which the report shows and the promote stage
acts on; the promote stage's record ``data/promotion.json`` with tracking off."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import stage_module

from mr2unet.config.workspace import PROMOTION, ModelFiles
from mr2unet.evaluation.verdict import Records, collapse_sentence, rank_models

LEARNED = {"verdict": "learned"}


def record(verdict: dict[str, Any] | None, collapsed: bool = False) -> dict[str, Any]:
    """An evaluation record (``metrics/evaluation/<model>.json``) with what the rule reads."""
    found: dict[str, Any] = {"collapsed": collapsed, "missed_images": 5 if collapsed else 0,
                             "defective_images": 6}
    if verdict is not None:
        found["verdict"] = verdict
    return found


def records(**models: tuple[float, dict[str, Any], list[dict[str, float]]]) -> Records:
    return Records({m: {"mean": {"iou": iou, "dice": iou}} for m, (iou, _, _) in models.items()},
                   {m: found for m, (_, found, _) in models.items()},
                   {m: history for m, (_, _, history) in models.items()})


TRAINED_COLLAPSED = [{"epoch": 1.0, "collapsed": 0.0}, {"epoch": 2.0, "collapsed": 1.0}]


def test_only_learned_networks_that_did_not_collapse_may_hold_an_alias() -> None:
    found = records(unet=(0.6, record(LEARNED), []),
                    resunet=(0.7, record(LEARNED), [{"epoch": 1.0, "collapsed": 0.0}]),
                    attention_unet=(0.8, record({"verdict": "weak"}), []),
                    mr2unet=(0.9, record(LEARNED, collapsed=True), []))
    assert found.rankable() == {"unet": 0.6, "resunet": 0.7, "attention_unet": 0.8}
    assert found.alias_candidates() == {"unet": 0.6, "resunet": 0.7}
    assert found.roles() == {"champion": "resunet", "challenger": "unet"}
    assert found.roles(("gold",)) == {"gold": "resunet"}
    assert found.excluded() == {"attention_unet": "weak", "mr2unet": "collapsed"}
    notes = found.collapse_notes({"mr2unet": "MR2U-Net"})
    assert list(notes) == ["mr2unet"] and notes["mr2unet"].startswith(
        "MR2U-Net predicts no defect on 5 of 6 defective test images")


def test_a_training_collapse_or_a_missing_verdict_keeps_a_network_out() -> None:
    found = records(unet=(0.9, record(LEARNED), TRAINED_COLLAPSED),
                    resunet=(0.8, record(None), []),
                    mr2unet=(0.3, record(LEARNED), []))
    assert found.excluded() == {"unet": "collapsed", "resunet": "no verdict"}
    assert found.roles() == {"champion": "mr2unet"}  # one candidate: no challenger
    assert collapse_sentence("U-Net", {}, TRAINED_COLLAPSED).startswith(
        "U-Net collapsed during training")
    assert collapse_sentence("U-Net", {}, []) is None


def test_none_learned_means_no_alias_and_ties_go_by_name() -> None:
    none = records(unet=(0.9, record({"verdict": "not learned"}), []))
    assert none.alias_candidates() == {} and none.roles() == {}
    assert none.excluded() == {"unet": "not learned"}
    tie = records(unet=(0.5, record(LEARNED), []), mr2unet=(0.5, record(LEARNED), []))
    assert tie.roles() == {"champion": "mr2unet", "challenger": "unet"}
    assert rank_models({"unet": 0.5, "resunet": 0.5, "mr2unet": 0.7}) == [
        "mr2unet", "resunet", "unet"]


def write_records(root: Path, models: dict[str, tuple[float, dict[str, Any]]]) -> None:
    """The files evaluate and train leave, as far as the promote stage reads them."""
    for arch, (iou, found) in models.items():
        files = ModelFiles(arch, root)
        for path in (files.metrics, files.evaluation, files.history):
            path.parent.mkdir(parents=True, exist_ok=True)
        files.metrics.write_text(json.dumps({"mean": {"iou": iou, "dice": iou},
                                             "per_category": {}}))
        files.evaluation.write_text(json.dumps(found))
        files.history.write_text("epoch,loss,collapsed\n1,0.5,0\n")
        files.run_info.parent.mkdir(parents=True, exist_ok=True)
        files.run_info.write_text(json.dumps({"tracking": False}))


def test_the_promote_stage_records_its_decision_with_tracking_off(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    promote = stage_module("promote", monkeypatch)
    monkeypatch.chdir(tmp_path)
    write_records(tmp_path, {"unet": (0.4, record(LEARNED)),
                             "mr2unet": (0.6, record({"verdict": "not learned"}))})
    tracking = {"enabled": True, "registry_prefix": "mr2unet-", "champion_alias": "champion",
                "challenger_alias": "challenger"}
    promote.main({"train": {"models": ["unet", "mr2unet"]}, "tracking": tracking})
    # no run was tracked (tracking off at training): nothing to set, the decision recorded
    assert json.loads((tmp_path / PROMOTION).read_text()) == {
        "tracking": False, "candidates": {"unet": 0.4}, "excluded": {"mr2unet": "not learned"},
        "aliases": [], "onnx": None}
