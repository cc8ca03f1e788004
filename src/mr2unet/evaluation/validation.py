"""What the train stage decides on the validation split, after training.

- The mask threshold: ``evaluate.threshold`` (a fixed probability or a rule,
  :mod:`mr2unet.evaluation.threshold`), chosen on the validation images predicted as
  evaluate will predict them.
- How a tiles model predicts a whole image, with ``prepare.tile_predict: auto``: the
  validation images are predicted both by ``blocks`` (the padded image, about one pass,
  several times faster) and by ``windows`` (crops overlapping by a quarter, the size the
  network was trained on), the threshold rule chooses a threshold for each, and **blocks
  are kept unless windows' validation IOU is higher by more than** :data:`WAY_TOLERANCE`
  (0.01: the issue's "as accurate"). Without defective validation images there is nothing
  to compare: blocks, logged. Why this is needed: a network trained on small crops sees,
  at its deepest levels, almost nothing but the crops' zero-padded borders; on a whole
  image it sees interiors. Most networks do not care; MR2U-Net on DeepCrack's cracks,
  once, did (IOU 0.45 whole and 0.47 by blocks against 0.70 by windows,
  docs/performance.md).

:func:`decide` returns both as the model file's meta data; it is the one function the
train stage (``pipeline/train.py``) and ``benchmarks/user_data_recipe.py`` call.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from mr2unet.config.params import AUTO, BLOCKS, WINDOWS
from mr2unet.data.prepared import PreparedSplit
from mr2unet.evaluation import threshold as thresholds
from mr2unet.evaluation.inference import predict_maps
from mr2unet.models.inference import DEFAULT_THRESHOLD
from mr2unet.models.tiling import Tiling

log = logging.getLogger(__name__)
# windows replace blocks only when their validation IOU is higher by more than this
WAY_TOLERANCE = 0.01


def choose_way(val_iou: dict[str, float], tolerance: float = WAY_TOLERANCE
               ) -> tuple[str, str]:
    """(``blocks`` or ``windows``, why) from each way's validation mean IOU at its own
    threshold: blocks unless windows score more than ``tolerance`` higher."""
    gain = val_iou[WINDOWS] - val_iou[BLOCKS]
    way = WINDOWS if gain > tolerance else BLOCKS
    return way, (f"validation IOU {val_iou[BLOCKS]:.4f} by blocks, {val_iou[WINDOWS]:.4f} by "
                 f"windows: {way} ({'more' if way == WINDOWS else 'no more'} than "
                 f"{tolerance:g} better by windows)")


def decide(model: nn.Module, val: PreparedSplit | None, good: np.ndarray | None,
           rule: thresholds.ThresholdRule, device: torch.device, tiling: Tiling | None,
           predict: str | None = None, batch_size: int = 32, min_area: int = 1
           ) -> dict[str, Any]:
    """The model file's ``{"tiling": ..., "tile_predict_choice": ..., "threshold": ...}``.

    ``tiling`` is the tiles model's (None: a resized model), ``predict`` the
    ``prepare.tile_predict`` setting (``auto`` chooses, anything else is kept). ``val``
    (None or empty: no validation split) with ``good`` marking its defect-free images.
    Keys are left out where they would say nothing new: no ``tiling`` for a resized
    model, no ``threshold`` for the default 0.5 without a validation split (the model
    file as before either option).
    """
    if tiling is not None and predict == AUTO:
        return _choose_tile_predict(model, val, good, rule, device, tiling, batch_size,
                                    min_area)
    meta: dict[str, Any] = {} if tiling is None else {"tiling": tiling.as_dict()}
    if val is None or len(val) == 0:
        if rule == thresholds.ThresholdRule(thresholds.FIXED, DEFAULT_THRESHOLD):
            return meta
        empty = np.zeros((0, 1, 1), np.uint8)  # choose() says what the rule needs
        return {**meta, "threshold": thresholds.choose(
            rule, empty.astype(np.float32), empty, np.zeros(0, str), np.zeros(0, bool))}
    return {**meta, "threshold": _threshold(model, val, good, rule, device, tiling,
                                            batch_size, min_area)}


def _threshold(model: nn.Module, val: PreparedSplit, good: np.ndarray | None,
               rule: thresholds.ThresholdRule, device: torch.device, tiling: Tiling | None,
               batch_size: int, min_area: int) -> dict[str, Any]:
    _, probs = predict_maps(model, val.images, device, batch_size, progress=False,
                            tiling=tiling, masks=val.masks)
    # IOU of an image with nothing to find and nothing found: 1 (not evaluate.empty_score,
    # which re-scores without retraining); a false alarm as the test counts it
    return thresholds.choose(rule, probs, val.masks, val.categories, good, empty_score=1.0,
                             min_area=min_area)


def _choose_tile_predict(model: nn.Module, val: PreparedSplit | None,
                         good: np.ndarray | None, rule: thresholds.ThresholdRule,
                         device: torch.device, tiling: Tiling, batch_size: int,
                         min_area: int) -> dict[str, Any]:
    defective = 0 if val is None else int(len(val) - (0 if good is None else good.sum()))
    if val is None or defective == 0:
        reason = ("no defective validation images to compare blocks and windows on: blocks "
                  "(set split.val_fraction, e.g. 0.2, to let the data decide)")
        log.info("prepare.tile_predict auto: %s", reason)
        meta = decide(model, val, good, rule, device, replace(tiling, predict=BLOCKS),
                      BLOCKS, batch_size, min_area)
        return {**meta, "tile_predict_choice": {"rule": AUTO, "predict": BLOCKS,
                                                "reason": reason}}
    chosen = {way: _threshold(model, val, good, rule, device, replace(tiling, predict=way),
                              batch_size, min_area) for way in (BLOCKS, WINDOWS)}
    val_iou = {way: float(record["val_mean_iou"]) for way, record in chosen.items()}
    way, reason = choose_way(val_iou)
    log.info("prepare.tile_predict auto: %s", reason)
    return {"tiling": replace(tiling, predict=way).as_dict(), "threshold": chosen[way],
            "tile_predict_choice": {"rule": AUTO, "predict": way, "reason": reason,
                                    "val_mean_iou": {k: round(v, 6)
                                                     for k, v in val_iou.items()}}}
