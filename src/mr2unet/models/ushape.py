"""The encoder-decoder ("U") that all four networks assemble from their own blocks.

Encoder level ``i`` (``i = 0..L-1``) outputs ``widths[i]`` channels at ``1/2^i`` of the
input size.  Each decoder level up-samples the deeper features, merges them with the
(optionally transformed and gated) encoder features of its level by concatenation and
applies a block; a 1×1 convolution gives the per-pixel class logits.  The networks differ
only in the factories they pass in (see ``unet.py``, ``resunet.py``, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from mr2unet.errors import UserError
from mr2unet.models.blocks import UpConv

# Every network accepts H and W that are multiples of this (4 down-samplings at most),
# so one rule holds whichever network is trained (params.yaml prepare.image_size).
SIZE_MULTIPLE = 16

# block(in_channels, out_channels, stride) -> module
BlockFactory = Callable[[int, int, int], nn.Module]
# skip(channels, level) -> module applied to the encoder features of that level
SkipFactory = Callable[[int, int], nn.Module]
# gate(gate_channels, skip_channels) -> module(gate, skip) -> gated skip
GateFactory = Callable[[int, int], nn.Module]


class InputSizeError(UserError, ValueError):
    """The input's height or width is not a multiple of :data:`SIZE_MULTIPLE`."""


def level_widths(base_width: int, levels: int) -> list[int]:
    """``[w, 2w, 4w, ...]``: the width doubles at every level (64-1024 for 5 levels)."""
    return [base_width * 2**i for i in range(levels)]


def check_input_size(height: int, width: int) -> None:
    """Raise :class:`InputSizeError` unless both sides are multiples of ``SIZE_MULTIPLE``."""
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
        raise InputSizeError(
            f"input size {height}x{width} is not a multiple of {SIZE_MULTIPLE}: resize or "
            f"pad the images to a multiple of {SIZE_MULTIPLE} (e.g. prepare.image_size: 128)")


class DecoderStage(nn.Module):
    """One decoder level: ``u = Up(x)``, ``s' = G(u, S(s))``, ``y = B([s', u])``.

    ``Up`` is the up-sampling, ``S`` the skip transform (identity for a plain U-Net skip),
    ``G`` the optional attention gate (``s' = S(s)`` without one) and ``B`` the block.
    """

    def __init__(self, up: nn.Module, block: nn.Module, skip: nn.Module | None = None,
                 gate: nn.Module | None = None) -> None:
        super().__init__()
        self.up = up
        self.skip = skip if skip is not None else nn.Identity()
        self.gate = gate
        self.block = block

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        s = self.skip(skip)
        if self.gate is not None:
            s = self.gate(x, s)
        return self.block(torch.cat([s, x], dim=1))


class UShapedNet(nn.Module):
    """``(N, C_in, H, W)`` -> ``(N, classes, H, W)`` logits; H, W multiples of 16.

    ``downsample``: ``"pool"`` (2×2 max-pool before the block, U-Net) or ``"stride"`` (the
    block's first convolution has stride 2, ResUNet).  ``up_conv``: up-sample with
    :class:`UpConv` (halves the width) or, if False, with plain nearest ×2 up-sampling
    (keeps the width, ResUNet).  ``first_block`` replaces ``block`` at encoder level 0.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: Sequence[int],
        block: BlockFactory,
        *,
        first_block: BlockFactory | None = None,
        downsample: str = "pool",
        up_conv: bool = True,
        skip: SkipFactory | None = None,
        gate: GateFactory | None = None,
    ) -> None:
        super().__init__()
        if downsample not in ("pool", "stride"):
            raise ValueError(f"downsample must be 'pool' or 'stride', not {downsample!r}")
        if SIZE_MULTIPLE % 2 ** (len(widths) - 1):
            raise ValueError(f"{len(widths)} levels need inputs finer than {SIZE_MULTIPLE}")
        stride = 1 if downsample == "pool" else 2
        self.pool = nn.MaxPool2d(2) if downsample == "pool" else nn.Identity()
        self.encoder = nn.ModuleList(
            [(first_block or block)(in_channels, widths[0], 1)]
            + [block(widths[i - 1], widths[i], stride) for i in range(1, len(widths))])
        stages = []
        for i in range(len(widths) - 2, -1, -1):  # deepest decoder level first
            up_width = widths[i] if up_conv else widths[i + 1]
            stages.append(DecoderStage(
                up=UpConv(widths[i + 1], widths[i]) if up_conv
                else nn.Upsample(scale_factor=2, mode="nearest"),
                block=block(widths[i] + up_width, widths[i], 1),
                skip=skip(widths[i], i) if skip else None,
                gate=gate(up_width, widths[i]) if gate else None,
            ))
        self.decoder = nn.ModuleList(stages)
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x.shape[-2], x.shape[-1])
        features = []
        for level, block in enumerate(self.encoder):
            x = block(x if level == 0 else self.pool(x))
            features.append(x)
        x = features.pop()
        for stage in self.decoder:
            x = stage(x, features.pop())
        return self.head(x)
