"""Predicting the test split: masks, defect probabilities and per-image TP / FP / FN.

A model trained on crops (``tiling``) predicts each test image whole or by sliding windows,
as its model file says (:mod:`mr2unet.models.tiling`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mr2unet.data.prepared import PreparedSplit
from mr2unet.data.transforms import to_input
from mr2unet.errors import UserError
from mr2unet.evaluation.probabilities import quantise
from mr2unet.metrics.segmentation import confusion_counts, content_boxes
from mr2unet.models.inference import DEFAULT_THRESHOLD, defect_mask, defect_probability
from mr2unet.models.tiling import Tiling, tile_logits, tiling_of


@dataclass(frozen=True)
class Evaluation:
    """Per-image counts and predictions of one model on one split."""

    counts: np.ndarray  # int64 (N, 3): TP, FP, FN of the defect class
    predictions: np.ndarray  # uint8 (N, S, S), 1 = defect
    probabilities: np.ndarray | None = None  # uint8 (N, S, S): quantise(defect probability)


def require_images(count: int) -> None:
    if count == 0:
        raise UserError("the test split is empty: check `data.categories` and "
                        "`split.test_fraction` in params.yaml, then `dvc repro prepare`.")


@torch.inference_mode()
def predict_maps(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 32,
            progress: bool = True, threshold: float = DEFAULT_THRESHOLD,
            tiling: Tiling | None = None, masks: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``(N, H, W, 3)`` -> (uint8 masks, float32 defect probabilities), ``(N, H, W)``.

    The mask is 1 where the defect probability exceeds ``threshold``; at the default 0.5
    it is exactly the argmax of the two logits (:func:`mr2unet.models.inference.defect_mask`).
    With ``tiling`` (a model trained on crops) each image is predicted whole or by sliding
    windows, as the model file says (:func:`mr2unet.models.tiling.tile_logits`;
    ``batch_size`` windows at a time). Given the split's ``masks`` too, a tiled model
    predicts only each image's content
    (:func:`~mr2unet.metrics.segmentation.content_boxes`: the rectangle that is not
    padding), the image as
    ``mr2unet predict`` sees it, and the padding gets probability 0: a 544x384 image on its
    544 px square is 29 % less to compute, and the scores are those of the masks a line
    would get.
    """
    model.eval().to(device)
    predicted, probs = [], []
    step = 1 if tiling else batch_size
    boxes = (content_boxes(torch.from_numpy(np.asarray(masks))).tolist()
             if tiling is not None and masks is not None else None)
    for start in tqdm(range(0, len(images), step), desc="predict", unit="image" if tiling
                      else "batch", disable=not progress):
        batch = torch.from_numpy(np.ascontiguousarray(images[start:start + step]))
        x = to_input(batch.to(device))
        if tiling is None:
            logits = model(x)
        elif boxes is None:
            logits = tile_logits(model, x, tiling, batch_size)
        else:
            top, left, bottom, right = boxes[start]
            logits = torch.zeros(1, 2, *x.shape[-2:], device=x.device)
            logits[:, 1] = -torch.inf  # the padding: probability 0
            logits[:, :, top:bottom, left:right] = tile_logits(
                model, x[:, :, top:bottom, left:right].contiguous(), tiling, batch_size)
        predicted.append(defect_mask(logits, threshold).cpu())
        probs.append(defect_probability(logits).cpu())
    if not predicted:
        empty = np.zeros((0, *images.shape[1:3]))
        return empty.astype(np.uint8), empty.astype(np.float32)
    return torch.cat(predicted).numpy(), torch.cat(probs).numpy()


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
    require_images(len(split))
    preds, probs = predict_maps(model, split.images, device, batch_size, progress,
                                threshold=threshold, tiling=tiling, masks=split.masks)
    counts = confusion_counts(torch.from_numpy(preds), torch.from_numpy(split.masks)).numpy()
    return Evaluation(counts=counts, predictions=preds, probabilities=quantise(probs))


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
