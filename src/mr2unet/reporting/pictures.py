"""Small RGB pictures of a prediction, shared by the report and ``mr2unet predict``.

Kept apart from the report so that ``mr2unet predict`` does not import the report's
statistics (scipy) to tint a mask.
"""

from __future__ import annotations

import numpy as np

RED = np.array([230, 30, 30], np.float32)
# Prediction tiles of the report's sample grid: correct defect pixels, false alarms, misses.
TP_COLOUR, FP_COLOUR, FN_COLOUR = (255, 255, 255), (230, 40, 40), (40, 90, 230)


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Tint the defect pixels of an RGB ``image`` red: ``0.4 · pixel + 0.6 · RED`` where
    ``mask`` is set, the pixel unchanged elsewhere (uint8, rounded)."""
    out = image.astype(np.float32)
    sel = mask.astype(bool)
    out[sel] = 0.4 * out[sel] + 0.6 * RED
    return np.round(out).astype(np.uint8)


def error_map(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """RGB tile of a prediction: TP white, FP red, FN blue, TN black."""
    pred, target = pred.astype(bool), target.astype(bool)
    tile = np.zeros((*pred.shape, 3), np.uint8)
    tile[pred & target] = TP_COLOUR
    tile[pred & ~target] = FP_COLOUR
    tile[~pred & target] = FN_COLOUR
    return tile
