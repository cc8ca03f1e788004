"""Building blocks shared by the four networks; each a small module with its equation.

Notation: ``W * x`` is a convolution, ``BN`` batch normalisation, ``σ`` the logistic
sigmoid, ``[a, b]`` channel concatenation.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBNReLU(nn.Sequential):
    """``y = ReLU(BN(W * x))`` with a ``k×k`` kernel, 'same' padding and optional stride."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class ConvBN(nn.Sequential):
    """``y = BN(W * x)``: a projection without activation (shortcuts, 1×1 convs)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(out_ch),
        )


class DoubleConv(nn.Sequential):
    """U-Net's block (Ronneberger et al. 2015): ``y = CBR(CBR(x))``, two 3×3 conv-BN-ReLU.

    ``stride`` > 1 is not used by U-Net (it max-pools) but keeps the block signature
    uniform across the networks.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__(ConvBNReLU(in_ch, out_ch, stride=stride), ConvBNReLU(out_ch, out_ch))


class UpConv(nn.Sequential):
    """Decoder up-sampling: ``y = ReLU(BN(W * Up2(x)))``, nearest ×2 then a 3×3 conv.

    Used by every decoder here (U-Net's "up-convolution"; the widely used PyTorch U-Net and
    Attention U-Net implementations use this form rather than a transposed convolution,
    which also avoids its checkerboard artefacts).
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), ConvBNReLU(in_ch, out_ch))


class PreActResidualUnit(nn.Module):
    """Pre-activation residual unit (He et al. 2016; Zhang et al. 2018, ResUNet).

    ``y = W2 * ReLU(BN(W1 * ReLU(BN(x))))  +  BN(Ws * x)`` where ``W1`` has stride ``s``
    (down-sampling inside the unit) and the 1×1 shortcut ``Ws`` matches shape.  In the
    first unit of the network (``first=True``) the input is the raw image, so the first
    BN-ReLU is skipped, as in ResUNet.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, first: bool = False) -> None:
        super().__init__()
        pre = [] if first else [nn.BatchNorm2d(in_ch), nn.ReLU(inplace=False)]
        self.body = nn.Sequential(
            *pre,
            nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
        )
        self.shortcut = ConvBN(in_ch, out_ch, kernel=1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018) on a skip connection.

    ``α = σ(ψ(ReLU(W_g g + W_x x)))``, ``y = α ⊙ x``: ``g`` is the decoder's gating signal,
    ``x`` the encoder's skip features (same spatial size here), ``W_g``, ``W_x`` and ``ψ``
    are 1×1 convolutions with BN, ``ψ`` maps to one channel.
    """

    def __init__(self, gate_ch: int, skip_ch: int, inter_ch: int) -> None:
        super().__init__()
        self.w_g = ConvBN(gate_ch, inter_ch)
        self.w_x = ConvBN(skip_ch, inter_ch)
        self.psi = nn.Sequential(ConvBN(inter_ch, 1), nn.Sigmoid())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, gate: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return skip * self.psi(self.relu(self.w_g(gate) + self.w_x(skip)))


class RecurrentConv(nn.Module):
    """Recurrent convolutional layer unrolled for ``t`` steps (paper eq. 1-2; R2U-Net).

    ``h(0) = ReLU(BN_0(w_f * x))``,
    ``h(k) = ReLU(BN_k(w_f * x + w_r * h(k-1) + b))`` for ``k = 1..t``; the output is
    ``h(t)``.  The feed-forward weights ``w_f`` and the recurrent weights ``w_r`` are
    shared across steps (a recurrent layer), each step has its own BN because the
    statistics of ``h(k)`` change with ``k``.  ``w_f * x`` is computed once.
    """

    def __init__(self, in_ch: int, out_ch: int, steps: int = 3) -> None:
        super().__init__()
        self.steps = steps
        self.feed_forward = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.recurrent = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=True)
        self.norms = nn.ModuleList(nn.BatchNorm2d(out_ch) for _ in range(steps + 1))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        drive = self.feed_forward(x)
        state = self.relu(self.norms[0](drive))
        for k in range(1, self.steps + 1):
            state = self.relu(self.norms[k](drive + self.recurrent(state)))
        return state


def multiscale_widths(width: int) -> tuple[int, int, int]:
    """Split ``width`` into about 1/6, 1/3, 1/2 (MultiResUNet), each at least 1 channel."""
    first = max(1, round(width / 6))
    second = max(1, round(width / 3))
    return first, second, max(1, width - first - second)


class MultiScaleRecurrentResidualBlock(nn.Module):
    """MR2U-Net's block (paper section 3, Fig. 3, eq. 3).

    Three chained recurrent 3×3 units whose outputs approximate 3×3, 5×5 and 7×7
    receptive fields are concatenated, and a 1×1 residual connection is added:
    ``u1 = R(x)``, ``u2 = R(u1)``, ``u3 = R(u2)``,
    ``y = ReLU(BN([u1, u2, u3]) + BN(W_1×1 * x))`` (eq. 3, ``x_{n+1} = x_n + f(M)``, with
    the 1×1 projection matching channels as in MultiResUNet).  The three widths split
    the block's width into about 1/6, 1/3 and 1/2.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, steps: int = 3) -> None:
        super().__init__()
        if stride != 1:
            raise ValueError("MR2U-Net down-samples by max-pooling; stride must be 1")
        w1, w2, w3 = multiscale_widths(out_ch)
        self.unit1 = RecurrentConv(in_ch, w1, steps)
        self.unit2 = RecurrentConv(w1, w2, steps)
        self.unit3 = RecurrentConv(w2, w3, steps)
        self.norm = nn.BatchNorm2d(w1 + w2 + w3)
        self.shortcut = ConvBN(in_ch, w1 + w2 + w3, kernel=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u1 = self.unit1(x)
        u2 = self.unit2(u1)
        u3 = self.unit3(u2)
        return self.relu(self.norm(torch.cat([u1, u2, u3], dim=1)) + self.shortcut(x))


class ResidualPathUnit(nn.Module):
    """One unit of a residual path: ``y = ReLU(BN(W_3×3 * x) + BN(W_1×1 * x))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = ConvBN(channels, channels, kernel=3)
        self.shortcut = ConvBN(channels, channels, kernel=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x) + self.shortcut(x))


class ResidualPath(nn.Sequential):
    """A chain of ``length`` residual-path units replacing a plain skip (MultiResUNet).

    Shallow skips get longer paths (4, 3, 2, 1) to narrow the semantic gap between
    low-level encoder features and the decoder features they are concatenated with.
    """

    def __init__(self, channels: int, length: int) -> None:
        super().__init__(*(ResidualPathUnit(channels) for _ in range(length)))
