"""Training one segmentation network on the prepared training split.

One plain loop (nanoGPT style): the whole split lives on the device as one uint8
tensor, each step slices a batch, augments it on the device, and takes an Adam step.
Nothing in here imports MLflow or DVC; a caller that wants tracking passes
``on_epoch_end``.  Only torch, numpy and pyyaml are needed.

Reproducibility: every random draw comes from explicit generators seeded from
``TrainConfig.seed``; on CPU ``torch.use_deterministic_algorithms(True)`` makes two
runs bit-identical.  A checkpoint (weights, optimiser, generator states, history)
is written every ``checkpoint_every`` epochs, so an interrupted run resumes where it
stopped and ends exactly where an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mr2unet.config.params import ADAM_IMPLS
from mr2unet.data.prepared import PreparedSplit
from mr2unet.data.transforms import to_input
from mr2unet.errors import UserError
from mr2unet.metrics.segmentation import IGNORE_LABEL, confusion_counts, scores_from_counts
from mr2unet.models import build_model
from mr2unet.models.checkpoint import save_model, unwrap
from mr2unet.models.kernels import narrow_norms_in_nchw, onednn_1x1_convs
from mr2unet.models.mr2unet import fuse_convolutions
from mr2unet.training.collapse import collapse_streak, training_warning
from mr2unet.training.crops import crop_origins, crop_table, gather_crops
from mr2unet.training.losses import (
    LossConfig,
    SegmentationLoss,
    balanced_class_weights,
    split_loss_name,
)
from mr2unet.training.losses import segmentation_loss as _loss
from mr2unet.training.speed import (
    CudaGraphedForward,
    configure_determinism,
    resolve_device,
    run_settings,
    set_cpu_threads,
)

log = logging.getLogger(__name__)
EpochCallback = Callable[[dict[str, float]], None]
# TrainConfig fields that change how fast a run goes, not what it computes (beyond the
# last bits of floating-point rounding): kept out of the fingerprint, like the device.
SPEED_LEVERS = ("compile", "adam_impl", "cuda_graphs", "fused_convs", "narrow_norms_nchw",
                "onednn_1x1_convs")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights (see ``params.yaml: train``)."""

    arch: str
    epochs: int = 200
    # A budget of optimiser steps instead (None: `epochs` decides): the epochs become
    # ceil(steps / steps per epoch), so one recipe costs the same on 50 or 500 images.
    steps: int | None = None
    batch_size: int = 8
    lr: float = 1e-4
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    loss: str = "ce"
    dice_weight: float = 1.0
    # Used by the weighted_ce losses: "auto" (from the training masks, see
    # mr2unet.training.losses.balanced_class_weights) or [w0, w1].  train() records the
    # resolved values.
    class_weights: str | list[float] | tuple[float, ...] | None = "auto"
    focal_gamma: float = 2.0
    tversky_alpha: float = 0.3
    tversky_beta: float = 0.7
    augment: str = "none"
    seed: int = 0
    base_width: int = 64
    model_options: dict[str, Any] = field(default_factory=dict)
    # How to run it. Precision, memory layout and thread count still change the last bits
    # of the result, so only device, the speed levers (compile, adam_impl, cuda_graphs) and
    # the two cadences stay out of fingerprint().
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | str = "auto"
    # CPU threads of intra-op parallelism (None: PyTorch's default, one per core).  The
    # thread count changes how CPU kernels split their sums, hence the last bits of the
    # result: pin it for results that do not depend on the machine's core count.
    cpu_threads: int | None = None
    # Speed levers (docs/training.md, "Fast mode"); the defaults are the loop as it always ran.
    # compile: false | true (= default) | default | reduce-overhead | max-autotune | ...
    compile: bool | str = False
    # Adam's implementation: auto (PyTorch's choice) | foreach | fused
    adam_impl: str = "auto"
    # CUDA only: replay each full batch's forward and backward as one CUDA graph
    # (auto: mr2unet.training.speed.AUTO decides).
    cuda_graphs: bool | str = False
    # MR2U-Net: convolutions reading the same input as one call (models.mr2unet.fuse_convolutions)
    fused_convs: bool | str = False
    # CPU, channels-last: narrow BatchNorms computed in NCHW, and 1x1 convolutions
    # through oneDNN (models.kernels; auto: on the CPU, speed.AUTO)
    narrow_norms_nchw: bool | str = "auto"
    onednn_1x1_convs: bool | str = "auto"
    deterministic: bool = True
    checkpoint_every: int = 10
    log_every: int = 10
    # prepare.mode: tiles: train on random crop_size crops of the full-resolution images,
    # defect_crop_fraction of them centred on a defect pixel (mr2unet.training.crops).
    # None: the prepared images are the network's input as they are (prepare.mode: resize).
    crop_size: int | None = None
    defect_crop_fraction: float = 0.5

    @classmethod
    def from_params(cls, params: dict[str, Any], arch: str) -> TrainConfig:
        train = params["train"]
        names = {f for f in cls.__dataclass_fields__
                 if f not in ("arch", "model_options", "crop_size", "defect_crop_fraction")}
        options = (train.get("model_options") or {}).get(arch) or {}
        prepare = params.get("prepare") or {}
        crops = {}
        if prepare.get("mode") == "tiles":
            crops = {"crop_size": prepare["image_size"],
                     "defect_crop_fraction": prepare["defect_crop_fraction"]}
        return cls(arch=arch, model_options=dict(options), **crops,
                   **{k: train[k] for k in names if k in train})

    def model_kwargs(self) -> dict[str, Any]:
        return {"base_width": self.base_width, **self.model_options}

    def uses_class_weights(self) -> bool:
        return split_loss_name(self.loss)[0] == "weighted_ce"

    def with_class_weights(self, masks: Any) -> TrainConfig:
        """This config with ``class_weights: auto`` resolved from the training ``masks``."""
        if self.class_weights == "auto" and self.uses_class_weights():
            return replace(self, class_weights=balanced_class_weights(masks))
        return self

    def loss_config(self) -> LossConfig:
        weights = self.class_weights if self.uses_class_weights() else None
        return LossConfig(self.loss, self.dice_weight,
                          tuple(weights) if isinstance(weights, list | tuple) else weights,
                          self.focal_gamma, self.tversky_alpha, self.tversky_beta)

    def fingerprint(self) -> str:
        """Hash of the fields that change the result: a checkpoint only resumes a twin."""
        keep = {k: v for k, v in asdict(self).items()
                if k not in ("checkpoint_every", "log_every", "device", *SPEED_LEVERS)}
        if self.crop_size is None:  # resize mode: the fingerprint of the loop before tiles
            del keep["crop_size"], keep["defect_crop_fraction"]
        if self.steps is None:  # an epoch count: the fingerprint before step budgets
            del keep["steps"]
        else:  # the epochs follow from the steps (train() resolves them)
            del keep["epochs"]
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, float]]
    device: str
    seconds: float
    resumed_from_epoch: int
    # The config as trained: `class_weights: auto` replaced by the values it resolved to.
    config: TrainConfig | None = None

    @property
    def collapsed(self) -> str | None:
        """``"background"``/``"defect"`` when the run ended collapsed (training.collapse)."""
        return collapse_streak(self.history)


