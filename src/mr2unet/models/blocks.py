"""Blocks shared by several networks; each a small module with the equation it computes.

Notation used in every docstring of this package: ``W * x`` is a convolution, ``BN``
batch normalisation, ``σ`` the logistic sigmoid, ``⊙`` the element-wise product,
``[a, b]`` concatenation along channels and ``Up2`` nearest-neighbour up-sampling ×2.
A convolution followed by BN has no bias: BN's shift ``β`` plays that role.
"""

from __future__ import annotations

from torch import nn

from mr2unet.models.kernels import BatchNorm2d


class ConvBN(nn.Sequential):
    """``y = BN(W * x)``: a ``k×k`` convolution ('same' padding) without activation."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
            BatchNorm2d(out_ch),
        )


class ConvBNReLU(nn.Sequential):
    """``y = ReLU(BN(W * x))`` with a ``k×k`` kernel ('same' padding) and a stride."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__(ConvBN(in_ch, out_ch, kernel, stride), nn.ReLU(inplace=True))


class DoubleConv(nn.Sequential):
    """U-Net's block (Ronneberger et al. 2015): ``y = CBR(CBR(x))``, two 3×3 ConvBNReLU.

    ``stride`` applies to the first convolution; the U-Nets here max-pool instead and
    always pass 1 (the argument keeps one block signature for every network).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__(ConvBNReLU(in_ch, out_ch, stride=stride), ConvBNReLU(out_ch, out_ch))


class UpConv(nn.Sequential):
    """Decoder up-sampling with a learned projection: ``y = ReLU(BN(W_3×3 * Up2(x)))``.

    U-Net's "up-convolution" in the up-sample + convolution form (rather than a 2×2
    transposed convolution): it halves the width while doubling the resolution, has no
    checkerboard artefacts and is the form of the public implementations whose parameter
    counts docs/models.md compares against.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), ConvBNReLU(in_ch, out_ch))
