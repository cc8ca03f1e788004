"""What a training run learns: ``params.yaml: train`` as one :class:`TrainConfig`.

Every field here can change the trained weights beyond the last bits of floating-point
rounding, so all of them (bar the cadences, which live in
:class:`~mr2unet.training.options.RunOptions`) enter the resume fingerprint
(:func:`mr2unet.training.checkpoint.fingerprint`) and DVC's train dependencies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from mr2unet.config.params import LR_SCHEDULES
from mr2unet.errors import UserError
from mr2unet.training.losses import LossConfig, balanced_class_weights, split_loss_name


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
    # prepare.mode: tiles: train on random crop_size crops of the full-resolution images,
    # defect_crop_fraction of them centred on a defect pixel (mr2unet.training.crops).
    # None: the prepared images are the network's input as they are (prepare.mode: resize).
    crop_size: int | None = None
    defect_crop_fraction: float = 0.5

    @classmethod
    def from_params(cls, params: dict[str, Any], arch: str) -> TrainConfig:
        train = params["train"]
        names = {f.name for f in fields(cls)} - {"arch", "model_options", "crop_size",
                                                 "defect_crop_fraction"}
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

    def with_epochs_for(self, steps_per_epoch: int) -> TrainConfig:
        """With a step budget: the epochs it takes at ``steps_per_epoch`` (else unchanged)."""
        if self.steps is None:
            return self
        return replace(self, epochs=max(1, math.ceil(self.steps / steps_per_epoch)))

    def loss_config(self) -> LossConfig:
        weights = self.class_weights if self.uses_class_weights() else None
        return LossConfig(self.loss, self.dice_weight,
                          tuple(weights) if isinstance(weights, list | tuple) else weights,
                          self.focal_gamma, self.tversky_alpha, self.tversky_beta)

    def lr_at(self, epoch: int) -> float:
        """The learning rate of 0-based ``epoch`` (:func:`epoch_lr`)."""
        return epoch_lr(self.lr, epoch, self.epochs, self.lr_schedule)


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
    raise UserError(f"unknown train.lr_schedule {schedule!r}; expected one of "
                    f"{', '.join(LR_SCHEDULES)}")
