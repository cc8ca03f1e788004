"""Training one segmentation network on the prepared training split.

One plain loop, read top to bottom: set the network up (:mod:`.setup`), resume from a
checkpoint when there is one (:mod:`.checkpoint`), then for each epoch, for each batch,
take an Adam step; after each epoch, one history row, the collapse check, the
``on_epoch_end`` callback and maybe a checkpoint.  What the run learns is the
:class:`~.config.TrainConfig`; how it runs (device, threads, speed levers) the
:class:`~.options.RunOptions`.  Nothing in here imports MLflow or DVC.

Reproducibility: every random draw comes from explicit generators seeded from
``TrainConfig.seed``; on the CPU ``torch.use_deterministic_algorithms(True)`` makes two
runs bit-identical, and a resumed run ends exactly where an uninterrupted one would.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from mr2unet.data.prepared import PreparedSplit
from mr2unet.models.checkpoint import unwrap
from mr2unet.training import checkpoint
from mr2unet.training.batches import Batches, EpochTally, EpochTotals
from mr2unet.training.collapse import collapse_streak, training_warning
from mr2unet.training.config import TrainConfig
from mr2unet.training.losses import SegmentationLoss
from mr2unet.training.options import (
    RunOptions,
    RunSettings,
    configure_determinism,
    resolve_device,
    run_settings,
    set_cpu_threads,
)
from mr2unet.training.setup import Network, all_reduce, distributed, rank_device, set_up, tear_down

log = logging.getLogger(__name__)
EpochCallback = Callable[[dict[str, float]], None]


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, float]]
    device: str
    seconds: float
    resumed_from_epoch: int
    # The config as trained: `class_weights: auto` and a step budget's epochs resolved.
    config: TrainConfig | None = None

    @property
    def collapsed(self) -> str | None:
        """``"background"``/``"defect"`` when the run ended collapsed (training.collapse)."""
        return collapse_streak(self.history)


def train(cfg: TrainConfig, split: PreparedSplit, checkpoint_dir: Path | None = None,
          on_epoch_end: EpochCallback | None = None, progress: bool = True,
          options: RunOptions | None = None) -> TrainResult:
    """Train ``cfg.arch`` on ``split``; resume from ``checkpoint_dir`` when it holds a twin run.

    With torchrun (``WORLD_SIZE`` > 1, the process group initialised by the caller) each
    rank takes every ``world``-th sample of the shared permutation and
    DistributedDataParallel averages the gradients.  ``options``: how it runs (default:
    :class:`RunOptions`'s defaults).
    """
    options = options or RunOptions()
    rank, world = distributed()
    device = rank_device(resolve_device(options.device), world)
    run = run_settings(device, options, world)
    log.info("%s: %s", cfg.arch, run.describe())
    configure_determinism(run.deterministic, device)
    set_cpu_threads(options.cpu_threads)
    data = Batches(split, cfg, device)
    cfg = cfg.with_class_weights(split.masks)
    if cfg.uses_class_weights():
        log.info("%s: class weights (background, defect) %s", cfg.arch, cfg.class_weights)
    criterion = SegmentationLoss(cfg.loss_config()).to(device)
    state = checkpoint.load_training_state(checkpoint_dir, checkpoint.fingerprint(cfg))
    net = set_up(cfg, run, state, world)
    shuffle_gen, aug_gen = checkpoint.restore_generators(state, cfg, device)
    history: list[dict[str, float]] = list(state["history"]) if state else []
    start_epoch = int(state["epoch"]) if state else 0
    if state:
        log.info("resuming %s from epoch %d (%s)", cfg.arch, start_epoch, checkpoint_dir)
    steps = data.steps_per_epoch(rank, world)
    cfg = cfg.with_epochs_for(steps)
    if cfg.steps is not None:
        log.info("%s: train.steps %d at %d steps per epoch: %d epochs", cfg.arch, cfg.steps,
                 steps, cfg.epochs)

    t0 = time.perf_counter()
    bar = tqdm(range(start_epoch, cfg.epochs), initial=start_epoch, total=cfg.epochs,
               desc=f"train {cfg.arch}", unit="epoch", disable=not progress or rank != 0)
    for epoch in bar:
        net.model.train()
        for group in net.optimizer.param_groups:
            group["lr"] = cfg.lr_at(epoch)
        epoch_start = time.perf_counter()
        order = torch.randperm(len(data), generator=shuffle_gen)[rank::world].to(device)
        tally = EpochTally(device)
        for step in range(steps):
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            x, y = data.get(idx, aug_gen)
            loss = train_step(net, run, criterion, x, y, tally)
            if progress and rank == 0 and (step + 1) % options.log_every == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}", step=f"{step + 1}/{steps}")
        totals: EpochTotals = tally.summed(all_reduce)
        row = totals.row(epoch + 1, net.optimizer.param_groups[0]["lr"],
                         time.perf_counter() - epoch_start)
        end_epoch(cfg, history, row, rank, start_epoch)
        bar.set_postfix(loss=f"{row['loss']:.4f}", iou=f"{row['train_iou']:.3f}",
                        img_s=f"{row['images_per_second']:.0f}")
        if on_epoch_end is not None and rank == 0:
            on_epoch_end(row)
        if (checkpoint_dir is not None and rank == 0 and epoch + 1 < cfg.epochs
                and (epoch + 1) % options.checkpoint_every == 0):
            checkpoint.save_training_state(checkpoint_dir, checkpoint.training_state(
                cfg, epoch + 1, net.model, net.optimizer, (shuffle_gen, aug_gen), history))
    bar.close()
    if rank == 0 and any(r.get("collapsed") for r in history[start_epoch:]):
        log_collapse_outcome(cfg.arch, history)
    tear_down(net.model)
    return TrainResult(model=unwrap(net.model), history=history, device=str(device),
                       seconds=time.perf_counter() - t0, resumed_from_epoch=start_epoch,
                       config=cfg)


def train_step(net: Network, run: RunSettings, criterion: nn.Module, x: torch.Tensor,
               y: torch.Tensor, tally: EpochTally) -> torch.Tensor:
    """One optimiser step on batch ``(x, y)``, added to ``tally``; the batch's loss."""
    if run.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
        logits = net.step(x)
    loss = criterion(logits, y)
    net.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    net.optimizer.step()
    with torch.no_grad():
        tally.add(logits, y, loss)
    return loss


def end_epoch(cfg: TrainConfig, history: list[dict[str, float]], row: dict[str, float],
              rank: int, start_epoch: int) -> None:
    """Append ``row`` to ``history`` with its collapse flag; warn at the first collapsed
    epoch of this session (epochs from ``start_epoch`` on)."""
    kind = collapse_streak([*history, row])
    row["collapsed"] = float(kind is not None)
    warned = any(r.get("collapsed") for r in history[start_epoch:])
    history.append(row)
    if kind is not None and not warned and rank == 0:
        log.warning(training_warning(cfg.arch, kind, row))


def log_collapse_outcome(arch: str, history: list[dict[str, float]]) -> None:
    """After a run that collapsed at some epoch: did it end collapsed or recover?"""
    if collapse_streak(history):
        log.warning("%s ended collapsed (history column `collapsed` = 1)", arch)
    else:
        log.info("%s recovered from the collapse by epoch %d", arch, len(history))
