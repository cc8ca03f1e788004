"""How a training run executes: the ``run:`` section of params.yaml as one :class:`RunOptions`.

These settings change how fast a run goes and, at most, the last bits of its floating
point rounding (the device, its precision and memory layout, the CPU threads, compilation,
Adam's implementation, deterministic kernels, the checkpoint and log cadences).  What a
run learns is :class:`~mr2unet.training.config.TrainConfig`; run options are kept out of
its resume fingerprint and out of DVC's train dependencies, so changing one retrains
nothing.  :data:`AUTO` is the one table of what ``auto`` means per kind of device and
:func:`run_settings` the one function that resolves the options on a device
(docs/training.md, "What `auto` means").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

import torch

from mr2unet.errors import UserError

# torch.compile's modes: `run.compile` is false or true (= "default"); the GPU check and
# benchmarks may pass one of these names directly.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# What `auto` resolves to per device type (other types, e.g. mps: the "other" row).
#   precision: autocast dtype. bf16 on CUDA (Hopper/Ampere tensor cores); fp32 elsewhere.
#   channels_last: NHWC memory format. cuDNN and oneDNN both run fewer layout reorders; on
#     the CPU a 1-thread step took 0.64-0.94 of its NCHW time at 48 and 128 px, for every
#     network (docs/performance.md, issue #24).
#   narrow_norms_nchw: a channels-last BatchNorm of 2-5 channels (2-8 on several threads)
#     in NCHW. On the CPU its forward + backward took 0.17-0.86 of the direct time (the
#     CPU kernel vectorises over the channels); a training step 0.88-0.99 with the 1x1
#     route below. cuDNN has no such kernel gap to close.
#   onednn_1x1_convs: the CPU's 1x1 convolutions through oneDNN instead of PyTorch's im2col
#     kernel (which it picks for one thread and batches under 16): forward + backward took
#     0.17-0.80 of its time at 128 px. CPU only.
AUTO: dict[str, dict[str, Any]] = {
    "cuda": {"precision": "bf16", "channels_last": True, "narrow_norms_nchw": False,
             "onednn_1x1_convs": False},
    "cpu": {"precision": "fp32", "channels_last": True, "narrow_norms_nchw": True,
            "onednn_1x1_convs": True},
    "other": {"precision": "fp32", "channels_last": False, "narrow_norms_nchw": False,
              "onednn_1x1_convs": False},
}
DTYPES: dict[str, torch.dtype | None] = {"bf16": torch.bfloat16, "fp16": torch.float16,
                                         "fp32": None}


@dataclass(frozen=True)
class RunOptions:
    """``params.yaml: run`` (docs/params.md): how a run executes, not what it learns."""

    device: str = "auto"  # auto: CUDA when present, else CPU
    precision: str = "auto"  # auto | bf16 | fp16 | fp32 (AUTO)
    channels_last: bool | str = "auto"
    # CPU threads (None: PyTorch's default, one per core). The count changes how CPU
    # kernels split their sums, hence the last bits: pin it to compare machines.
    cpu_threads: int | None = None
    compile: bool | str = False  # torch.compile: False | True | a COMPILE_MODES name
    adam_impl: str = "auto"  # auto (= foreach) | foreach | fused
    deterministic: bool = True  # False: the fast mode (cuDNN autotuning, no repeatability)
    checkpoint_every: int = 10
    log_every: int = 10
    # Expert levers that params.yaml does not hold (the GPU check and benchmarks set them;
    # docs/training.md, "Fast mode"); the defaults are what the pipeline runs.
    cuda_graphs: bool = False  # CUDA, one process, no compile: replay each full batch
    fused_convs: bool = False  # MR2U-Net: same-input convolutions as one call
    narrow_norms_nchw: bool | str = "auto"  # auto: AUTO's row (the CPU with channels_last)
    onednn_1x1_convs: bool | str = "auto"

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> RunOptions:
        """The ``run:`` section (absent keys: the defaults above)."""
        run = params.get("run") or {}
        return cls(**{f.name: run[f.name] for f in fields(cls) if f.name in run})


@dataclass(frozen=True)
class RunSettings:
    """What a run executes with, every ``auto`` resolved (see :func:`run_settings`)."""

    device: torch.device
    amp_dtype: torch.dtype | None  # None: plain fp32
    channels_last: bool
    compile_mode: str | None  # None: eager
    adam_impl: str
    cuda_graphs: bool
    deterministic: bool
    fused_convs: bool = False
    narrow_norms_nchw: bool = False  # only with channels_last
    onednn_1x1_convs: bool = False  # only on the CPU with channels_last

    def describe(self) -> str:
        precision = {v: k for k, v in DTYPES.items()}[self.amp_dtype]
        flags = ", ".join(f"{name} {'on' if getattr(self, name) else 'off'}" for name in
                          ("cuda_graphs", "fused_convs", "narrow_norms_nchw",
                           "onednn_1x1_convs"))
        return (f"{self.device}, {precision}, "
                f"{'channels_last' if self.channels_last else 'contiguous'}, "
                f"compile {self.compile_mode or 'off'}, adam {self.adam_impl}, {flags}, "
                f"{'deterministic' if self.deterministic else 'non-deterministic'}")


def run_settings(device: torch.device, options: RunOptions = RunOptions(),
                 world: int = 1) -> RunSettings:
    """``options`` resolved on ``device`` for ``world`` processes.

    CUDA graphs need CUDA, one process and no ``torch.compile`` (whose reduce-overhead
    mode captures graphs itself); elsewhere they are off whatever the setting.  The
    narrow BatchNorms' NCHW path and the oneDNN 1x1 convolutions are channels-last CPU
    routes: off without channels_last (and the second off on any other device).
    """
    auto = AUTO.get(device.type, AUTO["other"])

    def pick(key: str) -> Any:
        value = getattr(options, key)
        return auto[key] if value == "auto" else value

    mode = compile_mode(options.compile)
    layout = pick("channels_last") is True
    return RunSettings(
        device=device,
        amp_dtype=DTYPES[pick("precision")],
        channels_last=layout,
        compile_mode=mode,
        adam_impl=options.adam_impl,
        cuda_graphs=(options.cuda_graphs is True and device.type == "cuda" and world == 1
                     and mode is None),
        deterministic=options.deterministic,
        fused_convs=options.fused_convs is True,
        narrow_norms_nchw=pick("narrow_norms_nchw") is True and layout,
        onednn_1x1_convs=(pick("onednn_1x1_convs") is True and layout
                          and device.type == "cpu"),
    )


def compile_mode(setting: bool | str | None) -> str | None:
    """``run.compile`` as a ``torch.compile`` mode, or None for no compilation."""
    if setting is False or setting is None:
        return None
    if setting is True:
        return "default"
    if setting not in COMPILE_MODES:
        raise UserError(f"unknown run.compile {setting!r}; expected false, true or one of "
                        f"{', '.join(COMPILE_MODES)}")
    return str(setting)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an unavailable device is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"run.device is {name!r} but no CUDA GPU is visible; use `auto` or `cpu`.")
    return device


def set_cpu_threads(threads: int | None) -> None:
    """Pin PyTorch's intra-op CPU threads (``run.cpu_threads``); None leaves the default."""
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
