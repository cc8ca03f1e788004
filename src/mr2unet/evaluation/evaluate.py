"""Evaluating a trained model on the test split: per-image, per-category and mean scores.

Primary score (``metrics/<model>.json``): per category, the mean over its test images of
the per-image IOU / Dice of the defect class; ``mean`` = the plain mean of the category
values (how the paper's Mean row is computed).  Pooled scores (TP/FP/FN summed over a
category's images), image counts and empty-prediction counts go to
``metrics/pooled/<model>.json``; per-image scores to ``data/eval/<model>.csv`` and the
predicted masks to ``data/eval/<model>_pred.npz`` (read by the report).

Threshold-free scores: the defect probability of every test pixel is kept, 8-bit
quantised (``round(255 p)``, error at most 1/510), in ``data/eval/<model>_prob.npz``;
the pixel AUROC and average precision per category (computed from those stored values)
join IOU and Dice in ``metrics/<model>.json``, and the oracle IOU at the best single
threshold goes to the pooled file.  The network's cost (parameters, GFLOPs) goes to the
pooled file too; its latencies and training time, which vary between runs, to
``metrics/timing/<model>.json``.

AUPRO (:mod:`mr2unet.metrics.region`) joins the pixel AUROC and AP.  When the test split
holds good (defect-free) images, the image-level scores (:mod:`mr2unet.metrics.image`:
image AUROC / AP, false-alarm and miss rates) join them too; without good images those
fields are absent.  Every network also gets a verdict (:mod:`mr2unet.evaluation.verdict`:
not learned / weak / learned, against trivial baselines) in the pooled file.
docs/evaluation.md explains the choices.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from mr2unet.data.prepared import PreparedSplit, load_split
from mr2unet.data.transforms import to_input
from mr2unet.errors import UserError
from mr2unet.evaluation import verdict as verdicts
from mr2unet.metrics import image as image_metrics
from mr2unet.metrics.region import aupro
from mr2unet.metrics.segmentation import (
    confusion_counts,
    dice_from_counts,
    iou_from_counts,
    mean_scores,
    oracle_threshold,
    pixel_auroc_ap,
    pooled_scores,
    scored_pixels,
)
from mr2unet.models.inference import DEFAULT_THRESHOLD, defect_mask, defect_probability
from mr2unet.models.tiling import Tiling, tile_logits, tiling_of
from mr2unet.training.collapse import defective_images, evaluation_collapsed, missed_images

log = logging.getLogger(__name__)

# Six decimals: far below any real difference, and byte-stable files for `dvc metrics diff`.
DECIMALS = 6
TEST_SPLIT = Path("data/prepared/test.npz")
TRAIN_SPLIT = Path("data/prepared/train.npz")
MANIFEST = Path("data/prepared/manifest.csv")
SUMMARY = Path("data/prepared/summary.json")  # prepare's summary (prepare.mode auto: its choice)
# Stored probabilities: uint8 round(p * PROB_LEVELS); |dequantise(quantise(p)) - p| <= 1/510.
PROB_LEVELS = 255
ORACLE_NOTE = ("oracle: the IOU / Dice at the single threshold that maximises the pooled IOU "
               "of the very pixels it is scored on (mask = stored 8-bit probability / 255 >= "
               "threshold); an upper bound for any fixed threshold, not a test score")


@dataclass(frozen=True)
class ModelFiles:
    """Where the stages keep one model's files, relative to the project root."""

    arch: str
    root: Path = Path(".")

    @property
    def checkpoint(self) -> Path:
        return self.root / "data" / "models" / f"{self.arch}.pt"

    @property
    def run_info(self) -> Path:
        return self.root / "data" / "models" / f"{self.arch}.run.json"

    @property
    def history(self) -> Path:
        return self.root / "metrics" / "history" / f"{self.arch}.csv"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics" / f"{self.arch}.json"

    @property
    def pooled(self) -> Path:
        return self.root / "metrics" / "pooled" / f"{self.arch}.json"

    @property
    def per_image(self) -> Path:
        return self.root / "data" / "eval" / f"{self.arch}.csv"

    @property
    def predictions(self) -> Path:
        return self.root / "data" / "eval" / f"{self.arch}_pred.npz"

    @property
    def probabilities(self) -> Path:
        return self.root / "data" / "eval" / f"{self.arch}_prob.npz"

    @property
    def timing(self) -> Path:
        return self.root / "metrics" / "timing" / f"{self.arch}.json"


