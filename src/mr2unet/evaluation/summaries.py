"""The evaluation's numbers from the per-image counts and the stored probabilities.

Primary scores (``metrics/<model>.json``): per category, the mean over its test images of
the per-image IOU / Dice of the defect class; ``mean`` = the plain mean of the category
values (how the paper's Mean row is computed); the pixel AUROC / AP and AUPRO of the stored
probabilities; with good test images, the image-level scores
(:mod:`mr2unet.metrics.image`).  The evaluation record (``metrics/evaluation/<model>.json``):
pooled scores (TP / FP / FN summed over a category's images), image and empty-prediction
counts, the oracle IOU at the best single threshold, the image-level counts and the
verdict (:func:`judge`, :mod:`mr2unet.evaluation.verdict`).  docs/evaluation.md explains
the choices.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mr2unet.data.prepared import PreparedSplit
from mr2unet.evaluation import verdict as verdicts
from mr2unet.evaluation.inference import require_images
from mr2unet.evaluation.probabilities import PROB_LEVELS, dequantise
from mr2unet.metrics import image as image_metrics
from mr2unet.metrics.region import aupro
from mr2unet.metrics.segmentation import (
    dice_from_counts,
    iou_from_counts,
    mean_scores,
    oracle_threshold,
    pixel_auroc_ap,
    pooled_scores,
    scored_pixels,
)

# Six decimals: far below any real difference, and byte-stable files for `dvc metrics diff`.
DECIMALS = 6
ORACLE_NOTE = ("oracle: the IOU / Dice at the single threshold that maximises the pooled IOU "
               "of the very pixels it is scored on (mask = stored 8-bit probability / 255 >= "
               "threshold); an upper bound for any fixed threshold, not a test score")


def _round(scores: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), DECIMALS) for k, v in scores.items()}


def rounded(tree: Any) -> Any:
    """``tree`` with every float rounded to :data:`DECIMALS` (dicts walked)."""
    if isinstance(tree, dict):
        return {k: rounded(v) for k, v in tree.items()}
    return round(tree, DECIMALS) if isinstance(tree, float) else tree


def _mean_of(per_category: dict[str, dict[str, Any]], keys: tuple[str, ...] = ("iou", "dice")
             ) -> dict[str, float]:
    """Plain (unweighted) mean of the categories' scores; a key no category has is left out
    (the pixel AUROC / AP of a category whose ground truth holds a single class)."""
    out = {}
    for k in keys:
        values = [v[k] for v in per_category.values() if v and k in v]
        if values:
            out[k] = float(np.mean(values))
    return out


def empty_counts(counts: np.ndarray) -> dict[str, int]:
    """Images whose prediction (TP + FP = 0) or ground truth (TP + FN = 0) is empty."""
    counts = np.asarray(counts).reshape(-1, 3)
    return {"empty_predictions": int(((counts[:, 0] + counts[:, 1]) == 0).sum()),
            "empty_ground_truth": int(((counts[:, 0] + counts[:, 2]) == 0).sum())}


def collapse_summary(counts: np.ndarray) -> dict[str, Any]:
    """``collapsed``: empty predictions on more than half of the defective test images.

    With ``missed_images`` (defective images predicted empty) and ``defective_images``;
    a collapsed network's scores are those of an empty mask (mr2unet.evaluation.verdict).
    """
    return {"collapsed": verdicts.evaluation_collapsed(counts),
            "missed_images": verdicts.missed_images(counts),
            "defective_images": verdicts.defective_images(counts)}


RANKING_KEYS = ("pixel_auroc", "pixel_ap", "aupro")


def _with_aupro(found: dict[str, float] | None, levels: np.ndarray, masks: np.ndarray
                ) -> dict[str, float]:
    """``found`` (pixel AUROC / AP) plus ``aupro`` where it is defined."""
    value = aupro(levels, masks)
    return {**(found or {}), **({"aupro": value} if value is not None else {})}


def threshold_free(levels: np.ndarray, masks: np.ndarray, categories: np.ndarray
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Scores of the stored 8-bit probabilities ``levels`` against the test ``masks``.

    Returns (ranking, pooled additions).  ``ranking``: ``{"mean": {"pixel_auroc",
    "pixel_ap"}, "per_category": {c: {"pixel_auroc", "pixel_ap"}}}``, each category's
    pixels pooled, and ``aupro`` (:func:`mr2unet.metrics.region.aupro`, the category's
    regions and normal pixels together); ``mean`` the plain mean over the categories
    where they are defined (a category whose scored pixels are all normal or all defect
    has neither; it is listed in ``single_class_categories``).  Pooled additions: the
    same over ``all_images``, the pixels scored per category, and the ``oracle`` block.
    Padding pixels (``IGNORE_LABEL``) are left out of everything.
    """
    levels, masks = np.asarray(levels), np.asarray(masks)
    categories = np.asarray(categories)
    names = sorted(set(categories.tolist()))
    ranking: dict[str, dict[str, float]] = {}
    oracle: dict[str, dict[str, float]] = {}
    pixels: dict[str, dict[str, int]] = {}
    unrounded: dict[str, tuple[dict[str, float], dict[str, float] | None]] = {}
    for c in names:
        scores, labels = scored_pixels(levels[categories == c], masks[categories == c])
        unrounded[c] = (_with_aupro(pixel_auroc_ap(scores, labels), levels[categories == c],
                                    masks[categories == c]),
                        oracle_threshold(scores, labels, PROB_LEVELS))
        ranking[c] = _round(unrounded[c][0])
        if unrounded[c][1]:
            oracle[c] = _round(unrounded[c][1])
        pixels[c] = {"scored_pixels": int(labels.size), "defect_pixels": int(labels.sum())}
    if len(names) == 1:  # its pixels are all the images' (a user's set): scored once
        everywhere, oracle_all = unrounded[names[0]]
    else:
        scores, labels = scored_pixels(levels, masks)
        everywhere = _with_aupro(pixel_auroc_ap(scores, labels), levels, masks)
        oracle_all = oracle_threshold(scores, labels, PROB_LEVELS)
    primary = {"mean": _round(_mean_of(ranking, RANKING_KEYS)), "per_category": ranking}
    pooled = {
        "all_images": _round(everywhere),
        "single_class_categories": [c for c in names if not ranking[c]],
        "per_category": pixels,
        "oracle": {"note": ORACLE_NOTE, "mean": _round(_mean_of(oracle)),
                   "all_images": _round(oracle_all) if oracle_all else {},
                   "per_category": oracle},
    }
    return primary, pooled


