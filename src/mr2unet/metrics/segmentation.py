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


def content_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Top, left, bottom, right (exclusive) per image, long ``(N, 4)``, of the rectangle of
    ``masks`` ``(N, H, W)`` that is not :data:`IGNORE_LABEL`: a ``prepare.resize: pad``
    square's content; the whole image where there is no padding (or nothing but)."""
    valid = masks != IGNORE_LABEL
    rows, cols = valid.any(2), valid.any(1)
    height, width = masks.shape[1:]

    def first(flags: torch.Tensor) -> torch.Tensor:  # the first True (0 when none)
        return flags.float().argmax(-1)

    return torch.stack([first(rows), first(cols), height - first(rows.flip(-1)),
                        width - first(cols.flip(-1))], dim=1)


def confusion_counts(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image (TP, FP, FN) of binary masks ``(N, H, W)`` -> int64 ``(N, 3)``.

    Pixels whose ``target`` is :data:`IGNORE_LABEL` (padding) count nowhere, whatever
    ``pred`` says there.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    target = target.reshape(target.shape[0], -1)
    valid = target != IGNORE_LABEL
    p = pred.reshape(pred.shape[0], -1).bool() & valid
    t = target.bool() & valid
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


# ------------------------------------------------------------- threshold-free scores
#
# From the defect probability of every pixel, without choosing a threshold: the pixel
# AUROC and average precision that the MVTec AD literature reports (anomalib, PatchCore),
# and the IOU at the best single threshold, chosen on the very pixels it is scored on
# (an oracle: an upper bound for any fixed threshold, not a test score).


def scored_pixels(scores: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat ``(scores, labels)`` of the pixels that count: padding (IGNORE_LABEL) is left out.

    ``labels`` is boolean, True for defect pixels (any mask value other than 0 and 255).
    """
    scores, masks = np.asarray(scores), np.asarray(masks)
    if scores.shape != masks.shape:
        raise ValueError(f"scores shape {scores.shape} != masks shape {masks.shape}")
    valid = masks != IGNORE_LABEL
    return scores[valid], masks[valid] != 0


def pixel_auroc_ap(scores: np.ndarray, labels: np.ndarray) -> dict[str, float] | None:
    """Pixel AUROC and average precision of ``scores`` against boolean ``labels``.

    scikit-learn's ``roc_auc_score`` (ties count one half) and ``average_precision_score``
    (``sum_n (R_n - R_{n-1}) P_n`` over the distinct scores, no interpolation).  ``None``
    when ``labels`` holds a single class: both are undefined then.

    Integer ``scores`` (the stored 8-bit levels) go to scikit-learn as one weighted
    sample per distinct (score, label) pair, the weight its pixel count: the same curve
    points (their cumulative counts are exact integers either way), so the same values to
    the bit, without sorting millions of pixels (tests/test_metrics.py).
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    labels = np.asarray(labels, dtype=bool).ravel()
    scores = np.asarray(scores).ravel()
    if labels.all() or not labels.any():
        return None
    weights = None
    if np.issubdtype(scores.dtype, np.integer):
        low = int(scores.min())
        values = np.arange(low, int(scores.max()) + 1)
        counts = [np.bincount(scores[side] - low, minlength=len(values)) for side in
                  (~labels, labels)]
        labels = np.repeat([False, True], len(values))
        scores, weights = np.tile(values, 2), np.concatenate(counts).astype(np.float64)
        kept = weights > 0
        labels, scores, weights = labels[kept], scores[kept], weights[kept]
    return {"pixel_auroc": float(roc_auc_score(labels, scores, sample_weight=weights)),
            "pixel_ap": float(average_precision_score(labels, scores,
                                                      sample_weight=weights))}


def oracle_threshold(levels: np.ndarray, labels: np.ndarray, top: int = 255
                     ) -> dict[str, float] | None:
    """Pooled IOU and Dice at the threshold that maximises the IOU of these very pixels.

    ``levels`` are integer scores in ``0..top`` (the 8-bit quantised probability); the
    mask at level ``k`` is ``levels >= k``, and ``threshold`` is ``k / top``.  Dice is a
    monotonic function of IOU (``2 J / (1 + J)``), so the same threshold maximises both.
    Of equal IOUs the lowest threshold wins.  ``None`` when there is no defect pixel.
    """
    levels = np.asarray(levels).ravel().astype(np.int64)
    labels = np.asarray(labels, dtype=bool).ravel()
    if not labels.any():
        return None
    if levels.size and (levels.min() < 0 or levels.max() > top):
        raise ValueError(f"levels must lie in 0..{top}")
    # tp[k], fp[k]: defect / normal pixels at level >= k.
    tp = np.cumsum(np.bincount(levels[labels], minlength=top + 1)[::-1])[::-1]
    fp = np.cumsum(np.bincount(levels[~labels], minlength=top + 1)[::-1])[::-1]
    fn = labels.sum() - tp
    iou = tp / (tp + fp + fn)
    k = int(np.argmax(iou))
    return {"iou": float(iou[k]), "dice": float(2 * tp[k] / (2 * tp[k] + fp[k] + fn[k])),
            "threshold": k / top}
