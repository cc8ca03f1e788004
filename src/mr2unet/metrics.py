"""Segmentation metrics of the defect class (paper eq. 4-5), as pure functions.

``IOU = TP / (TP + FP + FN)`` and ``Dice = 2 TP / (2 TP + FP + FN)``.

An image whose ground truth and prediction are both empty has TP + FP + FN = 0;
its score is ``empty_score`` (1.0 by default: nothing to find, nothing found).
With ``prepare.keep_thin_defects`` on, every prepared defect mask is non-empty, so
this only matters for users who turn that off.
"""

from __future__ import annotations

import numpy as np
import torch

# Mask value of pixels that are not part of the image (padding added by
# ``prepare.resize: pad``): excluded from the loss and from every metric.
IGNORE_LABEL = 255


def confusion_counts(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image (TP, FP, FN) of binary masks ``(N, H, W)`` -> int64 ``(N, 3)``."""
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    p = pred.reshape(pred.shape[0], -1).bool()
    t = target.reshape(target.shape[0], -1).bool()
    tp = (p & t).sum(1)
    fp = (p & ~t).sum(1)
    fn = (~p & t).sum(1)
    return torch.stack([tp, fp, fn], dim=1).long()


def scores_from_counts(
    counts: torch.Tensor, empty_score: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (IOU, Dice) of ``(..., 3)`` TP/FP/FN counts, as float64 tensors.

    Works on any device without a host sync, so the training loop can call it per step.
    """
    tp, fp, fn = counts.double().unbind(-1)
    union = tp + fp + fn
    iou = torch.where(union > 0, tp / union.clamp(min=1), empty_score)
    dice = torch.where(union > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), empty_score)
    return iou, dice


def iou_from_counts(counts: np.ndarray, empty_score: float = 1.0) -> np.ndarray:
    """IOU per row of ``(..., 3)`` TP/FP/FN counts."""
    return scores_from_counts(torch.as_tensor(np.asarray(counts)), empty_score)[0].numpy()


def dice_from_counts(counts: np.ndarray, empty_score: float = 1.0) -> np.ndarray:
    """Dice per row of ``(..., 3)`` TP/FP/FN counts."""
    return scores_from_counts(torch.as_tensor(np.asarray(counts)), empty_score)[1].numpy()


def mean_scores(counts: np.ndarray, empty_score: float = 1.0) -> dict[str, float]:
    """Mean over images of the per-image IOU and Dice (the primary score)."""
    counts = np.asarray(counts).reshape(-1, 3)
    if len(counts) == 0:
        return {"iou": float("nan"), "dice": float("nan")}
    return {
        "iou": float(iou_from_counts(counts, empty_score).mean()),
        "dice": float(dice_from_counts(counts, empty_score).mean()),
    }


def pooled_scores(counts: np.ndarray, empty_score: float = 1.0) -> dict[str, float]:
    """IOU and Dice of TP/FP/FN summed over all images (pixel-pooled)."""
    total = np.asarray(counts).reshape(-1, 3).sum(0)
    return {
        "iou": float(iou_from_counts(total, empty_score)),
        "dice": float(dice_from_counts(total, empty_score)),
    }
