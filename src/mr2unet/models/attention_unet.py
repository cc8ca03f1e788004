"""Attention U-Net (Oktay et al. 2018): U-Net with additive attention gates on the skips."""

from __future__ import annotations

import torch
from torch import nn

from mr2unet.models.blocks import ConvBN, DoubleConv
from mr2unet.models.ushape import UShapedNet, level_widths


class AttentionGate(nn.Module):
    """Additive attention gate on a skip connection.

    ``α = σ(BN(ψ * ReLU(BN(W_g * g) + BN(W_x * x))))``, ``y = α ⊙ x``: ``g`` is the
    gating signal (the up-sampled decoder features, at the skip's resolution), ``x`` the
    encoder's skip features; ``W_g`` and ``W_x`` are 1×1 convolutions to ``inter_ch``
    channels and ``ψ`` a 1×1 convolution to a single attention map ``α ∈ (0, 1)``.
    """

    def __init__(self, gate_ch: int, skip_ch: int, inter_ch: int) -> None:
        super().__init__()
        self.w_g = ConvBN(gate_ch, inter_ch)
        self.w_x = ConvBN(skip_ch, inter_ch)
        self.psi = ConvBN(inter_ch, 1)

    def forward(self, gate: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        alpha = torch.sigmoid(self.psi(torch.relu(self.w_g(gate) + self.w_x(skip))))
        return skip * alpha


def build(in_channels: int = 3, num_classes: int = 2, base_width: int = 64) -> UShapedNet:
    """U-Net (:func:`mr2unet.models.unet.build`) with an :class:`AttentionGate` on each
    skip; the gate's intermediate width is half the skip's (at least 1 channel)."""
    return UShapedNet(
        in_channels, num_classes, level_widths(base_width, 5), DoubleConv,
        gate=lambda gate_ch, skip_ch: AttentionGate(gate_ch, skip_ch, max(1, skip_ch // 2)),
    )
