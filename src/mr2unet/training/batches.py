"""The training split on the device, its batches, and an epoch's tally of scores.

The whole split lives on the device as one uint8 tensor; each step slices a batch (or,
in tiles mode, one random crop per image), converts and augments it on the device.
:class:`EpochTally` gathers the epoch's scores without a host sync per step, and
:class:`EpochTotals` is what an epoch sums to, by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mr2unet.data.prepared import PreparedSplit
from mr2unet.data.transforms import to_input
from mr2unet.errors import UserError
from mr2unet.metrics.segmentation import IGNORE_LABEL, confusion_counts, scores_from_counts
from mr2unet.training.config import TrainConfig
from mr2unet.training.crops import crop_origins, crop_table, gather_crops


class Batches:
    """``split`` on ``device``; :meth:`get` turns a step's indices into a network input."""

    def __init__(self, split: PreparedSplit, cfg: TrainConfig, device: torch.device) -> None:
        if len(split) == 0:
            raise UserError("the training split is empty: check data.categories and prepare.")
        self.cfg = cfg
        self.images = torch.from_numpy(split.images).to(device)  # uint8 (N, H, W, 3)
        self.masks = torch.from_numpy(split.masks).to(device).long()
        self.crops = crop_table(self.masks) if cfg.crop_size is not None else None
        if cfg.crop_size is not None and min(self.images.shape[1:3]) < cfg.crop_size:
            raise UserError(f"the prepared images are {self.images.shape[2]}x"
                            f"{self.images.shape[1]}, smaller than the {cfg.crop_size} px "
                            "crops: raise prepare.tile_source_size or lower prepare.image_size.")

    def __len__(self) -> int:
        return len(self.images)

    def steps_per_epoch(self, rank: int, world: int) -> int:
        """Optimiser steps per epoch of this rank's share (the last batch may be partial)."""
        return -(-len(range(rank, len(self), world)) // self.cfg.batch_size)

    def get(self, idx: torch.Tensor, aug_gen: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """Input ``(N, 3, H, W)`` float and target ``(N, H, W)`` of samples ``idx``."""
        if self.crops is None:
            x, y = to_input(self.images[idx]), self.masks[idx]
        else:  # tiles: one random crop per image (the crop generator is aug_gen)
            size = self.cfg.crop_size
            origins = crop_origins(self.crops, idx, size, tuple(self.masks.shape[1:]),
                                   self.cfg.defect_crop_fraction, aug_gen)
            crop_x, y = gather_crops(self.images, self.masks, idx, origins, size)
            x = to_input(crop_x)
        return augment_batch(x, y, self.cfg.augment, aug_gen)


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


@dataclass(frozen=True)
class EpochTotals:
    """What an epoch's steps sum to (over every rank): losses and scores by image, pixels."""

    loss: float  # Σ over images of the batch loss
    iou: float  # Σ per-image IOU of the defect class
    dice: float
    images: float
    predicted_defect: float  # valid pixels predicted defect
    true_defect: float
    valid_pixels: float

    def row(self, epoch: int, lr: float, seconds: float) -> dict[str, float]:
        """The history row of 1-based ``epoch`` (mr2unet.training.outputs.write_history)."""
        pixels = max(self.valid_pixels, 1.0)
        return {
            "epoch": epoch,
            "loss": self.loss / self.images,
            "train_iou": self.iou / self.images,
            "train_dice": self.dice / self.images,
            "lr": lr,
            # Collapse check (training.collapse): the share of valid pixels predicted defect.
            "pred_defect_fraction": self.predicted_defect / pixels,
            "true_defect_fraction": self.true_defect / pixels,
            "seconds": seconds,
            "images_per_second": self.images / seconds,
        }


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
        self.loss = torch.zeros((), device=device)  # Σ batch loss x batch size
        self.images: list[torch.Tensor] = []  # per step: (batch, 3) TP, FP, FN
        self.pixels: list[torch.Tensor] = []  # per step: true-defect and valid pixels

    def add(self, logits: torch.Tensor, target: torch.Tensor, loss: torch.Tensor) -> None:
        """One step's batch; call under ``torch.no_grad()``."""
        self.loss += loss.detach() * len(target)
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

    def summed(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
               ) -> EpochTotals:
        """The epoch's :class:`EpochTotals`; ``reduce`` sums a tensor over the ranks."""
        values = torch.cat([self.loss.double().view(1), self.totals()])
        if reduce is not None:
            values = reduce(values)
        return EpochTotals(*values.cpu().tolist())