IMAGE_KEYS = ("image_auroc", "image_ap", "false_alarm_rate", "miss_rate")


def image_level(levels: np.ndarray, predictions: np.ndarray, masks: np.ndarray,
                categories: np.ndarray, good: np.ndarray, score: str = "max_smoothed",
                min_area: int = 1) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Image-level detection of good vs defective test images; ``None`` without good ones.

    Returns (primary additions ``{"mean": .., "per_category": {c: {"image_auroc",
    "image_ap", "false_alarm_rate", "miss_rate"}}}``, the pooled ``image_level`` block
    with the counts).  ``levels``: the stored 8-bit probabilities, scored by
    :func:`mr2unet.metrics.image.image_scores` (``score``); ``predictions``: the masks
    at the network's pixel threshold, flagging an image when a predicted component has
    at least ``min_area`` pixels.  A field whose images are missing (no good image in a
    category: no false-alarm rate, AUROC or AP there) is left out; ``mean`` is the plain
    mean over the categories that have it.
    """
    good, categories = np.asarray(good, bool), np.asarray(categories)
    if not good.any():
        return None
    scores = image_metrics.image_scores(dequantise(levels), masks, score)
    hit = image_metrics.flagged(predictions, masks, min_area)

    def block(rows: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
        found = image_metrics.detection_counts(hit[rows], ~good[rows])
        rates = {**(image_metrics.image_auroc_ap(scores[rows], ~good[rows]) or {}),
                 **{k: found.pop(k) for k in ("false_alarm_rate", "miss_rate") if k in found}}
        return _round(rates), found

    names = sorted(set(categories.tolist()))
    per = {c: block(categories == c) for c in names}
    rates, counts = block(np.ones(len(good), bool))
    primary = {"mean": _round(_mean_of({c: r for c, (r, _) in per.items()}, IMAGE_KEYS)),
               "per_category": {c: r for c, (r, _) in per.items()}}
    pooled = {"score": score, "min_defect_area": int(min_area), **counts,
              "all_images": rates, "per_category": {c: n for c, (_, n) in per.items()}}
    return primary, pooled


def summarise(counts: np.ndarray, categories: np.ndarray, empty_score: float = 1.0,
              levels: np.ndarray | None = None, masks: np.ndarray | None = None,
              predictions: np.ndarray | None = None, good: np.ndarray | None = None,
              image_score: str = "max_smoothed", min_defect_area: int = 1
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(primary metrics, pooled scores and counts) from per-image ``(N, 3)`` counts.

    Primary: ``{"mean": {"iou", "dice"}, "per_category": {category: {"iou", "dice"}}}``,
    each category the mean of its images' scores, ``mean`` the plain mean of categories.
    Pooled: the same layout with TP/FP/FN summed per category, plus image counts,
    empty-prediction counts and ``all_images`` (pooled over every test image).

    With the quantised probabilities ``levels`` and the ground-truth ``masks`` (both
    ``(N, S, S)``), :func:`threshold_free` adds ``pixel_auroc`` and ``pixel_ap`` next to
    IOU and Dice, and pixel counts and the ``oracle`` block to the pooled scores.  With
    the predicted ``predictions`` too, and good test images (``good``, else the images
    whose mask is all normal), :func:`image_level` adds the image-level scores.

    Images marked ``good`` (the manifest's good parts, ``prepare.good_images``) are left
    out of IOU and Dice, which measure how well defects are segmented, as in the paper
    (an empty prediction on a good part would score a perfect 1.0); they count in the
    pixel AUROC/AP (as negatives) and in the image-level detection.
    """
    counts, categories = np.asarray(counts).reshape(-1, 3), np.asarray(categories)
    require_images(len(counts))
    scored = np.ones(len(counts), bool) if good is None else ~np.asarray(good, bool)
    primary, pooled = segmentation_scores(counts, categories, scored, empty_score)
    if levels is None:
        return primary, pooled
    if masks is None:
        raise ValueError("summarise: levels need the ground-truth masks")
    ranking, extra = threshold_free(levels, masks, categories)
    _merge_scores(primary, ranking)
    for c, pixels in extra["per_category"].items():
        pooled["per_category"][c].update(pixels)
    pooled["all_images"].update(extra["all_images"])
    pooled["single_class_categories"] = extra["single_class_categories"]
    pooled["oracle"] = extra["oracle"]
    good = ~image_metrics.defective(masks) if good is None else good
    found = None if predictions is None else image_level(
        levels, predictions, masks, categories, good, image_score, min_defect_area)
    if found is not None:
        _merge_scores(primary, found[0])
        pooled["image_level"] = found[1]
    return primary, pooled


