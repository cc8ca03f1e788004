"""Evaluating a trained model on the test split: per-image, per-category and mean scores.

Primary score (``metrics/<model>.json``): per category, the mean over its test images of
the per-image IOU / Dice of the defect class; ``mean`` = the plain mean of the category
values (how the paper's Mean row is computed). Pooled scores (TP/FP/FN summed over a
category's images) and counts go to ``metrics/pooled/<model>.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from mr2unet.data.prepared import PreparedSplit
from mr2unet.metrics import (
    confusion_counts,
    dice_from_counts,
    iou_from_counts,
    mean_scores,
    pooled_scores,
)
from mr2unet.transforms import to_input

DECIMALS = 6


@dataclass
class Evaluation:
    """Per-image counts and predictions of one model on one split."""

    counts: np.ndarray  # int64 (N, 3): TP, FP, FN
    predictions: np.ndarray  # uint8 (N, S, S)


@torch.inference_mode()
def predict_masks(model: nn.Module, images: np.ndarray, device: torch.device,
                  batch_size: int = 32, progress: bool = True) -> np.ndarray:
    """uint8 ``(N, S, S, 3)`` -> uint8 ``(N, S, S)`` argmax masks (1 = defect)."""
    model.eval().to(device)
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc="predict", unit="batch",
                      disable=not progress):
        batch = torch.from_numpy(images[start:start + batch_size]).to(device)
        out.append(model(to_input(batch)).argmax(1).to(torch.uint8).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, *images.shape[1:3]), np.uint8)


def evaluate(model: nn.Module, split: PreparedSplit, device: torch.device,
             batch_size: int = 32, progress: bool = True) -> Evaluation:
    preds = predict_masks(model, split.images, device, batch_size, progress)
    counts = confusion_counts(torch.from_numpy(preds), torch.from_numpy(split.masks)).numpy()
    return Evaluation(counts=counts, predictions=preds)


def _round(scores: dict[str, float]) -> dict[str, float]:
    return {k: round(v, DECIMALS) for k, v in scores.items()}


def summarise(counts: np.ndarray, categories: np.ndarray, empty_score: float = 1.0
              ) -> tuple[dict, dict]:
    """(primary metrics dict, pooled/counts dict) from per-image counts."""
    per_category, pooled = {}, {}
    for category in sorted(set(categories.tolist())):
        sel = counts[categories == category]
        per_category[category] = _round(mean_scores(sel, empty_score))
        pooled[category] = {
            **_round(pooled_scores(sel, empty_score)),
            "images": int(len(sel)),
            "empty_predictions": int(((sel[:, 0] + sel[:, 1]) == 0).sum()),
            "empty_ground_truth": int(((sel[:, 0] + sel[:, 2]) == 0).sum()),
        }
    mean = {k: round(float(np.mean([v[k] for v in per_category.values()])), DECIMALS)
            for k in ("iou", "dice")}
    primary = {"mean": mean, "per_category": per_category}
    pooled_all = {"mean": _round(pooled_scores(counts, empty_score)),
                  "images": int(len(counts)), "per_category": pooled}
    return primary, pooled_all


def per_image_table(split: PreparedSplit, counts: np.ndarray, empty_score: float = 1.0
                    ) -> pd.DataFrame:
    return pd.DataFrame({
        "source": split.sources, "category": split.categories,
        "defect_type": split.defect_types,
        "tp": counts[:, 0], "fp": counts[:, 1], "fn": counts[:, 2],
        "iou": np.round(iou_from_counts(counts, empty_score), DECIMALS),
        "dice": np.round(dice_from_counts(counts, empty_score), DECIMALS),
    })


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def flat_metrics(primary: dict) -> dict[str, float]:
    """``{"test_iou_mean": .., "test_iou_bottle": .., ...}`` for MLflow."""
    flat = {f"test_{k}_mean": v for k, v in primary["mean"].items()}
    for category, scores in primary["per_category"].items():
        flat.update({f"test_{k}_{category}": v for k, v in scores.items()})
    return flat
