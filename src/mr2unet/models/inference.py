"""From a network's two-class logits to what users consume: defect probability and masks.

Shared by evaluation, ``mr2unet predict``, the MLflow pyfunc and the ONNX check, so
that every path turns logits into masks the same way.

For two classes the softmax probability of the defect class is a logistic function of
the logit difference, ``p = softmax(z)_1 = σ(z_1 - z_0)``, so the mask at threshold
``t`` is ``p > t  ⇔  z_1 - z_0 > log(t / (1 - t))``.  Comparing logits instead of the
rounded probability makes ``t = 0.5`` exactly the argmax (``z_1 > z_0``; a tie is
background, as ``argmax`` picks the first class).
"""

from __future__ import annotations

import math

import torch

DEFAULT_THRESHOLD = 0.5


def check_threshold(threshold: float) -> float:
    """``threshold`` as a float strictly between 0 and 1, else ValueError."""
    value = float(threshold)
    if not 0.0 < value < 1.0:
        raise ValueError(f"threshold must be strictly between 0 and 1, got {threshold!r}")
    return value


def defect_probability(logits: torch.Tensor) -> torch.Tensor:
    """Softmax probability of the defect class: ``(N, 2, H, W)`` -> float32 ``(N, H, W)``."""
    return logits.float().softmax(1)[:, 1]


def defect_mask(logits: torch.Tensor, threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """uint8 ``(N, H, W)`` mask, 1 where the defect probability exceeds ``threshold``."""
    t = check_threshold(threshold)
    z = logits.float()
    return (z[:, 1] - z[:, 0] > math.log(t / (1.0 - t))).to(torch.uint8)
