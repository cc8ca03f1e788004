"""How a training run executes on its device: every ``auto`` of ``train.*`` resolved here.

The speed levers change how fast a run goes and, at most, the last bits of its floating
point rounding; what a run computes is decided by :class:`~mr2unet.training.loop.TrainConfig`.
:data:`AUTO` is the one table of what ``auto`` means on each kind of device, and
:func:`run_settings` the one function that turns a config's values into what runs
(docs/training.md, "What `auto` means").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mr2unet.config.params import COMPILE_MODES
from mr2unet.errors import UserError

# What `auto` resolves to per device type (other types, e.g. mps: the "other" row).
#   precision: autocast dtype. bf16 on CUDA (Hopper/Ampere tensor cores); fp32 elsewhere.
#   channels_last: NHWC memory format. cuDNN and oneDNN both run fewer layout reorders; on
#     the CPU a 1-thread step took 0.64-0.94 of its NCHW time at 48 and 128 px, for every
#     network (docs/performance.md, issue #24).
#   adam_impl: "auto" leaves PyTorch's own choice (foreach on CUDA, for-loop on the CPU).
#   cuda_graphs: not yet chosen on CUDA: graphs + fused Adam with deterministic kernels is
#     measured by the prepared device call (issue #22) before `auto` may pick it.
#   fused_convs: MR2U-Net's same-input convolutions as one call. Slower on the CPU (a 1x1
#     padded to 3x3 does 9x its work: a whole training step took 1.12-1.40x as long,
#     benchmarks/fused_convs.py, docs/performance.md); on CUDA still unmeasured.
#   narrow_norms_nchw: a channels-last BatchNorm of 2-5 channels (2-8 on several threads)
#     in NCHW. On the CPU its forward + backward took 0.17-0.86 of the direct time (the
#     CPU kernel vectorises over the channels), benchmarks/cpu_kernels.py; a training step
#     0.88-0.99 with the 1x1 route below. cuDNN has no such kernel gap to close.
#   onednn_1x1_convs: the CPU's 1x1 convolutions through oneDNN instead of PyTorch's im2col
#     kernel (which it picks for one thread and batches under 16): forward + backward took
#     0.17-0.80 of its time at 128 px, benchmarks/cpu_kernels.py. CPU only.
AUTO: dict[str, dict[str, Any]] = {
    "cuda": {"precision": "bf16", "channels_last": True, "adam_impl": "auto",
             "cuda_graphs": False, "fused_convs": False, "narrow_norms_nchw": False,
             "onednn_1x1_convs": False},
    "cpu": {"precision": "fp32", "channels_last": True, "adam_impl": "auto",
            "cuda_graphs": False, "fused_convs": False, "narrow_norms_nchw": True,
            "onednn_1x1_convs": True},
    "other": {"precision": "fp32", "channels_last": False, "adam_impl": "auto",
              "cuda_graphs": False, "fused_convs": False, "narrow_norms_nchw": False,
              "onednn_1x1_convs": False},
}
DTYPES: dict[str, torch.dtype | None] = {"bf16": torch.bfloat16, "fp16": torch.float16,
                                         "fp32": None}


def auto_choices(device: torch.device) -> dict[str, Any]:
    """The row of :data:`AUTO` for ``device``."""
    return AUTO.get(device.type, AUTO["other"])


@dataclass(frozen=True)
class RunSettings:
    """What a run executes with, every ``auto`` resolved (see :func:`run_settings`)."""

    device: torch.device
    amp_dtype: torch.dtype | None  # None: plain fp32
    channels_last: bool
    compile_mode: str | None  # None: eager
    adam_impl: str  # auto (PyTorch's choice) | foreach | fused
    cuda_graphs: bool
    deterministic: bool
    fused_convs: bool = False
    narrow_norms_nchw: bool = False  # only with channels_last
    onednn_1x1_convs: bool = False  # only on the CPU with channels_last

    def describe(self) -> str:
        precision = {v: k for k, v in DTYPES.items()}[self.amp_dtype]
        return (f"{self.device}, {precision}, "
                f"{'channels_last' if self.channels_last else 'contiguous'}, "
                f"compile {self.compile_mode or 'off'}, adam {self.adam_impl}, "
                f"cuda_graphs {'on' if self.cuda_graphs else 'off'}, "
                f"fused_convs {'on' if self.fused_convs else 'off'}, "
                f"narrow_norms_nchw {'on' if self.narrow_norms_nchw else 'off'}, "
                f"onednn_1x1_convs {'on' if self.onednn_1x1_convs else 'off'}, "
                f"{'deterministic' if self.deterministic else 'non-deterministic'}")


def run_settings(device: torch.device, *, precision: str = "auto",
                 channels_last: bool | str = "auto", compile: bool | str | None = False,
                 adam_impl: str = "auto", cuda_graphs: bool | str = False,
                 fused_convs: bool | str = False, narrow_norms_nchw: bool | str = "auto",
                 onednn_1x1_convs: bool | str = "auto", deterministic: bool = True,
                 world: int = 1) -> RunSettings:
    """The config's ``train.*`` speed values on ``device`` (``world`` processes).

    CUDA graphs need CUDA, one process and no ``torch.compile`` (whose reduce-overhead
    mode captures graphs itself); elsewhere they are off whatever the setting.  The
    narrow BatchNorms' NCHW path and the oneDNN 1x1 convolutions are channels-last CPU
    routes: off without channels_last (and the second off on any other device).
    """
    auto = auto_choices(device)

    def pick(key: str, value: Any) -> Any:
        return auto[key] if value == "auto" else value

    mode = compile_mode(compile)
    layout = pick("channels_last", channels_last) is True
    return RunSettings(
        device=device,
        amp_dtype=DTYPES[pick("precision", precision)],
        channels_last=layout,
        compile_mode=mode,
        adam_impl=pick("adam_impl", adam_impl),
        cuda_graphs=(bool(pick("cuda_graphs", cuda_graphs)) and device.type == "cuda"
                     and world == 1 and mode is None),
        deterministic=deterministic,
        fused_convs=pick("fused_convs", fused_convs) is True,
        narrow_norms_nchw=pick("narrow_norms_nchw", narrow_norms_nchw) is True and layout,
        onednn_1x1_convs=(pick("onednn_1x1_convs", onednn_1x1_convs) is True and layout
                          and device.type == "cpu"),
    )


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an unavailable device is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"train.device is {name!r} but no CUDA GPU is visible; use `auto` or `cpu`.")
    return device


def set_cpu_threads(threads: int | None) -> None:
    """Pin PyTorch's intra-op CPU threads (``train.cpu_threads``); None leaves the default."""
    if threads is not None:
        torch.set_num_threads(threads)


