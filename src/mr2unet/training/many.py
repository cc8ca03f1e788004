"""Several training runs in one process, their steps interleaved (issue #22).

A step at batch 8 and 128 px leaves a large GPU idle between kernels; separate processes
share it by time-slicing, while runs of one process on separate CUDA streams let their
kernels overlap.  :func:`train_many` drives each run's
:func:`~mr2unet.training.loop.training_steps` one optimiser step at a time, round robin,
each inside its own stream on CUDA (each run's CUDA graphs are captured on it).

Each run computes exactly what it computes alone: a run touches only its own model,
optimiser, generators and data, and the global state it reads is the same for all (the
deterministic-kernel switches and the CPU thread count, which must agree).  On the CPU
the steps simply run one after another (``tests/test_train_many.py`` checks the weights
bit for bit against runs trained alone).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mr2unet.data.prepared import PreparedSplit
from mr2unet.errors import UserError
from mr2unet.training.loop import EpochCallback, TrainConfig, TrainResult, training_steps
from mr2unet.training.speed import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainJob:
    """One run of :func:`train_many`: what :func:`~mr2unet.training.loop.train` takes."""

    cfg: TrainConfig
    split: PreparedSplit
    checkpoint_dir: Path | None = None
    on_epoch_end: EpochCallback | None = None


def check_compatible(jobs: Sequence[TrainJob]) -> torch.device:
    """The one device of ``jobs``; a UserError when they need different global settings."""
    if not jobs:
        raise UserError("train_many needs at least one run")
    devices = {resolve_device(j.cfg.device) for j in jobs}
    for key in ("deterministic", "cpu_threads"):
        values = {getattr(j.cfg, key) for j in jobs}
        if len(values) > 1:
            raise UserError(f"runs trained together share one process's train.{key}, but "
                            f"these ask for {sorted(map(str, values))}: train them apart or "
                            "set one value")
    if len(devices) > 1:
        raise UserError(f"runs trained together share one device, got "
                        f"{', '.join(sorted(map(str, devices)))}")
    return devices.pop()


def train_many(jobs: Sequence[TrainJob], progress: bool = False) -> list[TrainResult]:
    """Train every job, one optimiser step of each in turn; results in the jobs' order."""
    device = check_compatible(jobs)
    streams = [torch.cuda.Stream(device) if device.type == "cuda" else None for _ in jobs]
    runs: dict[int, Generator[None, None, TrainResult]] = {
        i: training_steps(j.cfg, j.split, j.checkpoint_dir, j.on_epoch_end, progress)
        for i, j in enumerate(jobs)}
    results: dict[int, TrainResult] = {}
    log.info("training %d runs together on %s", len(jobs), device)
    while runs:
        for i in list(runs):
            stream = streams[i]
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                try:
                    next(runs[i])
                except StopIteration as done:
                    results[i] = done.value
                    del runs[i]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return [results[i] for i in range(len(jobs))]