@dataclass(frozen=True)
class Evaluation:
    """Per-image counts and predictions of one model on one split."""

    counts: np.ndarray  # int64 (N, 3): TP, FP, FN of the defect class
    predictions: np.ndarray  # uint8 (N, S, S), 1 = defect
    probabilities: np.ndarray | None = None  # uint8 (N, S, S): quantise(defect probability)


# ----------------------------------------------------------------- compact probabilities


def quantise(probability: np.ndarray | torch.Tensor) -> np.ndarray:
    """Probabilities in [0, 1] -> uint8 ``round(255 p)`` (error at most 1/510)."""
    if isinstance(probability, torch.Tensor):
        probability = probability.detach().cpu().numpy()
    p = np.clip(np.asarray(probability, dtype=np.float32), 0.0, 1.0)
    return np.rint(p * np.float32(PROB_LEVELS)).astype(np.uint8)  # half to even


def dequantise(levels: np.ndarray) -> np.ndarray:
    """uint8 levels -> float32 probabilities ``levels / 255``."""
    return np.asarray(levels, dtype=np.float32) / PROB_LEVELS


# ------------------------------------------------------------------------- inference


def _require_images(count: int) -> None:
    if count == 0:
        raise UserError("the test split is empty: check `data.categories` and "
                        "`split.test_fraction` in params.yaml, then `dvc repro prepare`.")


