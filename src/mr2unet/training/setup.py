"""Setting a network up for training, and undoing it afterwards, in one place.

:func:`set_up` builds the network, picks its memory layout and CPU kernel routes, makes
the optimiser, restores both from a checkpoint, and wraps the network for the step
(DistributedDataParallel, ``torch.compile``, CUDA graphs).  :func:`tear_down` undoes
what changes the network itself, so the returned network runs PyTorch's own kernels, as
it will once loaded from its model file.  Distributed helpers (torchrun) live here too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mr2unet.config.params import ADAM_IMPLS
from mr2unet.errors import UserError
from mr2unet.models import build_model
from mr2unet.models.kernels import narrow_norms_in_nchw, onednn_1x1_convs
from mr2unet.models.mr2unet import fuse_convolutions
from mr2unet.training.config import TrainConfig
from mr2unet.training.options import RunSettings


@dataclass
class Network:
    """The network being trained, what takes the step (``step``: wrapped), its optimiser."""

    model: nn.Module
    step: nn.Module
    optimizer: torch.optim.Optimizer


def set_up(cfg: TrainConfig, run: RunSettings, state: dict[str, Any] | None = None,
           world: int = 1) -> Network:
    """``cfg.arch`` built and seeded (``cfg.seed``), set up as ``run`` says, its weights
    and optimiser restored from checkpoint ``state`` when given."""
    torch.manual_seed(cfg.seed)  # model initialisation
    model = build_model(cfg.arch, **cfg.model_kwargs()).to(run.device)
    if run.fused_convs:
        fuse_convolutions(model)
    if run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    narrow_norms_in_nchw(model, run.narrow_norms_nchw)  # run_settings: channels-last only
    onednn_1x1_convs(model, run.onednn_1x1_convs)
    optimizer = make_optimizer(model, cfg, run.adam_impl)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    step: nn.Module = model
    if world > 1:
        device = run.device
        step = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if run.compile_mode is not None:
        step = torch.compile(step, mode=run.compile_mode)
    if run.cuda_graphs:
        step = CudaGraphedForward(model, run.amp_dtype)
    return Network(model, step, optimizer)


def tear_down(model: nn.Module) -> None:
    """Undo :func:`set_up`'s kernel routes: PyTorch's own kernels, as after loading."""
    narrow_norms_in_nchw(model, False)
    onednn_1x1_convs(model, False)


def make_optimizer(model: nn.Module, cfg: TrainConfig, impl: str = "auto"
                   ) -> torch.optim.Optimizer:
    """Adam over ``model``'s parameters; ``impl`` (``run.adam_impl``) picks PyTorch's
    implementation.

    ``auto`` and ``foreach`` update the parameters a list at a time: PyTorch's own choice
    on CUDA; on the CPU the same update to the bit as PyTorch's per-tensor loop (the same
    operations in the same order; tests/test_speed_levers.py), in 0.69-0.79 of its time
    (MR2U-Net, width 8: 7.6 against 10.9 ms a step; ``benchmarks/cpu_kernels.py --parts
    adam``, docs/performance.md). ``fused`` (a
    few fused kernels per step) computes the same update up to the rounding of the last
    bits.
    """
    if impl not in ADAM_IMPLS:
        raise UserError(f"unknown run.adam_impl {impl!r}; expected {', '.join(ADAM_IMPLS)}")
    extra = {"auto": {"foreach": True}, "foreach": {"foreach": True},
             "fused": {"fused": True}}[impl]
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            **extra)


# ------------------------------------------------------------------ several processes


def init_distributed() -> int:
    """Join the torchrun process group when there is one (``WORLD_SIZE`` > 1); the rank."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    return torch.distributed.get_rank()


def distributed() -> tuple[int, int]:
    """(rank, world size): torchrun sets these; a plain run is rank 0 of 1."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def rank_device(device: torch.device, world: int) -> torch.device:
    """Under torchrun on CUDA each rank takes its own GPU (``LOCAL_RANK``)."""
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return device


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks (in place; unchanged in a plain run)."""
    if distributed()[1] > 1:
        torch.distributed.all_reduce(t)
    return t


# ------------------------------------------------------------------------- CUDA graphs


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
