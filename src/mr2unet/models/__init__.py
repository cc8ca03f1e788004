"""The four segmentation networks, created by name.

    >>> from mr2unet.models import build_model
    >>> model = build_model("mr2unet", base_width=8)      # (N, 3, H, W) -> (N, 2, H, W)

``base_width`` is the width of the first encoder level (64 = the papers' full size);
each deeper level doubles it.  See docs/models.md for the architectures and choices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from mr2unet.errors import UserError
from mr2unet.models.blocks import (
    AttentionGate,
    DoubleConv,
    MultiScaleRecurrentResidualBlock,
    PreActResidualUnit,
    ResidualPath,
)
from mr2unet.models.ushape import UShapedNet


def _widths(base_width: int, levels: int) -> list[int]:
    return [base_width * 2**i for i in range(levels)]


def unet(in_channels: int = 3, num_classes: int = 2, base_width: int = 64) -> UShapedNet:
    """U-Net (Ronneberger et al. 2015): double 3×3 conv blocks, max-pool, 5 levels."""
    return UShapedNet(in_channels, num_classes, _widths(base_width, 5), DoubleConv)


def resunet(in_channels: int = 3, num_classes: int = 2, base_width: int = 64) -> UShapedNet:
    """Deep residual U-Net (Zhang et al. 2018): pre-activation residual units, stride-2
    down-sampling, 4 levels (64-512 at full size)."""
    return UShapedNet(
        in_channels, num_classes, _widths(base_width, 4),
        block=lambda i, o, s: PreActResidualUnit(i, o, stride=s),
        first_block=lambda i, o, s: PreActResidualUnit(i, o, stride=s, first=True),
        downsample="stride",
    )


def attention_unet(in_channels: int = 3, num_classes: int = 2,
                   base_width: int = 64) -> UShapedNet:
    """Attention U-Net (Oktay et al. 2018): U-Net with additive attention gates on skips."""
    return UShapedNet(
        in_channels, num_classes, _widths(base_width, 5), DoubleConv,
        gate=lambda g, x: AttentionGate(g, x, max(1, x // 2)),
    )


def mr2unet(in_channels: int = 3, num_classes: int = 2, base_width: int = 64,
            recurrent_steps: int = 3, respath_lengths: tuple[int, ...] = (4, 3, 2, 1)
            ) -> UShapedNet:
    """MR2U-Net (the paper): multi-scale recurrent residual blocks everywhere, residual
    paths on the skips (lengths 4, 3, 2, 1 from the shallowest level)."""
    if recurrent_steps < 1:
        raise UserError(f"recurrent_steps must be >= 1, got {recurrent_steps}")
    return UShapedNet(
        in_channels, num_classes, _widths(base_width, 5),
        block=lambda i, o, s: MultiScaleRecurrentResidualBlock(i, o, s, recurrent_steps),
        skip=lambda channels, level: ResidualPath(channels, respath_lengths[level]),
    )


REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "unet": unet,
    "resunet": resunet,
    "attention_unet": attention_unet,
    "mr2unet": mr2unet,
}
MODEL_NAMES = tuple(REGISTRY)


def build_model(name: str, in_channels: int = 3, num_classes: int = 2, base_width: int = 64,
                **options: Any) -> nn.Module:
    """Create a network by name; ``options`` are architecture-specific (docs/models.md)."""
    if name not in REGISTRY:
        raise UserError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}")
    if base_width < 1:
        raise UserError(f"base_width must be >= 1, got {base_width}")
    try:
        return REGISTRY[name](in_channels=in_channels, num_classes=num_classes,
                              base_width=base_width, **options)
    except TypeError as exc:
        raise UserError(f"bad options for model {name!r}: {exc} "
                        f"(see train.model_options in params.yaml)") from None