# ----------------------------------------------------------------------------- set-up


def epoch_lr(base_lr: float, epoch: int, epochs: int, schedule: str) -> float:
    """The learning rate of 0-based ``epoch`` out of ``epochs``.

    ``constant``: ``base_lr`` throughout (the paper's "initial learning rate 1e-4" with no
    schedule named).  ``cosine``: ``lr_e = base_lr · (1 + cos(π e / E)) / 2``, from
    ``base_lr`` at the first epoch down towards 0 at the last.  A pure function of the
    epoch, so a resumed run needs no scheduler state.
    """
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    raise UserError(f"unknown train.lr_schedule {schedule!r}; expected constant or cosine")


def make_optimizer(model: nn.Module, cfg: TrainConfig, impl: str | None = None
                   ) -> torch.optim.Optimizer:
    """Adam over ``model``'s parameters; ``impl`` (default ``cfg.adam_impl``, resolved by
    :func:`~mr2unet.training.speed.run_settings`) picks PyTorch's implementation.

    ``auto`` leaves the choice to PyTorch (the loop as it always ran); ``foreach`` and
    ``fused`` (a few fused kernels per step: fewer launches on CUDA) compute the same
    update, up to the rounding of the last bits.
    """
    impl = cfg.adam_impl if impl is None else impl
    if impl not in ADAM_IMPLS:
        raise UserError(f"unknown train.adam_impl {impl!r}; expected "
                        f"{', '.join(ADAM_IMPLS)}")
    extra = {"auto": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[impl]
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            **extra)


