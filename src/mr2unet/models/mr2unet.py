"""MR2U-Net (Chen, Kolekar & Kim, section 3): multi-scale recurrent residual U-Net.

Every convolutional block of U-Net becomes a :class:`MultiScaleRecurrentResidualBlock`
(three chained recurrent 3×3 units, concatenated, plus a 1×1 residual connection: the
MultiResUNet block of Ibtehaz & Rahman 2020 built from the recurrent convolutional layers
of R2U-Net, Alom et al. 2018) and every skip a :class:`ResidualPath`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mr2unet.errors import UserError
from mr2unet.models.blocks import ConvBN
from mr2unet.models.ushape import UShapedNet, level_widths

LEVELS = 5


class RecurrentConv(nn.Module):
    """Recurrent convolutional layer unrolled for ``t`` steps (paper eq. 1-2).

    ``h(0) = ReLU(BN_0(w_f * x))``,
    ``h(k) = ReLU(BN_k(w_f * x + w_r * h(k-1)))`` for ``k = 1..t``; the output is ``h(t)``.

    One feed-forward (``w_f``) and one recurrent (``w_r``) 3×3 kernel, shared by all steps
    (it is a recurrent layer: eq. 1 has one of each), so ``t = 3`` gives the paper's
    feed-forward sub-network of depth 1 to 4.  ``w_f * x`` is computed once.  Eq. 1's bias
    ``b_k`` is BN_k's shift ``β``; each step has its own BN because the statistics of
    ``h(k)`` change with ``k``.
    """

    def __init__(self, in_ch: int, out_ch: int, steps: int = 3) -> None:
        super().__init__()
        self.feed_forward = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.recurrent = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.norms = nn.ModuleList(nn.BatchNorm2d(out_ch) for _ in range(steps + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        drive = self.feed_forward(x)
        state = F.relu(self.norms[0](drive), inplace=True)
        for norm in self.norms[1:]:
            state = F.relu(norm(self.recurrent(state) + drive), inplace=True)
        return state


def multiscale_widths(width: int) -> tuple[int, int, int]:
    """Split ``width`` into about 1/6, 1/3 and 1/2 (MultiResUNet), each at least 1.

    ``round(W/6)``, ``round(W/3)`` and the rest, so the three add up to ``W`` whenever
    ``W >= 3`` (64 -> 11, 21, 32; 8 -> 1, 3, 4); below that each keeps 1 channel.
    """
    first = max(1, round(width / 6))
    second = max(1, round(width / 3))
    return first, second, max(1, width - first - second)


class MultiScaleRecurrentResidualBlock(nn.Module):
    """The paper's block (Fig. 3, eq. 1-3).

    ``u1 = R_1(x)``, ``u2 = R_2(u1)``, ``u3 = R_3(u2)`` with ``R`` a :class:`RecurrentConv`
    (chained 3×3 units: receptive fields of about 3×3, 5×5 and 7×7 at ``t = 0``),
    ``y = ReLU(BN([u1, u2, u3]) + BN(W_1×1 * x))``: eq. 3's residual ``x_{n+1} = x_n + f(M)``
    with a 1×1 projection because input and output widths differ (as in MultiResUNet).
    The unit widths split ``out_ch`` by :func:`multiscale_widths`.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, steps: int = 3) -> None:
        super().__init__()
        if stride != 1:
            raise ValueError("MR2U-Net down-samples by max-pooling: stride must be 1")
        w1, w2, w3 = multiscale_widths(out_ch)
        self.unit1 = RecurrentConv(in_ch, w1, steps)
        self.unit2 = RecurrentConv(w1, w2, steps)
        self.unit3 = RecurrentConv(w2, w3, steps)
        self.norm = nn.BatchNorm2d(w1 + w2 + w3)
        self.shortcut = ConvBN(in_ch, w1 + w2 + w3, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u1 = self.unit1(x)
        u2 = self.unit2(u1)
        u3 = self.unit3(u2)
        return F.relu(self.norm(torch.cat([u1, u2, u3], dim=1)) + self.shortcut(x),
                      inplace=True)


class ResidualPathUnit(nn.Module):
    """One unit of a residual path (MultiResUNet): ``y = ReLU(BN(W_3×3 * x) + BN(W_1×1 * x))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = ConvBN(channels, channels, kernel=3)
        self.shortcut = ConvBN(channels, channels, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x) + self.shortcut(x), inplace=True)


class ResidualPath(nn.Sequential):
    """``length`` chained :class:`ResidualPathUnit` replacing a plain skip connection.

    Shallow skips get longer paths (4, 3, 2, 1 from level 0 down) to narrow the semantic
    gap between low-level encoder features and the decoder features they meet.  A length
    of 0 is a plain skip.
    """

    def __init__(self, channels: int, length: int) -> None:
        super().__init__(*(ResidualPathUnit(channels) for _ in range(length)))


def build(in_channels: int = 3, num_classes: int = 2, base_width: int = 64,
          recurrent_steps: int = 3, respath_lengths: Sequence[int] = (4, 3, 2, 1)
          ) -> UShapedNet:
    """MR2U-Net: five levels (U-Net's widths, 64-1024 at full size) of
    :class:`MultiScaleRecurrentResidualBlock` with ``t = recurrent_steps``, 2×2 max-pool
    down, :class:`~mr2unet.models.blocks.UpConv` up, and a :class:`ResidualPath` of
    ``respath_lengths[i]`` units on the skip of level ``i``."""
    if not isinstance(recurrent_steps, int) or recurrent_steps < 1:
        raise UserError(f"mr2unet option recurrent_steps must be an integer >= 1, "
                        f"got {recurrent_steps!r}")
    if not isinstance(base_width, int) or base_width < 3:
        raise UserError(f"mr2unet needs train.base_width >= 3 (its first block splits the "
                        f"width into three units of 1/6, 1/3 and 1/2), got {base_width!r}")
    lengths = list(respath_lengths)
    if len(lengths) != LEVELS - 1 or any(not isinstance(n, int) or n < 0 for n in lengths):
        raise UserError(f"mr2unet option respath_lengths must be {LEVELS - 1} integers >= 0 "
                        f"(one per skip, shallowest first), got {respath_lengths!r}")
    return UShapedNet(
        in_channels, num_classes, level_widths(base_width, LEVELS),
        block=lambda i, o, s: MultiScaleRecurrentResidualBlock(i, o, s, recurrent_steps),
        skip=lambda channels, level: ResidualPath(channels, lengths[level]),
    )
