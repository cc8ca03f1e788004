"""Image-level detection: is there a defect in this image at all? Pure functions.

A production line sorts parts, not pixels. From the per-pixel defect probabilities and
the predicted masks of a test set that holds good (defect-free) and defective images:

- **image score** (threshold-free), one number per image, two choices:
  ``max_smoothed`` (the default): ``max_p mean_{q in 3x3(p), q valid} prob_q``, the
  highest defect probability after a 3x3 mean filter over the valid (non-padding)
  pixels, so that one stray pixel does not decide; ``top_k_mean``: the mean of the
  ``k = ceil(0.01 n)`` highest probabilities of the ``n`` valid pixels;
- **image AUROC / AP** of that score over good (0) vs defective (1) images
  (scikit-learn ``roc_auc_score``, ``average_precision_score``);
- **detections** at the network's pixel threshold: an image is *flagged* when its
  predicted mask holds an 8-connected component of at least ``min_area`` valid pixels;
  ``false_alarm_rate = flagged good images / good images`` and
  ``miss_rate = unflagged defective images / defective images``.
"""

from __future__ import annotations

import math

import numpy as np

from mr2unet.config.params import IMAGE_SCORES
from mr2unet.metrics.region import label_regions
from mr2unet.metrics.segmentation import IGNORE_LABEL

SMOOTHING = 3  # side of the mean filter of ``max_smoothed``
TOP_K_FRACTION = 0.01  # share of the valid pixels averaged by ``top_k_mean``


def defective(masks: np.ndarray) -> np.ndarray:
    """Boolean ``(N,)``: the image's mask holds a defect pixel (a value other than 0, 255)."""
    masks = np.asarray(masks)
    return ((masks != 0) & (masks != IGNORE_LABEL)).reshape(len(masks), -1).any(1)


def image_scores(probabilities: np.ndarray, masks: np.ndarray,
                 method: str = "max_smoothed") -> np.ndarray:
    """float64 ``(N,)`` image scores of ``(N, H, W)`` probabilities (module docstring).

    Pixels whose mask is ``IGNORE_LABEL`` (padding) are left out.
    """
    from scipy import ndimage  # here, not at import: `mr2unet predict` needs no scipy
    prob = np.asarray(probabilities, np.float64)
    valid = np.asarray(masks) != IGNORE_LABEL
    if prob.shape != valid.shape:
        raise ValueError(f"probabilities shape {prob.shape} != masks shape {valid.shape}")
    if method == "max_smoothed":
        size = (1, SMOOTHING, SMOOTHING)  # within each image
        total = ndimage.uniform_filter(np.where(valid, prob, 0.0), size, mode="constant")
        weight = ndimage.uniform_filter(valid.astype(np.float64), size, mode="constant")
        smooth = np.where(valid, total / np.maximum(weight, 1e-12), -np.inf)
        return smooth.reshape(len(prob), -1).max(1)
    if method == "top_k_mean":
        out = np.empty(len(prob))
        for i, (p, v) in enumerate(zip(prob, valid, strict=True)):
            values = p[v]
            k = max(1, math.ceil(TOP_K_FRACTION * values.size))
            out[i] = np.partition(values, values.size - k)[-k:].mean()
        return out
    raise ValueError(f"unknown image score {method!r}: one of {', '.join(IMAGE_SCORES)}")


def image_auroc_ap(scores: np.ndarray, is_defective: np.ndarray) -> dict[str, float] | None:
    """Image AUROC (ties count one half) and AP of ``scores`` for good vs defective images.

    ``AUROC = P(s_defective > s_good) + P(s_defective = s_good) / 2``;
    ``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct scores. ``None`` unless both
    classes are present.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    labels = np.asarray(is_defective, bool)
    if labels.all() or not labels.any():
        return None
    scores = np.asarray(scores, np.float64)
    return {"image_auroc": float(roc_auc_score(labels, scores)),
            "image_ap": float(average_precision_score(labels, scores))}


def flagged(predictions: np.ndarray, masks: np.ndarray, min_area: int = 1) -> np.ndarray:
    """Boolean ``(N,)``: the predicted mask holds an 8-connected component of at least
    ``min_area`` pixels (padding pixels, ``IGNORE_LABEL`` in ``masks``, left out)."""
    predictions, masks = np.asarray(predictions), np.asarray(masks)
    found = (predictions != 0) & (masks != IGNORE_LABEL)
    if min_area <= 1:
        return found.reshape(len(found), -1).any(1)
    labels, count = label_regions(found)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    big = sizes >= min_area
    big[0] = False
    return big[labels].reshape(len(labels), -1).any(1)


def detection_counts(is_flagged: np.ndarray, is_defective: np.ndarray) -> dict[str, float]:
    """Counts and rates of image-level decisions.

    ``false_alarm_rate = false_alarms / good_images`` (good images flagged) and
    ``miss_rate = misses / defective_images`` (defective images not flagged); a rate
    whose denominator is 0 is left out.
    """
    is_flagged, is_defective = np.asarray(is_flagged, bool), np.asarray(is_defective, bool)
    good, bad = int((~is_defective).sum()), int(is_defective.sum())
    alarms, misses = int((is_flagged & ~is_defective).sum()), int((~is_flagged & is_defective)
                                                                    .sum())
    out: dict[str, float] = {"good_images": good, "false_alarms": alarms,
                             "defective_images": bad, "misses": misses}
    if good:
        out["false_alarm_rate"] = alarms / good
    if bad:
        out["miss_rate"] = misses / bad
    return out