def segmentation_scores(counts: np.ndarray, categories: np.ndarray, scored: np.ndarray,
                        empty_score: float = 1.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """IOU and Dice over the ``scored`` images of each category: (primary, pooled) as
    :func:`summarise` describes them, before the threshold-free and image-level scores."""
    names = sorted(set(categories.tolist()))
    primary_raw = {c: mean_scores(counts[scored & (categories == c)], empty_score)
                   for c in names}
    pooled_raw = {c: pooled_scores(counts[scored & (categories == c)], empty_score)
                  for c in names}
    primary = {"mean": _round(_mean_of(primary_raw)),
               "per_category": {c: _round(s) for c, s in primary_raw.items()}}
    pooled = {
        "mean": _round(_mean_of(pooled_raw)),
        "all_images": _round(pooled_scores(counts[scored], empty_score)),
        "images": int(len(counts)),
        # over the scored (defective) images: an empty prediction on a good part is right
        **empty_counts(counts[scored]),
        **collapse_summary(counts[scored]),
        "per_category": {
            c: {**_round(pooled_raw[c]), "images": int((categories == c).sum()),
                **empty_counts(counts[scored & (categories == c)])}
            for c in names},
    }
    if not scored.all():
        pooled["good_images_left_out_of_iou"] = int((~scored).sum())
    return primary, pooled


def _merge_scores(primary: dict[str, Any], more: dict[str, Any]) -> None:
    """Add ``more``'s ``mean`` and ``per_category`` scores to ``primary``'s, in place."""
    primary["mean"].update(more["mean"])
    for c, scores in primary["per_category"].items():
        scores.update(more["per_category"][c])


def per_image_table(split: PreparedSplit, counts: np.ndarray, empty_score: float = 1.0
                    ) -> pd.DataFrame:
    """One row per test image: source, category, defect type, TP, FP, FN, IOU, Dice."""
    return pd.DataFrame({
        "source": split.sources, "category": split.categories,
        "defect_type": split.defect_types,
        "tp": counts[:, 0], "fp": counts[:, 1], "fn": counts[:, 2],
        "iou": np.round(iou_from_counts(counts, empty_score), DECIMALS),
        "dice": np.round(dice_from_counts(counts, empty_score), DECIMALS),
    })


def flat_metrics(primary: dict[str, Any], prefix: str = "test") -> dict[str, float]:
    """``{"test_iou_mean": .., "test_dice_mean": .., "test_iou_bottle": .., ...}``."""
    flat = {f"{prefix}_{k}_mean": v for k, v in primary["mean"].items()}
    for category, scores in primary["per_category"].items():
        flat.update({f"{prefix}_{k}_{category}": v for k, v in scores.items()})
    return flat


def part_decisions(predictions: np.ndarray, masks: np.ndarray, good: np.ndarray | None,
                   min_area: int = 1) -> tuple[tuple[int, int], dict[str, Any]]:
    """What a line sees of the test parts at the network's threshold: ((good parts
    flagged, good parts), the defective parts passed (not flagged) as
    :func:`~mr2unet.evaluation.verdict.part_counts`). An image is flagged as the
    image-level scores flag it (:func:`mr2unet.metrics.image.flagged`); ``good`` None:
    an image whose mask holds no defect pixel is good (:func:`summarise`)."""
    good = ~image_metrics.defective(masks) if good is None else np.asarray(good, bool)
    hit = image_metrics.flagged(predictions, masks, min_area)
    alarms = (int((hit & good).sum()), int(good.sum()))
    return alarms, verdicts.part_counts(int((~hit & ~good).sum()), int((~good).sum()),
                                        DECIMALS)


def judge(primary: dict[str, Any], split: PreparedSplit, levels: np.ndarray | None,
          train: PreparedSplit | None, empty_score: float, fit_for_use: dict[str, float],
          good: np.ndarray | None = None, predictions: np.ndarray | None = None,
          min_area: int = 1) -> dict[str, Any]:
    """The evaluation record's ``verdict`` block: the verdict, its reason and figures, and
    the trivial baselines' scores (:mod:`mr2unet.evaluation.verdict`); the baselines'
    IOU, like the network's, over the images that are not ``good`` parts. With the
    test ``predictions`` the good parts flagged join the verdict (``false_alarms``)
    and the defective parts passed are counted (``misses``): :func:`part_decisions`."""
    scored = split if good is None else split.select(~np.asarray(good, bool))
    found = verdicts.baselines(scored, train, empty_score)
    ci = None if levels is None else verdicts.pixel_auroc_interval(
        levels, split.masks, split.categories)
    mean = primary["mean"]
    alarms, misses = (None, None) if predictions is None else part_decisions(
        predictions, split.masks, good, min_area)
    decided = verdicts.decide(mean["iou"], mean.get("pixel_auroc"), ci, found, fit_for_use,
                              alarms)
    return {**decided.as_dict(DECIMALS), **({"misses": misses} if misses else {}),
            "fit_for_use": dict(fit_for_use), "baselines": rounded(found),
            "bootstrap": {"resamples": verdicts.N_RESAMPLES, "seed": verdicts.SEED,
                          "confidence": verdicts.CONFIDENCE,
                          "method": "percentile, images resampled within each category"}}
