"""Evaluating a trained model on the test split: per-image, per-category and mean scores.

Primary score (``metrics/<model>.json``): per category, the mean over its test images of
the per-image IOU / Dice of the defect class; ``mean`` = the plain mean of the category
values (how the paper's Mean row is computed).  Pooled scores (TP/FP/FN summed over a
category's images), image counts and empty-prediction counts go to
``metrics/pooled/<model>.json``; per-image scores to ``data/eval/<model>.csv`` and the
predicted masks to ``data/eval/<model>_pred.npz`` (read by the report).
docs/evaluation.md explains the choices.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from mr2unet.data.prepared import PreparedSplit, load_split
from mr2unet.errors import UserError
from mr2unet.metrics import (
    confusion_counts,
    dice_from_counts,
    iou_from_counts,
    mean_scores,
    pooled_scores,
)
from mr2unet.transforms import to_input

log = logging.getLogger(__name__)

# Six decimals: far below any real difference, and byte-stable files for `dvc metrics diff`.
DECIMALS = 6
TEST_SPLIT = Path("data/prepared/test.npz")


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


@dataclass(frozen=True)
class Evaluation:
    """Per-image counts and predictions of one model on one split."""

    counts: np.ndarray  # int64 (N, 3): TP, FP, FN of the defect class
    predictions: np.ndarray  # uint8 (N, S, S), 1 = defect


# ------------------------------------------------------------------------- inference


def _require_images(count: int) -> None:
    if count == 0:
        raise UserError("the test split is empty: check `data.categories` and "
                        "`split.test_fraction` in params.yaml, then `dvc repro prepare`.")


@torch.inference_mode()
def predict_masks(model: nn.Module, images: np.ndarray, device: torch.device,
                  batch_size: int = 32, progress: bool = True) -> np.ndarray:
    """uint8 ``(N, S, S, 3)`` -> uint8 ``(N, S, S)`` argmax masks (1 = defect)."""
    model.eval().to(device)
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc="predict", unit="batch",
                      disable=not progress):
        batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size]))
        logits = model(to_input(batch.to(device)))
        out.append(logits.argmax(1).to(torch.uint8).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, *images.shape[1:3]), np.uint8)


def evaluate(model: nn.Module, split: PreparedSplit, device: torch.device,
             batch_size: int = 32, progress: bool = True) -> Evaluation:
    """Predict every image of ``split`` and count TP/FP/FN against its mask."""
    _require_images(len(split))
    preds = predict_masks(model, split.images, device, batch_size, progress)
    counts = confusion_counts(torch.from_numpy(preds), torch.from_numpy(split.masks)).numpy()
    return Evaluation(counts=counts, predictions=preds)


# -------------------------------------------------------------------------- summaries


def _round(scores: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), DECIMALS) for k, v in scores.items()}


def _mean_of(per_category: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Plain (unweighted) mean of the categories' IOU and Dice."""
    return {k: float(np.mean([v[k] for v in per_category.values()])) for k in ("iou", "dice")}


def empty_counts(counts: np.ndarray) -> dict[str, int]:
    """Images whose prediction (TP + FP = 0) or ground truth (TP + FN = 0) is empty."""
    counts = np.asarray(counts).reshape(-1, 3)
    return {"empty_predictions": int(((counts[:, 0] + counts[:, 1]) == 0).sum()),
            "empty_ground_truth": int(((counts[:, 0] + counts[:, 2]) == 0).sum())}


def summarise(counts: np.ndarray, categories: np.ndarray, empty_score: float = 1.0
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(primary metrics, pooled scores and counts) from per-image ``(N, 3)`` counts.

    Primary: ``{"mean": {"iou", "dice"}, "per_category": {category: {"iou", "dice"}}}``,
    each category the mean of its images' scores, ``mean`` the plain mean of categories.
    Pooled: the same layout with TP/FP/FN summed per category, plus image counts,
    empty-prediction counts and ``all_images`` (pooled over every test image).
    """
    counts, categories = np.asarray(counts).reshape(-1, 3), np.asarray(categories)
    _require_images(len(counts))
    names = sorted(set(np.asarray(categories).tolist()))
    primary_raw = {c: mean_scores(counts[categories == c], empty_score) for c in names}
    pooled_raw = {c: pooled_scores(counts[categories == c], empty_score) for c in names}
    primary = {"mean": _round(_mean_of(primary_raw)),
               "per_category": {c: _round(s) for c, s in primary_raw.items()}}
    pooled = {
        "mean": _round(_mean_of(pooled_raw)),
        "all_images": _round(pooled_scores(counts, empty_score)),
        "images": int(len(counts)),
        **empty_counts(counts),
        "per_category": {
            c: {**_round(pooled_raw[c]), "images": int((categories == c).sum()),
                **empty_counts(counts[categories == c])}
            for c in names},
    }
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


def write_outputs(files: ModelFiles, split: PreparedSplit, result: Evaluation,
                  empty_score: float) -> dict[str, Any]:
    """Write the four evaluation files of one model; return the primary metrics."""
    primary, pooled = summarise(result.counts, split.categories, empty_score)
    write_json(files.metrics, primary)
    write_json(files.pooled, pooled)
    files.per_image.parent.mkdir(parents=True, exist_ok=True)
    per_image_table(split, result.counts, empty_score).to_csv(
        files.per_image, index=False, lineterminator="\n")
    # np.savez writes fixed zip timestamps: equal masks give byte-identical files.
    with files.predictions.open("wb") as fh:
        np.savez_compressed(fh, predictions=result.predictions)
    return primary


def check_image_size(payload: dict[str, Any], split: PreparedSplit, path: Path) -> None:
    """The model must have been trained at the prepared test images' size."""
    size = int(split.images.shape[1])
    if int(payload["image_size"]) != size:
        raise UserError(f"{path} was trained on {payload['image_size']}px images but the test "
                        f"split holds {size}px images: run `dvc repro` to retrain it.")


def run_evaluation(params: dict[str, Any], arch: str, root: Path = Path(".")
                   ) -> dict[str, Any]:
    """The `evaluate@<arch>` stage's work: score the model and write its files.

    Returns the primary metrics; the stage script logs them to MLflow when tracking is on.
    """
    from mr2unet.checkpoint import load_model
    from mr2unet.train import resolve_device, set_cpu_threads

    cfg = params["evaluate"]
    files = ModelFiles(arch, root)
    device = resolve_device(params["train"]["device"])
    set_cpu_threads(params["train"]["cpu_threads"])
    split = load_split(root / TEST_SPLIT)
    model, payload = load_model(files.checkpoint, device)
    check_image_size(payload, split, files.checkpoint)
    log.info("evaluating %s on %d test images (%s)", arch, len(split), device)
    result = evaluate(model, split, device, cfg["batch_size"])
    return write_outputs(files, split, result, cfg["empty_score"])
