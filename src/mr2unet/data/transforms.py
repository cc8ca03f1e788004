"""Turning uint8 images into network inputs, the same way in training and inference."""

from __future__ import annotations

import torch


def to_input(images_nhwc: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> contiguous float32 ``(N, 3, H, W)`` scaled to [0, 1].

    Contiguous on purpose: the permuted view has channels-last strides, and oneDNN's CPU
    backward of a strided convolution on such input crashes in torch 2.13 (double free).
    """
    return images_nhwc.permute(0, 3, 1, 2).float().div_(255.0).contiguous()
