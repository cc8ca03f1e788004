"""``prepare.tile_predict: auto`` (mr2unet.evaluation.validation): the train stage predicts
the validation split by blocks and by windows and keeps blocks unless windows score more
than 0.01 IOU higher; the threshold stored is the one chosen for the way kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, stage_module
from torch import nn

from mr2unet.config.params import BLOCKS, WINDOWS, load_params
from mr2unet.config.workspace import PREPARED
from mr2unet.data.prepared import PreparedSplit
from mr2unet.evaluation.threshold import FIXED, ThresholdRule, parse_rule
from mr2unet.evaluation.validation import WAY_TOLERANCE, choose_way, decide
from mr2unet.models.tiling import Tiling, default_stride

CPU = torch.device("cpu")
TILE = 32


class RedIsDefect(nn.Module):
    """Logits saying "defect" where the red channel is bright; with ``fails_whole``, an
    input larger than a tile (a block, not a window) comes out defect everywhere, as a
    network whose deep features learned the crops' borders can."""

    def __init__(self, fails_whole: bool) -> None:
        super().__init__()
        self.fails_whole = fails_whole

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        defect = 8.0 * (x[:, :1] - 0.5)
        if self.fails_whole and x.shape[-1] > TILE:
            defect = torch.full_like(defect, 4.0)
        return torch.cat([-defect, defect], dim=1)


def red_lines(n: int = 4, size: int = 96) -> PreparedSplit:
    """Dark images with one bright red line each, the line as the mask."""
    images = np.zeros((n, size, size, 3), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        row = 10 + 17 * i
        images[i, row:row + 3, 5:90, 0] = 255
        masks[i, row:row + 3, 5:90] = 1
    return PreparedSplit(images, masks, np.array(["crack"] * n), np.array(["line"] * n),
                         np.array([f"{i}.png" for i in range(n)]))


def test_choose_way_keeps_blocks_unless_windows_are_clearly_better() -> None:
    assert choose_way({BLOCKS: 0.70, WINDOWS: 0.70 + WAY_TOLERANCE / 2})[0] == BLOCKS
    assert choose_way({BLOCKS: 0.70, WINDOWS: 0.65})[0] == BLOCKS
    way, reason = choose_way({BLOCKS: 0.47, WINDOWS: 0.70})
    assert way == WINDOWS and "0.4700 by blocks, 0.7000 by windows" in reason


@pytest.mark.parametrize("fails_whole, expected", [(False, BLOCKS), (True, WINDOWS)])
def test_auto_keeps_the_way_the_validation_split_scores_better(fails_whole: bool,
                                                               expected: str) -> None:
    val = red_lines()
    tiling = Tiling(TILE, TILE // 2, None, BLOCKS)
    meta = decide(RedIsDefect(fails_whole), val, np.zeros(len(val), bool),
                  parse_rule("best_iou"), CPU, tiling, "auto")
    choice = meta["tile_predict_choice"]
    assert Tiling.from_dict(meta["tiling"]).predict == choice["predict"] == expected, choice
    ious = choice["val_mean_iou"]
    assert ious[WINDOWS] == pytest.approx(1.0)
    assert ious[BLOCKS] == (pytest.approx(1.0) if not fails_whole else pytest.approx(0.0, abs=0.1))
    # the stored threshold is the one chosen for the way kept
    assert meta["threshold"]["val_mean_iou"] == pytest.approx(ious[expected], abs=1e-6)
    assert Tiling.from_dict(meta["tiling"]) == Tiling(TILE, TILE // 2, None, expected)


def test_auto_without_validation_images_predicts_by_blocks_and_says_why() -> None:
    tiling = Tiling(TILE, TILE // 2, None, BLOCKS)
    meta = decide(RedIsDefect(True), None, None, ThresholdRule(FIXED, 0.5), CPU, tiling,
                  "auto")
    assert Tiling.from_dict(meta["tiling"]).predict == BLOCKS
    assert "split.val_fraction" in meta["tile_predict_choice"]["reason"]
    assert "threshold" not in meta  # 0.5 without a validation split: as before


def test_a_set_way_and_a_resized_model_write_what_they_wrote_before() -> None:
    val = red_lines()
    windows = Tiling(TILE, TILE // 2, None, WINDOWS)
    meta = decide(RedIsDefect(True), val, None, parse_rule(0.5), CPU, windows, WINDOWS)
    assert list(meta) == ["tiling", "threshold"] and meta["tiling"] == windows.as_dict()
    assert meta["threshold"]["value"] == 0.5
    assert decide(RedIsDefect(False), None, None, parse_rule(0.5), CPU, None, BLOCKS) == {}


def test_the_train_stage_stores_the_way_the_validation_split_chose(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pipeline/train.py's validation_meta reads prepare.tile_predict: auto and the
    validation split from data/prepared, and returns what the model file stores."""
    params = load_params(REPO / "params.yaml")
    params["prepare"].update(mode="tiles", image_size=TILE, tile_predict="auto")
    params["evaluate"]["threshold"] = "best_iou"
    monkeypatch.chdir(tmp_path)  # the stage's paths are relative to the project
    red_lines().save(PREPARED.val)
    train_stage = stage_module("train", monkeypatch)
    for fails_whole, expected in ((True, WINDOWS), (False, BLOCKS)):
        meta = train_stage.validation_meta(params, RedIsDefect(fails_whole), "cpu")
        assert Tiling.from_dict(meta["tiling"]) == Tiling(TILE, default_stride(TILE), None,
                                                            expected)
        assert meta["tile_predict_choice"]["predict"] == expected
        assert meta["threshold"]["rule"] == "best_iou"
    params["prepare"]["tile_predict"] = WINDOWS  # a set way is kept, nothing compared
    meta = train_stage.validation_meta(params, RedIsDefect(False), "cpu")
    assert Tiling.from_dict(meta["tiling"]).predict == WINDOWS
    assert "tile_predict_choice" not in meta
    # what the stage logs and tags from it (a windows tiling's record has no "predict")
    params["prepare"]["tile_predict"] = "auto"
    meta = train_stage.validation_meta(params, RedIsDefect(True), "cpu")
    threshold, tags, note = train_stage.decided(meta)
    assert tags["tile_predict"] == WINDOWS and tags["threshold"] == f"{threshold:g}"
    assert tags["threshold_rule"] == "best_iou"
    assert "predicts by windows (validation IOU" in note and "4 validation images" in note