@torch.inference_mode()
def predict_maps(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 32,
            progress: bool = True, threshold: float = DEFAULT_THRESHOLD,
            tiling: Tiling | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``(N, H, W, 3)`` -> (uint8 masks, float32 defect probabilities), ``(N, H, W)``.

    The mask is 1 where the defect probability exceeds ``threshold``; at the default 0.5
    it is exactly the argmax of the two logits (:func:`mr2unet.models.inference.defect_mask`).
    With ``tiling`` (a model trained on crops) each image is predicted whole or by sliding
    windows, as the model file says (:func:`mr2unet.models.tiling.tile_logits`;
    ``batch_size`` windows at a time).
    """
    model.eval().to(device)
    masks, probs = [], []
    step = 1 if tiling else batch_size
    for start in tqdm(range(0, len(images), step), desc="predict", unit="image" if tiling
                      else "batch", disable=not progress):
        batch = torch.from_numpy(np.ascontiguousarray(images[start:start + step]))
        x = to_input(batch.to(device))
        logits = (model(x) if tiling is None else
                  tile_logits(model, x, tiling, batch_size))
        masks.append(defect_mask(logits, threshold).cpu())
        probs.append(defect_probability(logits).cpu())
    if not masks:
        empty = np.zeros((0, *images.shape[1:3]))
        return empty.astype(np.uint8), empty.astype(np.float32)
    return torch.cat(masks).numpy(), torch.cat(probs).numpy()


def predict_masks(model: nn.Module, images: np.ndarray, device: torch.device,
                  batch_size: int = 32, progress: bool = True,
                  threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """uint8 ``(N, S, S, 3)`` -> uint8 ``(N, S, S)`` masks (1 = defect; 0.5 = argmax)."""
    return predict_maps(model, images, device, batch_size, progress, threshold)[0]


def evaluate(model: nn.Module, split: PreparedSplit, device: torch.device,
             batch_size: int = 32, progress: bool = True, tiling: Tiling | None = None,
             threshold: float = DEFAULT_THRESHOLD) -> Evaluation:
    """Predict every image of ``split`` (by sliding windows with ``tiling``; masks at
    ``threshold``), count TP/FP/FN against its mask, keep the quantised defect
    probabilities."""
    _require_images(len(split))
    preds, probs = predict_maps(model, split.images, device, batch_size, progress,
                                threshold=threshold, tiling=tiling)
    counts = confusion_counts(torch.from_numpy(preds), torch.from_numpy(split.masks)).numpy()
    return Evaluation(counts=counts, predictions=preds, probabilities=quantise(probs))


# -------------------------------------------------------------------------- summaries


def _round(scores: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), DECIMALS) for k, v in scores.items()}


def _rounded(tree: Any) -> Any:
    """``tree`` with every float rounded to :data:`DECIMALS` (dicts walked)."""
    if isinstance(tree, dict):
        return {k: _rounded(v) for k, v in tree.items()}
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
    a collapsed network's scores are those of an empty mask (mr2unet.training.collapse).
    """
    return {"collapsed": evaluation_collapsed(counts), "missed_images": missed_images(counts),
            "defective_images": defective_images(counts)}


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
    for c in names:
        scores, labels = scored_pixels(levels[categories == c], masks[categories == c])
        ranking[c] = _round(_with_aupro(pixel_auroc_ap(scores, labels),
                                        levels[categories == c], masks[categories == c]))
        found = oracle_threshold(scores, labels, PROB_LEVELS)
        if found:
            oracle[c] = _round(found)
        pixels[c] = {"scored_pixels": int(labels.size), "defect_pixels": int(labels.sum())}
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
    _require_images(len(counts))
    names = sorted(set(np.asarray(categories).tolist()))
    scored = np.ones(len(counts), bool) if good is None else ~np.asarray(good, bool)
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
    if levels is not None:
        if masks is None:
            raise ValueError("summarise: levels need the ground-truth masks")
        ranking, extra = threshold_free(levels, masks, categories)
        primary["mean"].update(ranking["mean"])
        for c in names:
            primary["per_category"][c].update(ranking["per_category"][c])
            pooled["per_category"][c].update(extra["per_category"][c])
        pooled["all_images"].update(extra["all_images"])
        pooled["single_class_categories"] = extra["single_class_categories"]
        pooled["oracle"] = extra["oracle"]
        good = ~image_metrics.defective(masks) if good is None else good
        found = None if predictions is None else image_level(
            levels, predictions, masks, categories, good, image_score, min_defect_area)
        if found is not None:
            primary["mean"].update(found[0]["mean"])
            for c in names:
                primary["per_category"][c].update(found[0]["per_category"][c])
            pooled["image_level"] = found[1]
    return primary, pooled


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


# ------------------------------------------------------------------------------ files


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


@dataclass(frozen=True)
class Settings:
    """The image-level and verdict knobs of ``params.yaml: evaluate`` (docs/params.md)."""

    image_score: str = "max_smoothed"
    min_defect_area: int = 1
    fit_for_use: dict[str, float] = field(default_factory=lambda: dict(verdicts.FIT_FOR_USE))

    @classmethod
    def from_params(cls, cfg: dict[str, Any]) -> Settings:
        return cls(cfg["image_score"], int(cfg["min_defect_area"]),
                   {**verdicts.FIT_FOR_USE, **cfg["fit_for_use"]})


def good_images(split: PreparedSplit, manifest: Path | None = None) -> np.ndarray | None:
    """Boolean ``(N,)``: which test images are good parts (``prepare.good_images``), from
    the ``good`` column of ``manifest`` (``data/prepared/manifest.csv``, matched on
    ``image`` = the split's ``sources``); None when the file has no such column (then
    :func:`summarise` takes an image whose mask holds no defect pixel as good for the
    image-level scores, and scores every image's IOU as the paper does).
    """
    if manifest is not None and manifest.is_file():
        table = pd.read_csv(manifest)
        if "good" in table.columns:
            flags = table["good"].astype(str).str.lower().isin(("true", "1", "yes"))
            by_source = dict(zip(table["image"].astype(str), flags, strict=True))
            missing = [s for s in split.sources.tolist() if s not in by_source]
            if missing:
                raise UserError(f"{manifest} does not list test image {missing[0]}: run "
                                "`dvc repro prepare` again.")
            return np.array([bool(by_source[s]) for s in split.sources.tolist()], bool)
    return None


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
    """The pooled file's ``verdict`` block: the verdict, its reason and figures, and
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
            "fit_for_use": dict(fit_for_use), "baselines": _rounded(found),
            "bootstrap": {"resamples": verdicts.N_RESAMPLES, "seed": verdicts.SEED,
                          "confidence": verdicts.CONFIDENCE,
                          "method": "percentile, images resampled within each category"}}


def write_outputs(files: ModelFiles, split: PreparedSplit, result: Evaluation,
                  empty_score: float, cost: dict[str, Any] | None = None,
                  settings: Settings | None = None, train: PreparedSplit | None = None,
                  good: np.ndarray | None = None, threshold: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Write the evaluation files of one model; return the primary metrics.

    ``cost`` (:func:`mr2unet.evaluation.cost.model_cost`) goes into the pooled file as
    ``cost``; the ``verdict`` block (:func:`judge`) uses ``train`` for the intensity
    baseline when given; ``good`` (:func:`good_images`) says which test images are good;
    ``threshold`` (the model file's :func:`~mr2unet.models.checkpoint.threshold_record`,
    where it has one) goes into the pooled file as ``threshold``.
    """
    settings = settings or Settings()
    primary, pooled = summarise(result.counts, split.categories, empty_score,
                                result.probabilities, split.masks, result.predictions, good,
                                settings.image_score, settings.min_defect_area)
    if cost is not None:
        pooled["cost"] = cost
    if threshold is not None:  # absent for a model at the default 0.5 (files as before)
        pooled["threshold"] = _rounded(threshold)
    pooled["verdict"] = judge(primary, split, result.probabilities, train, empty_score,
                              settings.fit_for_use, good, result.predictions,
                              settings.min_defect_area)
    write_json(files.metrics, primary)
    write_json(files.pooled, pooled)
    files.per_image.parent.mkdir(parents=True, exist_ok=True)
    per_image_table(split, result.counts, empty_score).to_csv(
        files.per_image, index=False, lineterminator="\n")
    # np.savez writes fixed zip timestamps: equal masks give byte-identical files.
    with files.predictions.open("wb") as fh:
        np.savez_compressed(fh, predictions=result.predictions)
    if result.probabilities is not None:
        with files.probabilities.open("wb") as fh:
            np.savez_compressed(fh, probabilities=result.probabilities)
    return primary


def read_verdict(files: ModelFiles) -> dict[str, Any]:
    """The ``verdict`` block of ``metrics/pooled/<model>.json`` (empty when absent)."""
    return json.loads(files.pooled.read_text()).get("verdict", {})


def verdict_tags(found: dict[str, Any]) -> dict[str, str]:
    """MLflow tags of the verdict block: ``verdict``, ``verdict_reason`` and, where the
    block has them, ``verdict_false_alarms`` (``3 of 4 (75 %, 95 % interval 0.19-0.99),
    budget 0.1`` or the not-measured note)."""
    if not found:
        return {}
    tags = {"verdict": str(found["verdict"]), "verdict_reason": str(found["reason"])}
    alarms = found.get("false_alarms")
    if alarms:
        tags["verdict_false_alarms"] = (
            f"{verdicts.counts_text(alarms)}, budget {alarms['budget']:g}"
            if alarms["measured"] else verdicts.NOT_MEASURED)
    return tags


def verdict_warning(arch: str, found: dict[str, Any]) -> str | None:
    """The stage's one warning for a network that is not learned or weak, else None."""
    if found.get("verdict") in (None, verdicts.LEARNED):
        return None
    return f"{verdicts.sentence(arch, found)} {verdicts.ADVICE[0].upper()}{verdicts.ADVICE[1:]}."


def read_probabilities(path: Path) -> np.ndarray:
    """The uint8 ``(N, S, S)`` levels of ``data/eval/<model>_prob.npz``; divide by 255
    (:func:`dequantise`) for probabilities."""
    with np.load(path) as data:
        return data["probabilities"]


def timing_record(model: nn.Module, size: int, device: torch.device,
                  run_info: dict[str, Any], tiling: Tiling | None = None,
                  image_shape: tuple[int, int] | None = None, batch_size: int = 32
                  ) -> dict[str, Any]:
    """``metrics/timing/<model>.json``: inference latencies and the training time; for a
    model trained on crops (``tiling``) also ``latency_per_image``: ms per whole
    ``image_shape`` test image, predicted as it is evaluated.

    Measurements, different on every run: kept out of the files CI compares byte for byte.
    """
    import platform

    from mr2unet.evaluation.cost import image_latency, latencies

    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine())
    record: dict[str, Any] = {
        "device": str(device), "device_name": name,
        "cpu_threads": torch.get_num_threads() if device.type == "cpu" else None,
        "input_size": int(size), "precision": "fp32",
        "latency": latencies(model, size),
    }
    if tiling is not None and image_shape is not None:
        record["latency_per_image"] = image_latency(model, *image_shape, tiling, batch_size)
    for key in ("train_seconds", "train_device"):
        if key in run_info:
            record[key] = run_info[key]
    return record