def configure_determinism(enabled: bool, device: torch.device) -> None:
    """Deterministic kernels; on CUDA also cuDNN/cuBLAS settings (see docs/training.md).

    ``enabled=False`` is the fast mode: cuDNN autotuning on, and any deterministic setting
    an earlier run of the same process made switched off again.
    """
    if not enabled:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True
        return
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        # Some CUDA backward kernels (e.g. max-pool, upsampling) have no deterministic
        # variant: warn instead of failing; CPU runs are fully deterministic.
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.use_deterministic_algorithms(True)


def compile_mode(setting: bool | str) -> str | None:
    """``train.compile`` as a ``torch.compile`` mode, or None for no compilation."""
    if setting is False or setting is None:
        return None
    if setting is True:
        return "default"
    if setting not in COMPILE_MODES:
        raise UserError(f"unknown train.compile {setting!r}; expected false, true or one of "
                        f"{', '.join(COMPILE_MODES)}")
    return str(setting)


class _Forward(nn.Module):
    """A shell around the network whose ``forward`` CUDA-graphing may replace."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.net = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CudaGraphedForward(nn.Module):
    """``model``'s forward and backward replayed as CUDA graphs for full batches.

    A step at batch size 8 and 128 px launches hundreds of small kernels (MR2U-Net:
    thousands), so the GPU waits on the CPU; a graph replays them all with one launch.
    The graphs are captured (``torch.cuda.make_graphed_callables``) at the first batch
    they see, whose shape they then require; a batch of another shape (the epoch's last,
    partial batch) runs the network eagerly.  The capture's warm-up passes update
    BatchNorm's running statistics, so those buffers are restored afterwards: the
    weights follow the same trajectory as without graphs.  Autocast's weight cache is
    off around graphed calls (the graphs need it off; the casts give the same values).
    The loss, the optimiser step and the metrics stay eager.  ``module`` is the network,
    so :func:`mr2unet.models.checkpoint.unwrap` finds it.
    """

    def __init__(self, model: nn.Module, amp_dtype: torch.dtype | None) -> None:
        super().__init__()
        self.module = model
        self.amp_dtype = amp_dtype
        self.shape: tuple[int, ...] | None = None
        self.graphed: nn.Module | None = None

    def _autocast(self) -> torch.autocast:
        return torch.autocast("cuda", dtype=self.amp_dtype, enabled=self.amp_dtype is not None,
                              cache_enabled=False)

    def capture(self, sample: torch.Tensor) -> None:
        saved = [b.detach().clone() for b in self.module.buffers()]
        with self._autocast():
            self.graphed = torch.cuda.make_graphed_callables(
                _Forward(self.module), (sample,), allow_unused_input=True)
        with torch.no_grad():
            for buffer, value in zip(self.module.buffers(), saved, strict=True):
                buffer.copy_(value)
        self.shape = tuple(sample.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.module.training or not torch.is_grad_enabled():
            return self.module(x)
        if self.graphed is None:
            self.capture(x)
        if tuple(x.shape) != self.shape:
            return self.module(x)
        with self._autocast():
            return self.graphed(x)
