"""Turning uint8 images into network inputs, the same way in training and inference."""

from __future__ import annotations

import torch


def to_input(images_nhwc: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> float32 ``(N, 3, H, W)`` scaled to [0, 1]."""
    return images_nhwc.permute(0, 3, 1, 2).float().div_(255.0)
