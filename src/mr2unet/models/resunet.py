"""Deep residual U-Net (Zhang, Liu & Wang 2018, "Road extraction by deep residual U-Net")."""

from __future__ import annotations

import torch
from torch import nn

from mr2unet.models.blocks import ConvBN
from mr2unet.models.kernels import BatchNorm2d, like_layout
from mr2unet.models.ushape import UShapedNet, level_widths


class PreActResidualUnit(nn.Module):
    """Pre-activation residual unit (He et al. 2016) as used by ResUNet.

    ``y = W_2 * ReLU(BN(W_1 * ReLU(BN(x))))  +  BN(W_s * x)``: ``W_1`` (3×3) has stride
    ``s`` and down-samples, ``W_2`` is 3×3 and the shortcut ``W_s`` is a 1×1 projection
    with the same stride.  In the network's first unit (``first=True``) the input is the
    image, so its leading BN-ReLU is left out, as in ResUNet.

    The strided 1×1 shortcut is computed as a 1×1 convolution of ``x[..., ::s, ::s]``
    (identical values): oneDNN's CPU backward of a strided 1×1 convolution on
    channels-last tensors crashes in torch 2.13.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, first: bool = False) -> None:
        super().__init__()
        pre = [] if first else [BatchNorm2d(in_ch), nn.ReLU()]
        self.stride = stride
        self.body = nn.Sequential(
            *pre,
            nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
            BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
        )
        self.shortcut = ConvBN(in_ch, out_ch, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the strided view has neither memory format: keep x's, as the body's output does
        sampled = like_layout(x[:, :, :: self.stride, :: self.stride], x)
        return self.body(x) + self.shortcut(sampled)


def build(in_channels: int = 3, num_classes: int = 2, base_width: int = 64) -> UShapedNet:
    """ResUNet: four levels of :class:`PreActResidualUnit` (64-512 at full size, the
    deepest being the bridge), stride-2 down-sampling inside the units, plain nearest ×2
    up-sampling, concatenated identity skips."""
    return UShapedNet(
        in_channels, num_classes, level_widths(base_width, 4),
        block=lambda i, o, s: PreActResidualUnit(i, o, stride=s),
        first_block=lambda i, o, s: PreActResidualUnit(i, o, stride=s, first=True),
        downsample="stride",
        up_conv=False,
    )
