"""U-Net (Ronneberger et al. 2015), with BN and 'same' padding as in common practice."""

from __future__ import annotations

from mr2unet.models.blocks import DoubleConv
from mr2unet.models.ushape import UShapedNet, level_widths


def build(in_channels: int = 3, num_classes: int = 2, base_width: int = 64) -> UShapedNet:
    """Five levels of :class:`DoubleConv` (64-1024 at full size), 2×2 max-pool down,
    :class:`~mr2unet.models.blocks.UpConv` up, concatenated identity skips."""
    return UShapedNet(in_channels, num_classes, level_widths(base_width, 5), DoubleConv)
