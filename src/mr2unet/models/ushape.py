"""The encoder-decoder that all four networks share; they differ only in their blocks.

Encoder level ``i`` (``i = 0..L``) produces ``widths[i]`` channels at ``1/2^i`` of the
input size; the decoder climbs back with :class:`UpConv`, merges the (optionally
transformed and gated) skip features by concatenation and applies a block; a 1×1
convolution gives the per-pixel class logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from mr2unet.models.blocks import UpConv

# block(in_channels, out_channels, stride) -> module
BlockFactory = Callable[[int, int, int], nn.Module]
# skip(channels, level) -> module applied to the encoder features of that level
SkipFactory = Callable[[int, int], nn.Module]
# gate(gate_channels, skip_channels) -> module(gate, skip) -> gated skip
GateFactory = Callable[[int, int], nn.Module]


class UShapedNet(nn.Module):
    """``(N, C_in, H, W)`` -> ``(N, classes, H, W)`` logits; H and W multiples of 2^L.

    ``downsample`` is ``"pool"`` (2×2 max-pool before the block, U-Net) or ``"stride"``
    (the block's first convolution has stride 2, ResUNet).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: Sequence[int],
        block: BlockFactory,
        downsample: str = "pool",
        first_block: BlockFactory | None = None,
        skip: SkipFactory | None = None,
        gate: GateFactory | None = None,
    ) -> None:
        super().__init__()
        if downsample not in ("pool", "stride"):
            raise ValueError(f"downsample must be 'pool' or 'stride', not {downsample!r}")
        self.factor = 2 ** (len(widths) - 1)
        self.pool = nn.MaxPool2d(2) if downsample == "pool" else nn.Identity()
        stride = 1 if downsample == "pool" else 2
        self.encoder = nn.ModuleList(
            [(first_block or block)(in_channels, widths[0], 1)]
            + [block(widths[i - 1], widths[i], stride) for i in range(1, len(widths))]
        )
        levels = range(len(widths) - 2, -1, -1)  # decoder, deepest first
        self.ups = nn.ModuleList(UpConv(widths[i + 1], widths[i]) for i in levels)
        self.skips = nn.ModuleList(
            skip(widths[i], i) if skip else nn.Identity() for i in levels)
        self.gates = nn.ModuleList(gate(widths[i], widths[i]) for i in levels) if gate else None
        self.decoder = nn.ModuleList(block(2 * widths[i], widths[i], 1) for i in levels)
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.factor or w % self.factor:
            raise ValueError(
                f"input size {h}x{w} is not a multiple of {self.factor}: "
                f"resize or pad the image (e.g. prepare.image_size: 128)")
        features = []
        for level, block in enumerate(self.encoder):
            x = block(x if level == 0 else self.pool(x))
            features.append(x)
        x = features.pop()
        for i, (up, skip, block) in enumerate(zip(self.ups, self.skips, self.decoder,
                                                   strict=True)):
            x = up(x)
            s = skip(features.pop())
            if self.gates is not None:
                s = self.gates[i](x, s)
            x = block(torch.cat([s, x], dim=1))
        return self.head(x)
