"""Choosing the mask threshold on the validation split (``evaluate.threshold``).

A pixel is a defect where its defect probability exceeds the threshold ``t``
(:func:`mr2unet.models.inference.defect_mask`). ``evaluate.threshold`` is one of

``0.5`` (any fixed probability in (0, 1))
    used as it is; 0.5 is exactly the argmax of the two logits (the paper);
``best_iou``
    the candidate with the best mean IOU on the defective validation images, computed as
    the test score is: per image, averaged per category, then the plain mean of the
    categories; good images are left out, as the test's IOU leaves them out (an empty
    prediction on one would score a perfect 1); of equal bests the one closest to 0.5
    (then the lower) wins;
``max_false_alarm_rate=<r>``
    the lowest candidate at which at most a share ``r`` of the good (defect-free)
    validation images is flagged (a predicted component of at least ``min_defect_area``
    pixels, :func:`mr2unet.metrics.image.flagged`, as the test's false-alarm rate);
    the lowest such threshold misses the fewest defects. When no candidate reaches
    ``r``, the highest candidate is taken and a warning says so.
``auto=<r>`` (``auto`` = ``auto=0.05``, :data:`AUTO_RATE`; the user-data recipe)
    resolved on the validation split at train time, the log saying which and why: with
    good validation images, the ``best_iou`` threshold raised, where it flags more than a
    share ``r`` of them, to the ``max_false_alarm_rate=<r>`` threshold (the larger of the
    two: within the false-alarm budget, and as close to the best IOU as the budget
    allows; without defective validation images, the budget's threshold alone); without
    good validation images, ``best_iou``. Fewer than :data:`MIN_GOOD_VAL` good validation
    images still decide (they are the only evidence about false alarms), with a warning
    that the rate they give is too coarse to trust (docs/evaluation.md, "Threshold").

The candidates are the 99 probabilities 0.01, 0.02, ..., 0.99 (:data:`CANDIDATES`): fine
enough for a mask, and a chosen value reads as what it is. Functions here are pure; the
train stage (``pipeline/train.py``) predicts the validation split, calls :func:`choose`
and stores the result in the model file (:func:`mr2unet.models.checkpoint.stored_threshold`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from mr2unet.config.params import AUTO, BEST_IOU, MAX_FALSE_ALARM_RATE
from mr2unet.errors import UserError
from mr2unet.metrics.image import flagged
from mr2unet.metrics.segmentation import IGNORE_LABEL, iou_from_counts
from mr2unet.models.inference import DEFAULT_THRESHOLD, check_threshold

log = logging.getLogger(__name__)
CANDIDATES = tuple(round(k / 100, 2) for k in range(1, 100))
FIXED = "fixed"  # a number in params.yaml; the named forms are config.params'
AUTO_RATE = 0.05  # the false-alarm budget of a bare `auto`
# Fewer good validation images than this give a false-alarm rate too coarse to trust:
# 0 of 9 flagged still allows 34 % at 95 % confidence (Clopper-Pearson upper bound).
MIN_GOOD_VAL = 10


@dataclass(frozen=True)
class ThresholdRule:
    """A parsed ``evaluate.threshold``: ``kind`` fixed / best_iou / max_false_alarm_rate
    and its number (the fixed threshold, the rate ``r``; none for best_iou)."""

    kind: str
    value: float | None = None

    @property
    def needs_validation(self) -> bool:
        return self.kind != FIXED

    def __str__(self) -> str:
        if self.kind == FIXED:
            return f"{self.value:g}"
        if self.kind == AUTO:
            return f"{AUTO}={self.value:g}"
        return BEST_IOU if self.kind == BEST_IOU else f"{MAX_FALSE_ALARM_RATE}={self.value:g}"


def parse_rule(setting: float | str) -> ThresholdRule:
    """``0.5`` / ``"best_iou"`` / ``"max_false_alarm_rate=0.05"`` / ``"auto"`` /
    ``"auto=0.05"`` as a :class:`ThresholdRule`."""
    if isinstance(setting, int | float) and not isinstance(setting, bool):
        try:
            return ThresholdRule(FIXED, check_threshold(setting))
        except ValueError:
            pass
    elif setting == BEST_IOU:
        return ThresholdRule(BEST_IOU)
    elif setting == AUTO:
        return ThresholdRule(AUTO, AUTO_RATE)
    elif isinstance(setting, str) and "=" in setting:
        kind, number = setting.split("=", 1)
        try:
            rate = float(number)
        except ValueError:
            rate = -1.0
        if kind in (MAX_FALSE_ALARM_RATE, AUTO) and 0 <= rate <= 1:
            return ThresholdRule(kind, rate)
    raise UserError(f"evaluate.threshold {setting!r}: expected a probability in (0, 1) such "
                    f"as 0.5, {BEST_IOU}, {MAX_FALSE_ALARM_RATE}=<r> or {AUTO}=<r> with "
                    "0 <= r <= 1, or auto.")


def mean_iou(probabilities: np.ndarray, masks: np.ndarray, categories: np.ndarray,
             threshold: float, empty_score: float = 1.0) -> float:
    """Mean IOU of the masks ``probabilities > threshold``: per image, per category, then
    the plain mean of the categories (the test score's definition)."""
    return float(iou_curve(probabilities, masks, categories, (threshold,), empty_score)[0])


def iou_curve(probabilities: np.ndarray, masks: np.ndarray, categories: np.ndarray,
              thresholds: tuple[float, ...] = CANDIDATES, empty_score: float = 1.0
              ) -> np.ndarray:
    """:func:`mean_iou` at each of ``thresholds`` (float64 ``(T,)``), exactly, from one sort
    per image instead of one pass over the pixels per threshold.

    Per image the defect and background probabilities are sorted once; the pixels above a
    threshold are then counted by binary search (TP among the defect pixels, FP among the
    rest; padding, :data:`IGNORE_LABEL`, counts nowhere, as in
    :func:`~mr2unet.metrics.segmentation.confusion_counts`). The thresholds are compared
    in the probabilities' own dtype, as ``probabilities > t`` does.
    """
    probabilities, masks = np.asarray(probabilities), np.asarray(masks)
    cuts = np.asarray(thresholds, dtype=probabilities.dtype)
    counts = np.empty((len(cuts), len(masks), 3), np.int64)
    for i, (image, mask) in enumerate(zip(probabilities, masks, strict=True)):
        target = mask.ravel()
        valid = target != IGNORE_LABEL
        defect = (target != 0) & valid
        pixels = image.ravel()
        positives = np.sort(pixels[defect])
        negatives = np.sort(pixels[valid & ~defect])
        tp = len(positives) - np.searchsorted(positives, cuts, side="right")
        counts[:, i, 0] = tp
        counts[:, i, 1] = len(negatives) - np.searchsorted(negatives, cuts, side="right")
        counts[:, i, 2] = len(positives) - tp
    iou = iou_from_counts(counts, empty_score)  # (T, N)
    categories = np.asarray(categories)
    groups = [categories == c for c in sorted(set(categories.tolist()))]
    return np.array([np.mean([row[g].mean() for g in groups]) for row in iou], np.float64)


def false_alarm_rate(probabilities: np.ndarray, masks: np.ndarray, threshold: float,
                     min_area: int = 1) -> float:
    """Share of the (good) images ``probabilities`` that the mask at ``threshold`` flags."""
    return float(flagged(np.asarray(probabilities) > threshold, masks, min_area).mean())


def best_iou(probabilities: np.ndarray, masks: np.ndarray, categories: np.ndarray,
             empty_score: float = 1.0) -> tuple[float, float]:
    """(threshold, its mean IOU): the best candidate; ties go to the one closest to 0.5."""
    scores = iou_curve(probabilities, masks, categories, CANDIDATES, empty_score).tolist()
    top = max(scores)
    best = min((abs(t - DEFAULT_THRESHOLD), t) for t, s in zip(CANDIDATES, scores, strict=True)
               if s == top)[1]
    return best, top


def lowest_within_rate(probabilities: np.ndarray, masks: np.ndarray, rate: float,
                       min_area: int = 1) -> tuple[float, float, bool]:
    """(threshold, its false-alarm rate, whether it is <= ``rate``) on good images: the
    lowest candidate within ``rate``, else the highest candidate.

    Flagging only falls as the threshold rises (a higher threshold's predicted pixels are a
    subset of a lower one's, so are its components), so a binary search over the
    candidates finds it in 7 rate computations rather than up to 99.
    """
    rates: dict[int, float] = {}

    def at(k: int) -> float:
        if k not in rates:
            rates[k] = false_alarm_rate(probabilities, masks, CANDIDATES[k], min_area)
        return rates[k]

    low, high = 0, len(CANDIDATES)  # the answer's index lies in [low, high]
    while low < high:
        middle = (low + high) // 2
        if at(middle) <= rate:
            high = middle
        else:
            low = middle + 1
    if low == len(CANDIDATES):
        return CANDIDATES[-1], at(len(CANDIDATES) - 1), False
    return CANDIDATES[low], at(low), True


def choose(rule: ThresholdRule, probabilities: np.ndarray, masks: np.ndarray,
           categories: np.ndarray, good: np.ndarray | None, empty_score: float = 1.0,
           min_area: int = 1) -> dict[str, Any]:
    """The threshold of ``rule`` on the validation split, with how it was chosen.

    ``probabilities`` float ``(N, H, W)`` of the validation images, ``masks`` their ground
    truth, ``categories`` and ``good`` (boolean) per image. Returns ``{"value", "rule",
    "val_images", "val_good_images"}`` plus, at the chosen value, ``val_mean_iou`` (over
    the defective images, where there are any) and ``val_false_alarm_rate`` (over the good
    ones, where there are any); ``auto`` adds ``resolved`` and ``reason``
    (:func:`resolve_auto`). A rule that needs validation images without any, or the
    false-alarm rule without good ones, is a UserError.
    """
    # None: the manifest has no good column (a set without good images, e.g. NEU-Seg)
    good = np.zeros(len(masks), bool) if good is None else np.asarray(good, bool)
    n = int(len(good))
    if rule.needs_validation and n == 0:
        raise UserError(f"evaluate.threshold {rule} is chosen on the validation split, which "
                        "is empty: set split.val_fraction (e.g. 0.2) and run `dvc repro`.")
    if rule.kind == BEST_IOU and good.all():
        raise UserError(f"evaluate.threshold {rule} needs defective validation images and "
                        "there are none: raise split.val_fraction.")
    if rule.kind == MAX_FALSE_ALARM_RATE and not good.any():
        raise UserError(f"evaluate.threshold {rule} needs good (defect-free) validation "
                        "images and there are none: set prepare.good_images (e.g. all; the "
                        "data set must hold defect-free images) and run `dvc repro`.")
    met = True
    extra: dict[str, Any] = {}
    if rule.kind == AUTO:
        assert rule.value is not None
        value, met, extra = resolve_auto(rule.value, probabilities, masks, categories, good,
                                         empty_score, min_area)
    elif rule.kind == FIXED:
        assert rule.value is not None
        value = rule.value
    elif rule.kind == BEST_IOU:
        value, _ = best_iou(probabilities[~good], masks[~good], categories[~good],
                            empty_score)
    else:
        assert rule.value is not None
        value, _, met = lowest_within_rate(probabilities[good], masks[good], rule.value,
                                           min_area)
    if not met:
        log.warning("no threshold up to %.2f keeps the false-alarm rate on the %d good "
                    "validation images within %g: using %.2f", value, int(good.sum()),
                    rule.value, value)
    found: dict[str, Any] = {"value": float(value), "rule": str(rule), "val_images": n,
                             "val_good_images": int(good.sum()), **extra}
    if (~good).any():  # over the defective images, as the test's mean IOU
        found["val_mean_iou"] = round(mean_iou(probabilities[~good], masks[~good],
                                               categories[~good], value, empty_score), 6)
    if good.any():
        found["val_false_alarm_rate"] = round(false_alarm_rate(
            probabilities[good], masks[good], value, min_area), 6)
    if not met:
        found["rate_met"] = False
    return found


def resolve_auto(rate: float, probabilities: np.ndarray, masks: np.ndarray,
                 categories: np.ndarray, good: np.ndarray, empty_score: float = 1.0,
                 min_area: int = 1) -> tuple[float, bool, dict[str, Any]]:
    """``auto=<rate>`` on a validation split (module docstring): (threshold, whether the
    budget was met, ``{"resolved", "reason"}`` (+ ``"too_few_good": True`` under
    :data:`MIN_GOOD_VAL`) for the record), logged."""
    n_good = int(good.sum())
    budget = f"{MAX_FALSE_ALARM_RATE}={rate:g}"
    iou_t = (best_iou(probabilities[~good], masks[~good], categories[~good], empty_score)[0]
             if (~good).any() else None)
    if n_good == 0:
        assert iou_t is not None  # choose() refuses an empty split
        reason = ("no good validation images, so the false-alarm rate cannot be measured: "
                  f"the best-IOU threshold {iou_t:.2f}")
        log.info("evaluate.threshold auto=%g: %s", rate, reason)
        return iou_t, True, {"resolved": BEST_IOU, "reason": reason}
    fa_t, _, met = lowest_within_rate(probabilities[good], masks[good], rate, min_area)
    if iou_t is None:
        resolved = budget
        reason = f"no defective validation images: the {budget} threshold {fa_t:.2f}"
    elif fa_t > iou_t:
        resolved = f"{BEST_IOU} raised to {budget}"
        flags = false_alarm_rate(probabilities[good], masks[good], iou_t, min_area)
        reason = (f"the best-IOU threshold {iou_t:.2f} flags {flags:.0%} of the {n_good} good "
                  f"validation images, above the budget {rate:g}: raised to {fa_t:.2f}, the "
                  "lowest threshold within it")
    else:
        resolved = BEST_IOU
        reason = (f"the best-IOU threshold {iou_t:.2f} keeps the {n_good} good validation "
                  f"images within the false-alarm budget {rate:g} (lowest within it: {fa_t:.2f})")
    value = fa_t if iou_t is None else max(fa_t, iou_t)
    log.info("evaluate.threshold auto=%g: %s", rate, reason)
    extra: dict[str, Any] = {"resolved": resolved, "reason": reason}
    if n_good < MIN_GOOD_VAL:
        extra["too_few_good"] = True
        log.warning("evaluate.threshold auto=%g: only %d good validation images (fewer than "
                    "%d): the false-alarm rate they give is too coarse to trust; the threshold "
                    "is still chosen on them (docs/evaluation.md, \"Threshold\"). Add good "
                    "images or raise split.val_fraction.", rate, n_good, MIN_GOOD_VAL)
    return value, met, extra
