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
from mr2unet.models.kernels import BatchNorm2d, like_layout
from mr2unet.models.ushape import UShapedNet, level_widths

LEVELS = 5


RECURRENT_KERNELS = ("separate", "tied")
STEP_NORMS = ("per_step", "shared")


class RecurrentConv(nn.Module):
    """Recurrent convolutional layer unrolled for ``t`` steps (paper eq. 1-2).

    ``kernels="separate"`` (eq. 1, the default):
    ``h(0) = ReLU(BN_0(w_f * x))``,
    ``h(k) = ReLU(BN_k(w_f * x + w_r * h(k-1)))`` for ``k = 1..t``; the output is ``h(t)``.
    One feed-forward (``w_f``) and one recurrent (``w_r``) 3×3 kernel, shared by all steps
    (it is a recurrent layer: eq. 1 has one of each), so ``t = 3`` gives the paper's
    feed-forward sub-network of depth 1 to 4.  ``w_f * x`` is computed once.  Eq. 1's bias
    ``b_k`` is BN_k's shift ``β``.

    ``kernels="tied"`` (R2U-Net's popular code, which convolves ``x + h``):
    ``x' = P * x`` (a 1×1 projection to ``out_ch``, identity when the widths agree),
    ``h(0) = ReLU(BN_0(w * x'))``, ``h(k) = ReLU(BN_k(w * (x' + h(k-1))))``: one 3×3 kernel
    ``w`` plays both ``w_f`` and ``w_r``.

    ``norms="per_step"`` gives each step its own BN (the statistics of ``h(k)`` change
    with ``k``); ``"shared"`` uses one BN at every step, as R2U-Net's code does.
    """

    def __init__(self, in_ch: int, out_ch: int, steps: int = 3, kernels: str = "separate",
                 norms: str = "per_step") -> None:
        super().__init__()
        self.tied = kernels == "tied"
        if self.tied:
            self.project = (nn.Identity() if in_ch == out_ch
                            else nn.Conv2d(in_ch, out_ch, 1, bias=False))
        else:
            self.feed_forward = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.recurrent = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        count = steps + 1 if norms == "per_step" else 1
        self.norms = nn.ModuleList(BatchNorm2d(out_ch) for _ in range(count))
        self.steps = steps

    def _norm(self, step: int) -> nn.Module:
        return self.norms[min(step, len(self.norms) - 1)]

    def input_conv(self) -> nn.Conv2d | None:
        """The convolution that reads ``x`` (``w_f``, or the tied unit's projection ``P``;
        None when the projection is the identity)."""
        if self.tied:
            return None if isinstance(self.project, nn.Identity) else self.project
        return self.feed_forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.input_conv()
        return self.unroll(x if conv is None else conv(x))

    def unroll(self, drive: torch.Tensor) -> torch.Tensor:
        """The steps from ``w_f * x`` (separate kernels) or ``x' = P * x`` (tied)."""
        if self.tied:
            state = F.relu(self._norm(0)(self.recurrent(drive)), inplace=True)
            for k in range(1, self.steps + 1):
                state = F.relu(self._norm(k)(self.recurrent(drive + state)), inplace=True)
            return state
        state = F.relu(self._norm(0)(drive), inplace=True)
        for k in range(1, self.steps + 1):
            state = F.relu(self._norm(k)(self.recurrent(state) + drive), inplace=True)
        return state