# ------------------------------------------------------------------------ the batch ops


def augment_batch(
    images: torch.Tensor, masks: torch.Tensor, mode: str, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips (and 90-degree rotations) per sample, on the device, without syncs.

    ``images`` is float ``(N, C, H, W)``, ``masks`` integer ``(N, H, W)``.  Each
    transform is applied to every sample and kept where the sample's draw says so
    (``torch.where``), which keeps the step free of host-device synchronisation.
    """
    if mode == "none":
        return images, masks
    n = images.shape[0]
    draws = torch.randint(0, 8, (n,), generator=generator, device=generator.device)
    draws = draws.to(images.device)
    m = masks.unsqueeze(1)

    def pick(flag: torch.Tensor, new_x: torch.Tensor, new_m: torch.Tensor) -> None:
        nonlocal images, m
        images = torch.where(flag.view(-1, 1, 1, 1), new_x, images)
        m = torch.where(flag.view(-1, 1, 1, 1), new_m, m)

    pick((draws & 1).bool(), images.flip(-1), m.flip(-1))
    pick((draws & 2).bool(), images.flip(-2), m.flip(-2))
    if mode == "flips_rot90" and images.shape[-1] == images.shape[-2]:
        pick((draws & 4).bool(), images.transpose(-1, -2), m.transpose(-1, -2))
    return images, m.squeeze(1)


def defect_prediction(logits: torch.Tensor) -> torch.Tensor:
    """Where ``logits.argmax(1)`` is the defect class, as bool ``(N, H, W)``.

    For 2-class logits the same values as ``argmax`` (a tie goes to the background; NaN
    counts as the largest, the first NaN wins) from elementwise comparisons: ``argmax`` over
    a dimension of 2 is a slow strided reduction on the CPU (128 px, batch 8: 16 ms in NCHW,
    1 ms in NHWC, against 0.1 ms for this).
    """
    if logits.shape[1] != 2:
        return logits.argmax(1) == 1
    background, defect = logits[:, 0], logits[:, 1]
    return background.ge(defect).logical_or_(background.isnan()).logical_not_()


class EpochTally:
    """An epoch's training scores: integer counts every step, float sums once an epoch.

    Each step adds its images' (TP, FP, FN) and its true-defect and valid pixel counts,
    integers, which any order sums exactly, without a host sync.  :meth:`totals` then sums
    the per-image IOU and Dice in float64 batch by batch, and the batch sums in step order:
    the order the loop summed them in when it did so every step, so the values are the
    same to the bit.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.images: list[torch.Tensor] = []  # per step: (batch, 3) TP, FP, FN
        self.pixels: list[torch.Tensor] = []  # per step: true-defect and valid pixels

    def add(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        self.images.append(confusion_counts(defect_prediction(logits), target))
        self.pixels.append(torch.stack([(target == 1).sum(), (target != IGNORE_LABEL).sum()]))

    def totals(self) -> torch.Tensor:
        """float64 ``(Σ IOU, Σ Dice, images, predicted-defect, true-defect, valid pixels)``."""
        if not self.images:
            return torch.zeros(6, dtype=torch.float64, device=self.device)
        counts = torch.cat(self.images)
        iou, dice = scores_from_counts(counts)
        sizes = [len(c) for c in self.images]
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        for batch_iou, batch_dice in zip(iou.split(sizes), dice.split(sizes), strict=True):
            sums += torch.stack([batch_iou.sum(), batch_dice.sum()])
        predicted = counts[:, :2].sum().view(1)  # TP + FP: valid pixels predicted defect
        integers = torch.cat([counts.new_tensor([len(counts)]), predicted,
                              torch.stack(self.pixels).sum(0)])
        return torch.cat([sums, integers.double()])


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """``cfg.loss`` of ``logits`` against ``target`` (mr2unet.training.losses; weights resolved)."""
    return _loss(logits, target, cfg.loss_config())


# --------------------------------------------------------------------- checkpointing


def _checkpoint_path(directory: Path) -> Path:
    return directory / "last.pt"


def _previous_path(directory: Path) -> Path:
    return directory / "previous.pt"


def save_training_state(directory: Path, state: dict[str, Any]) -> None:
    """Write the resume state (weights, optimiser, generators, history), verified.

    The new file is read back before it replaces ``last.pt``, and the checkpoint it
    replaces stays as ``previous.pt``: at every moment one readable checkpoint exists.
    """
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "last.pt.tmp"
    torch.save(state, tmp)
    if _read_state(tmp).get("epoch") != state["epoch"]:
        raise OSError(f"{tmp} did not read back as written (disk full?)")
    if _checkpoint_path(directory).is_file():
        _checkpoint_path(directory).replace(_previous_path(directory))
    tmp.replace(_checkpoint_path(directory))


def _read_state(path: Path) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "epoch" not in state:
        raise ValueError("not a training checkpoint")
    return state


def load_training_state(directory: Path | None, fingerprint: str) -> dict[str, Any] | None:
    """The saved state if it belongs to a run with the same config, else None.

    An unreadable ``last.pt`` (cut off, corrupt) is one warning, and the previous
    checkpoint is used instead, or, when there is none readable, training starts fresh.
    """
    if directory is None:
        return None
    for path in (_checkpoint_path(directory), _previous_path(directory)):
        if not path.is_file():
            continue
        try:
            state = _read_state(path)
        except Exception as exc:  # noqa: BLE001 - any failure to read means the same
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            fallback = _previous_path(directory)
            then = (f"falling back to {fallback}" if path != fallback and fallback.is_file()
                    else "starting fresh from epoch 0")
            log.warning("checkpoint %s cannot be read (%s): %s", path, reason, then)
            path.replace(path.with_name(path.name + ".unreadable"))  # never kept as previous
            continue
        if state.get("fingerprint") != fingerprint:
            log.info("ignoring %s: it belongs to a run with other parameters", path)
            return None
        return state
    return None


# ------------------------------------------------------------------------------ loop


def init_distributed() -> int:
    """Join the torchrun process group when there is one (``WORLD_SIZE`` > 1); the rank."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    return torch.distributed.get_rank()


def _distributed() -> tuple[int, int]:
    """(rank, world size): torchrun sets these; a plain run is rank 0 of 1."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if _distributed()[1] > 1:
        torch.distributed.all_reduce(t)
    return t


def train(
    cfg: TrainConfig,
    split: PreparedSplit,
    checkpoint_dir: Path | None = None,
    on_epoch_end: EpochCallback | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``cfg.arch`` on ``split``; resume from ``checkpoint_dir`` when it holds a twin run.

    With torchrun (``WORLD_SIZE`` > 1 and the process group initialised by the
    caller) each rank takes every ``world``-th sample of the shared permutation and
    gradients are averaged by DistributedDataParallel.  The run itself is
    :func:`training_steps`, driven to its end.
    """
    steps = training_steps(cfg, split, checkpoint_dir, on_epoch_end, progress)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def training_steps(
    cfg: TrainConfig,
    split: PreparedSplit,
    checkpoint_dir: Path | None = None,
    on_epoch_end: EpochCallback | None = None,
    progress: bool = True,
) -> Generator[None, None, TrainResult]:
    """:func:`train` as a generator that pauses after every optimiser step and returns the
    :class:`TrainResult`, so that a caller can interleave several runs
    (:func:`mr2unet.training.many.train_many`).  Between two steps it touches no global
    state but the run's own: the global RNG only seeds the model's initialisation, in the
    same stretch as the seeding.
    """
    from tqdm import tqdm

    rank, world = _distributed()
    device = resolve_device(cfg.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    run = run_settings(device, precision=cfg.precision, channels_last=cfg.channels_last,
                       compile=cfg.compile, adam_impl=cfg.adam_impl,
                       cuda_graphs=cfg.cuda_graphs, fused_convs=cfg.fused_convs,
                       narrow_norms_nchw=cfg.narrow_norms_nchw,
                       onednn_1x1_convs=cfg.onednn_1x1_convs,
                       deterministic=cfg.deterministic, world=world)
    log.info("%s: %s", cfg.arch, run.describe())
    configure_determinism(run.deterministic, device)
    set_cpu_threads(cfg.cpu_threads)
    if len(split) == 0:
        raise UserError("the training split is empty: check data.categories and prepare.")
    cfg = cfg.with_class_weights(split.masks)
    if cfg.uses_class_weights():
        log.info("%s: class weights (background, defect) %s", cfg.arch, cfg.class_weights)
    criterion = SegmentationLoss(cfg.loss_config()).to(device)

    torch.manual_seed(cfg.seed)  # model initialisation
    model = build_model(cfg.arch, **cfg.model_kwargs()).to(device)
    if run.fused_convs:
        fuse_convolutions(model)
    if run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    narrow_norms_in_nchw(model, run.narrow_norms_nchw)  # run_settings: channels-last only
    onednn_1x1_convs(model, run.onednn_1x1_convs)
    optimizer = make_optimizer(model, cfg, run.adam_impl)
    shuffle_gen = torch.Generator().manual_seed(cfg.seed + 1)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 2)

    history: list[dict[str, float]] = []
    start_epoch = 0
    state = load_training_state(checkpoint_dir, cfg.fingerprint())
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        shuffle_gen.set_state(state["shuffle_gen"])
        aug_gen.set_state(state["aug_gen"])
        history = list(state["history"])
        start_epoch = int(state["epoch"])
        log.info("resuming %s from epoch %d (%s)", cfg.arch, start_epoch, checkpoint_dir)

    step_model: nn.Module = model
    if world > 1:
        step_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if run.compile_mode is not None:
        step_model = torch.compile(step_model, mode=run.compile_mode)
    amp_dtype = run.amp_dtype
    if run.cuda_graphs:
        step_model = CudaGraphedForward(model, amp_dtype)

    images = torch.from_numpy(split.images).to(device)  # uint8 (N, H, W, 3), ~50 MB at full size
    masks = torch.from_numpy(split.masks).to(device).long()
    n = len(split)
    crops = crop_table(masks) if cfg.crop_size is not None else None
    if cfg.crop_size is not None and min(images.shape[1:3]) < cfg.crop_size:
        raise UserError(f"the prepared images are {images.shape[2]}x{images.shape[1]}, smaller "
                        f"than the {cfg.crop_size} px crops: raise prepare.tile_source_size "
                        f"or lower prepare.image_size.")
    steps_per_epoch = -(-len(range(rank, n, world)) // cfg.batch_size)
    if cfg.steps is not None:
        cfg = replace(cfg, epochs=max(1, math.ceil(cfg.steps / steps_per_epoch)))
        log.info("%s: train.steps %d at %d steps per epoch: %d epochs", cfg.arch, cfg.steps,
                 steps_per_epoch, cfg.epochs)

    t0 = time.perf_counter()
    warned = False
    bar = tqdm(range(start_epoch, cfg.epochs), initial=start_epoch, total=cfg.epochs,
               desc=f"train {cfg.arch}", unit="epoch", disable=not progress or rank != 0)
    for epoch in bar:
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = epoch_lr(cfg.lr, epoch, cfg.epochs, cfg.lr_schedule)
        epoch_start = time.perf_counter()
        order = torch.randperm(n, generator=shuffle_gen)[rank::world].to(device)
        loss_sum = torch.zeros((), device=device)
        tally = EpochTally(device)  # IOU, Dice and the defect fractions, reduced per epoch
        for step in range(steps_per_epoch):
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            if crops is None:
                x, y = to_input(images[idx]), masks[idx]
            else:  # tiles: one random crop per image (the crop generator is aug_gen)
                origins = crop_origins(crops, idx, cfg.crop_size, tuple(masks.shape[1:]),
                                       cfg.defect_crop_fraction, aug_gen)
                crop_x, y = gather_crops(images, masks, idx, origins, cfg.crop_size)
                x = to_input(crop_x)
            x, y = augment_batch(x, y, cfg.augment, aug_gen)
            if run.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = step_model(x)
            loss = criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                loss_sum += loss.detach() * idx.numel()
                tally.add(logits, y)
            if progress and rank == 0 and (step + 1) % cfg.log_every == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}", step=f"{step + 1}/{steps_per_epoch}")
            yield
        totals = _all_reduce(torch.cat([loss_sum.double().view(1), tally.totals()])).cpu().tolist()
        seen = totals[3]
        seconds = time.perf_counter() - epoch_start
        row = {
            "epoch": epoch + 1,
            "loss": totals[0] / seen,
            "train_iou": totals[1] / seen,
            "train_dice": totals[2] / seen,
            "lr": optimizer.param_groups[0]["lr"],
            # Collapse check (training.collapse): the share of valid pixels predicted defect.
            "pred_defect_fraction": totals[4] / max(totals[6], 1.0),
            "true_defect_fraction": totals[5] / max(totals[6], 1.0),
            "seconds": seconds,
            "images_per_second": seen / seconds,
        }
        kind = collapse_streak([*history, row])
        row["collapsed"] = float(kind is not None)
        history.append(row)
        if kind is not None and not warned and rank == 0:
            log.warning(training_warning(cfg.arch, kind, row))
            warned = True
        bar.set_postfix(loss=f"{row['loss']:.4f}", iou=f"{row['train_iou']:.3f}",
                        img_s=f"{row['images_per_second']:.0f}")
        if on_epoch_end is not None and rank == 0:
            on_epoch_end(row)
        last = epoch + 1 == cfg.epochs
        if checkpoint_dir is not None and rank == 0 and (
                (epoch + 1) % cfg.checkpoint_every == 0 and not last):
            save_training_state(checkpoint_dir, {
                "fingerprint": cfg.fingerprint(),
                "epoch": epoch + 1,
                "model": unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "shuffle_gen": shuffle_gen.get_state(),
                "aug_gen": aug_gen.get_state(),
                "history": history,
            })
    bar.close()
    if warned and rank == 0:
        if collapse_streak(history):
            log.warning("%s ended collapsed (history column `collapsed` = 1)", cfg.arch)
        else:
            log.info("%s recovered from the collapse by epoch %d", cfg.arch, len(history))
    narrow_norms_in_nchw(model, False)  # the network returned runs PyTorch's own kernels,
    onednn_1x1_convs(model, False)  # as it will once loaded from its checkpoint
    return TrainResult(model=unwrap(model), history=history, device=str(device),
                       seconds=time.perf_counter() - t0, resumed_from_epoch=start_epoch,
                       config=cfg)


# --------------------------------------------------------------------------- outputs


def history_metrics(history: list[dict[str, float]]) -> dict[str, float]:
    """Final-epoch training metrics, for the registry and the logs."""
    last = history[-1] if history else {}
    skip = ("epoch", "seconds", "images_per_second")
    return {f"final_{k}": float(v) for k, v in last.items() if k not in skip}


# History columns of the collapse check (mr2unet.training.collapse); `collapsed` is 0 or 1.
HISTORY_COLLAPSE_COLUMNS = ("pred_defect_fraction", "true_defect_fraction", "collapsed")


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    """Per-epoch history as CSV (a DVC plots file); timings are kept out of it.

    Wall-clock seconds differ between runs, so they would break the byte-identical
    reproducibility check; they go to the MLflow run instead.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["epoch", "loss", "train_iou", "train_dice", "lr", *(
        c for c in HISTORY_COLLAPSE_COLUMNS if history and all(c in r for r in history))]
    lines = [",".join(columns)]
    for row in history:
        lines.append(",".join(
            str(int(row[c])) if c in ("epoch", "collapsed") else f"{row[c]:.6g}"
            for c in columns))
    path.write_text("\n".join(lines) + "\n")


def save_trained_model(path: Path, result: TrainResult, cfg: TrainConfig, image_size: int,
                       meta: dict[str, Any]) -> None:
    """The stage's model file: weights + architecture + provenance (no timings)."""
    cfg = result.config or cfg  # with the class weights it resolved
    save_model(path, result.model, cfg.arch, cfg.model_kwargs(), image_size,
               meta={"epochs": cfg.epochs, "seed": cfg.seed, "config": asdict(cfg),
                     "collapsed": result.collapsed, **meta})