def check_image_size(payload: dict[str, Any], split: PreparedSplit, path: Path) -> None:
    """The model must have been trained at the prepared test images' size (a tiled model:
    on crops of them)."""
    size = int(split.images.shape[1])
    tiling = tiling_of(payload)
    if tiling is not None:
        if tiling.tile > size:
            raise UserError(f"{path} was trained on {tiling.tile}px crops but the test split "
                            f"holds {size}px images: run `dvc repro` to retrain it.")
        return
    if int(payload["image_size"]) != size:
        raise UserError(f"{path} was trained on {payload['image_size']}px images but the test "
                        f"split holds {size}px images: run `dvc repro` to retrain it.")


def run_evaluation(params: dict[str, Any], arch: str, root: Path = Path(".")
                   ) -> dict[str, Any]:
    """The `evaluate@<arch>` stage's work: score the model and write its files.

    Returns the primary metrics; the stage script logs them to MLflow when tracking is on.
    """
    from mr2unet.models.checkpoint import load_model, stored_threshold, threshold_record
    from mr2unet.training.speed import resolve_device, set_cpu_threads

    cfg = params["evaluate"]
    files = ModelFiles(arch, root)
    device = resolve_device(params["train"]["device"])
    set_cpu_threads(params["train"]["cpu_threads"])
    split = load_split(root / TEST_SPLIT)
    model, payload = load_model(files.checkpoint, device)
    check_image_size(payload, split, files.checkpoint)
    threshold = stored_threshold(payload)  # the model's own (0.5 = the argmax)
    log.info("evaluating %s on %d test images (%s), mask threshold %g", arch, len(split),
             device, threshold)
    tiling = tiling_of(payload)
    result = evaluate(model, split, device, cfg["batch_size"], tiling=tiling,
                      threshold=threshold)
    from mr2unet.config.provenance import read_run_info
    from mr2unet.evaluation.cost import model_cost

    size = tiling.tile if tiling else int(split.images.shape[1])  # the network's input
    primary = write_outputs(files, split, result, cfg["empty_score"], model_cost(model, size),
                            Settings.from_params(cfg), load_split(root / TRAIN_SPLIT),
                            good_images(split, root / MANIFEST), threshold_record(payload))
    warning = verdict_warning(arch, read_verdict(files))
    if warning:
        log.warning(warning)
    timing = timing_record(model, size, device, read_run_info(files.run_info), tiling,
                           split.images.shape[1:3], cfg["batch_size"])
    write_json(files.timing, timing)
    log.info("%s latency at %dpx on %s: %s ms/image (batch 1), %s ms/image (batch 32)", arch,
             size, device, timing["latency"]["batch_1"]["per_image_ms"],
             timing["latency"]["batch_32"]["per_image_ms"])
    if "latency_per_image" in timing:
        whole = timing["latency_per_image"]
        log.info("%s latency per %dx%d test image (%s): %s ms", arch, whole["width"],
                 whole["height"], whole["predict"], whole["per_image_ms"])
    return primary