def shared_input_conv(x: torch.Tensor, convs: Sequence[nn.Conv2d]) -> list[torch.Tensor]:
    """``[W_1 * x, W_2 * x, ...]`` as one convolution: the kernels concatenated along the
    output channels, each zero-padded to the largest (a 1×1 becomes the centre of a 3×3,
    which computes the same sums).  The weights are assembled at every call from the
    modules' own parameters, so gradients, optimiser state and checkpoints stay theirs.
    """
    size = max(c.kernel_size[0] for c in convs)
    weights = [F.pad(c.weight, [(size - c.kernel_size[0]) // 2] * 4) for c in convs]
    out = F.conv2d(x, torch.cat(weights), padding=size // 2)
    return list(out.split([c.out_channels for c in convs], dim=1))


def multiscale_widths(width: int, split: Sequence[float] = (1, 2, 3)) -> tuple[int, int, int]:
    """Split ``width`` in the proportions ``split`` (MultiResUNet: 1/6, 1/3, 1/2), each >= 1.

    ``round(W·a/s)``, ``round(W·b/s)`` and the rest (``s = a + b + c``), so the three add
    up to ``W`` whenever ``W >= 3`` (64 -> 11, 21, 32; 8 -> 1, 3, 4); below that each
    keeps 1 channel.
    """
    a, b, c = split
    total = a + b + c
    first = max(1, round(width * a / total))
    second = max(1, round(width * b / total))
    return first, second, max(1, width - first - second)


class MultiScaleRecurrentResidualBlock(nn.Module):
    """The paper's block (Fig. 3, eq. 1-3).

    ``u1 = R_1(x)``, ``u2 = R_2(u1)``, ``u3 = R_3(u2)`` with ``R`` a :class:`RecurrentConv`
    (chained 3×3 units: receptive fields of about 3×3, 5×5 and 7×7 at ``t = 0``),
    ``y = ReLU(BN([u1, u2, u3]) + BN(W_1×1 * x))``: eq. 3's residual ``x_{n+1} = x_n + f(M)``
    with a 1×1 projection because input and output widths differ (as in MultiResUNet).
    The unit widths split ``out_ch`` by :func:`multiscale_widths` in the proportions
    ``split``; ``kernels`` and ``norms`` are the units' (:class:`RecurrentConv`).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, steps: int = 3, *,
                 kernels: str = "separate", norms: str = "per_step",
                 split: Sequence[float] = (1, 2, 3)) -> None:
        super().__init__()
        if stride != 1:
            raise ValueError("MR2U-Net down-samples by max-pooling: stride must be 1")
        w1, w2, w3 = multiscale_widths(out_ch, split)
        self.unit1 = RecurrentConv(in_ch, w1, steps, kernels, norms)
        self.unit2 = RecurrentConv(w1, w2, steps, kernels, norms)
        self.unit3 = RecurrentConv(w2, w3, steps, kernels, norms)
        self.norm = BatchNorm2d(w1 + w2 + w3)
        self.shortcut = ConvBN(in_ch, w1 + w2 + w3, kernel=1)
        self.fused_convs = False  # see fuse_convolutions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.unit1.input_conv()
        if self.fused_convs and first is not None:  # both read x: one convolution
            drive, projected = shared_input_conv(x, [first, self.shortcut[0]])
            u1, shortcut = self.unit1.unroll(drive), self.shortcut[1](projected)
        else:
            u1, shortcut = self.unit1(x), self.shortcut(x)
        u2 = self.unit2(u1)
        u3 = self.unit3(u2)
        units = like_layout(torch.cat([u1, u2, u3], dim=1), x)  # a 1-channel u1 makes it NCHW
        return F.relu(self.norm(units) + shortcut, inplace=True)


class ResidualPathUnit(nn.Module):
    """One unit of a residual path (MultiResUNet): ``y = ReLU(BN(W_3×3 * x) + BN(W_1×1 * x))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = ConvBN(channels, channels, kernel=3)
        self.shortcut = ConvBN(channels, channels, kernel=1)
        self.fused_convs = False  # see fuse_convolutions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_convs:
            a, b = shared_input_conv(x, [self.conv[0], self.shortcut[0]])
            return F.relu(self.conv[1](a) + self.shortcut[1](b), inplace=True)
        return F.relu(self.conv(x) + self.shortcut(x), inplace=True)


class ResidualPath(nn.Sequential):
    """``length`` chained :class:`ResidualPathUnit` replacing a plain skip connection.

    Shallow skips get longer paths (4, 3, 2, 1 from level 0 down) to narrow the semantic
    gap between low-level encoder features and the decoder features they meet.  A length
    of 0 is a plain skip.
    """

    def __init__(self, channels: int, length: int) -> None:
        super().__init__(*(ResidualPathUnit(channels) for _ in range(length)))


def fuse_convolutions(model: nn.Module, enabled: bool = True) -> int:
    """Compute MR2U-Net's convolutions that read the same input as one call each (the
    first unit's input convolution with the block's 1×1 shortcut; a residual-path unit's
    3×3 with its 1×1), or, with ``enabled=False``, as separate calls again.

    The same function and the same parameters (outputs and gradients agree to the
    rounding, ``tests/test_models.py``); fewer, larger kernels, which pays where kernel
    launches dominate and costs where arithmetic does (a 1×1 padded to 3×3 does 9× its
    multiply-adds: slower on the CPU, docs/performance.md).  Returns how many modules it
    switched; any network without such modules is left as it is (0).
    """
    switched = 0
    for module in model.modules():
        if isinstance(module, MultiScaleRecurrentResidualBlock | ResidualPathUnit):
            module.fused_convs = enabled
            switched += 1
    return switched


def build(in_channels: int = 3, num_classes: int = 2, base_width: int = 64,
          recurrent_steps: int = 3, respath_lengths: Sequence[int] = (4, 3, 2, 1),
          width_multiplier: float = 1.0, recurrent_kernels: str = "separate",
          step_norms: str = "per_step", unit_split: Sequence[float] = (1, 2, 3)
          ) -> UShapedNet:
    """MR2U-Net: five levels of :class:`MultiScaleRecurrentResidualBlock` with
    ``t = recurrent_steps``, 2×2 max-pool down, :class:`~mr2unet.models.blocks.UpConv` up,
    and a :class:`ResidualPath` of ``respath_lengths[i]`` units on the skip of level ``i``.

    Level ``i`` is ``round(width_multiplier · base_width · 2^i)`` wide (1.0: U-Net's widths,
    64-1024 at full size; MultiResUNet's 1.67 widens every level).  ``recurrent_kernels``
    (``separate`` | ``tied``), ``step_norms`` (``per_step`` | ``shared``) and
    ``unit_split`` (the three units' proportions) are the readings docs/models.md
    ablates; the defaults are the committed network.
    """
    if not isinstance(recurrent_steps, int) or recurrent_steps < 1:
        raise UserError(f"mr2unet option recurrent_steps must be an integer >= 1, "
                        f"got {recurrent_steps!r}")
    lengths = list(respath_lengths)
    if len(lengths) != LEVELS - 1 or any(not isinstance(n, int) or n < 0 for n in lengths):
        raise UserError(f"mr2unet option respath_lengths must be {LEVELS - 1} integers >= 0 "
                        f"(one per skip, shallowest first), got {respath_lengths!r}")
    if (isinstance(width_multiplier, bool) or not isinstance(width_multiplier, int | float)
            or width_multiplier <= 0):
        raise UserError(f"mr2unet option width_multiplier must be a number > 0 (1.0: U-Net's "
                        f"widths, 1.67: MultiResUNet's), got {width_multiplier!r}")
    for key, value, valid in (("recurrent_kernels", recurrent_kernels, RECURRENT_KERNELS),
                              ("step_norms", step_norms, STEP_NORMS)):
        if value not in valid:
            raise UserError(f"mr2unet option {key} must be one of {', '.join(valid)}, "
                            f"got {value!r}")
    split = list(unit_split)
    if len(split) != 3 or any(isinstance(v, bool) or not isinstance(v, int | float) or v <= 0
                              for v in split):
        raise UserError(f"mr2unet option unit_split must be three numbers > 0 (the units' "
                        f"shares of a block's width; MultiResUNet: [1, 2, 3]), "
                        f"got {unit_split!r}")
    widths = [round(width_multiplier * w) for w in level_widths(base_width, LEVELS)]
    if not isinstance(base_width, int) or widths[0] < 3:
        raise UserError(f"mr2unet needs a first level at least 3 wide (its blocks split the "
                        f"width into three units), got train.base_width {base_width!r} x "
                        f"width_multiplier {width_multiplier!r}: use train.base_width >= 3")
    return UShapedNet(
        in_channels, num_classes, widths,
        block=lambda i, o, s: MultiScaleRecurrentResidualBlock(
            i, o, s, recurrent_steps, kernels=recurrent_kernels, norms=step_norms,
            split=split),
        skip=lambda channels, level: ResidualPath(channels, lengths[level]),
    )
