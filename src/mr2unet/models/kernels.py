"""How the networks' layers pick their CPU kernels: layout and routing switches that keep
the function and the parameters and change only speed (and, at most, rounding).

PyTorch chooses a kernel per operator from the input's memory format, size and thread
count.  On channels-last CPU tensors two of its choices cost a training step more than
another kernel for the same function (docs/performance.md, issue #24):

* BatchNorm of 2-5 channels (2-8 on several threads): the channels-last kernel
  vectorises over the channels, so :class:`BatchNorm2d` can normalise an NCHW copy
  instead (:func:`narrow_norms_in_nchw`);
* 1×1 convolutions of a batch under 16 on one thread go to PyTorch's im2col kernel
  rather than oneDNN (:func:`onednn_1x1_convs` routes them to oneDNN).

Both are off until training switches them on (on the CPU with channels_last:
:data:`mr2unet.training.options.AUTO`, :mod:`mr2unet.training.setup`); evaluation and export see
the modules as PyTorch builds them.  :func:`like_layout` keeps a layout across
operators that would drop it.
"""

from __future__ import annotations

import torch
from torch import nn

# Channel counts whose channels-last BatchNorm runs faster through NCHW on the CPU
# (BatchNorm2d.narrow_in_nchw), by intra-op threads.  Batch 8 at 32-128 px, fwd + bwd
# (benchmarks/cpu_kernels.py, docs/performance.md): on one thread 0.43-0.86 of the direct
# time for 2-5 channels, 1.0-1.2 for 6, 1.9 for 8; on two, 0.17-0.71 for 2-8 channels and
# 2-4x for 16.  One channel is both layouts at once: nothing to route.
NARROW_NORM_CHANNELS = {1: range(2, 6), 2: range(2, 9)}  # 2: also for more threads


def narrow_channels(threads: int) -> range:
    """The channel counts routed through NCHW when PyTorch runs ``threads`` threads."""
    return NARROW_NORM_CHANNELS[1 if threads <= 1 else 2]


def is_channels_last(x: torch.Tensor) -> bool:
    """``x`` is a channels-last 4-d tensor and not also NCHW-contiguous (one channel, or
    1×1 images, fit both layouts: such a tensor needs no routing and gives no layout)."""
    return (x.dim() == 4 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last))


def like_layout(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``y`` in ``x``'s memory format: channels-last when ``x`` is channels-last only.

    ``torch.cat`` (and any operator that follows its inputs' layout) gives NCHW when one
    input has a single channel, whose strides fit both layouts; the next operators then
    mix layouts, which costs on the CPU.  No copy when ``y`` already has the format.
    """
    return y.contiguous(memory_format=torch.channels_last) if is_channels_last(x) else y


class BatchNorm2d(nn.BatchNorm2d):
    """``y = γ (x − E[x]) / √(Var[x] + ε) + β`` per channel: :class:`torch.nn.BatchNorm2d`,
    with one switch, ``narrow_in_nchw`` (off unless :func:`narrow_norms_in_nchw` sets it).

    PyTorch's CPU kernels for a channels-last input vectorise over the channels, which a
    narrow tensor cannot fill (2-5 channels on one thread, 2-8 on more:
    :func:`narrow_channels`): with the switch on, such an input is normalised as an NCHW
    copy and the result turned back to channels-last.  The same function, its parameters
    and buffers (state_dict) unchanged; only the rounding of the statistics' sums may
    differ.  Any other input (NCHW, other widths, CUDA) takes the direct path.
    """

    def __init__(self, num_features: int, **kwargs: object) -> None:
        super().__init__(num_features, **kwargs)  # type: ignore[arg-type]
        self.narrow_in_nchw = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.narrow_in_nchw and x.device.type == "cpu"
                and x.shape[1] in narrow_channels(torch.get_num_threads())
                and is_channels_last(x)):
            return super().forward(x.contiguous()).contiguous(
                memory_format=torch.channels_last)
        return super().forward(x)


def narrow_norms_in_nchw(model: nn.Module, enabled: bool = True) -> int:
    """Set :attr:`BatchNorm2d.narrow_in_nchw` on every BatchNorm of ``model`` narrow enough
    for some thread count (``train.narrow_norms_nchw``; each call then checks the threads
    it runs on); the number of modules switched (0: none is narrow)."""
    switched = 0
    widest = narrow_channels(2)
    for module in model.modules():
        if isinstance(module, BatchNorm2d) and module.num_features in widest:
            module.narrow_in_nchw = enabled
            switched += 1
    return switched


def onednn_1x1_convs(model: nn.Module, enabled: bool = True) -> int:
    """Send ``model``'s 1×1 convolutions to oneDNN on the CPU (or back, ``enabled=False``);
    the number of convolutions switched.

    A 1×1 kernel has no taps to space out, so its dilation changes nothing it computes;
    PyTorch, though, runs an undilated 1×1 convolution of a batch under 16 on one CPU
    thread with its im2col kernel (faster for NCHW inputs), and a dilated one with
    oneDNN, whose forward + backward took 0.17-0.80 of that time on channels-last inputs
    at 128 px (benchmarks/cpu_kernels.py).  This sets their dilation to 2 (1 to undo);
    stride and padding stay.  With more threads PyTorch picks oneDNN anyway.
    """
    switched = 0
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1):
            module.dilation = (2, 2) if enabled else (1, 1)
            switched += 1
    return switched
