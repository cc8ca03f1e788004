"""The test pixels' defect probabilities, stored compactly.

``data/eval/<model>_prob.npz`` keeps every test pixel's defect probability 8-bit quantised
(``round(255 p)``, error at most 1/510): the pixel AUROC / AP, AUPRO, the oracle threshold
and the image-level scores are computed from these stored values (docs/evaluation.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

# Stored probabilities: uint8 round(p * PROB_LEVELS); |dequantise(quantise(p)) - p| <= 1/510.
PROB_LEVELS = 255


def quantise(probability: np.ndarray | torch.Tensor) -> np.ndarray:
    """Probabilities in [0, 1] -> uint8 ``round(255 p)`` (error at most 1/510)."""
    if isinstance(probability, torch.Tensor):
        probability = probability.detach().cpu().numpy()
    p = np.clip(np.asarray(probability, dtype=np.float32), 0.0, 1.0)
    return np.rint(p * np.float32(PROB_LEVELS)).astype(np.uint8)  # half to even


def dequantise(levels: np.ndarray) -> np.ndarray:
    """uint8 levels -> float32 probabilities ``levels / 255``."""
    return np.asarray(levels, dtype=np.float32) / PROB_LEVELS


def read_probabilities(path: Path) -> np.ndarray:
    """The uint8 ``(N, S, S)`` levels of ``data/eval/<model>_prob.npz``; divide by 255
    (:func:`dequantise`) for probabilities."""
    with np.load(path) as data:
        return data["probabilities"]
