"""Segmentation losses of the 2-class networks, for rare defects as well as common ones.

Every loss takes the logits ``(N, 2, H, W)`` and the integer target ``(N, H, W)`` (0 =
background, 1 = defect, :data:`~mr2unet.metrics.segmentation.IGNORE_LABEL` = padding) and returns a
scalar.  Ignored pixels take no part in any sum.  Notation, over the batch's valid pixels
``i`` (``V`` of them): ``p_i`` = softmax probability of the defect class, ``q_i,c`` =
probability of class ``c``, ``y_i`` the target class, ``t_i = [y_i = 1]``.

``train.loss`` names a pixel term, a region term, or a pixel term plus ``dice_weight``
times a region term (``<pixel>_<region>``, e.g. ``focal_dice``):

=============  ===========================================================================
``ce``          cross-entropy, ``-(1/V) Σ_i log q_i,y_i`` (the paper's softmax loss)
``weighted_ce`` class-weighted cross-entropy, ``-Σ_i w_y_i log q_i,y_i / Σ_i w_y_i``
``focal``       focal loss, ``-(1/V) Σ_i (1 - q_i,y_i)^γ log q_i,y_i``
``dice``        soft Dice, ``1 - (2 TP + ε) / (2 TP + FP + FN + ε)``
``tversky``     Tversky, ``1 - (2 TP + ε) / (2 TP + 2α FP + 2β FN + ε)``
=============  ===========================================================================

with the soft counts ``TP = Σ p_i t_i``, ``FP = Σ p_i (1 - t_i)``, ``FN = Σ (1 - p_i) t_i``
of the defect class over the whole batch.  docs/training.md explains when to use which.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mr2unet.config.params import LOSSES as ALL_LOSSES
from mr2unet.config.params import PIXEL_LOSSES, REGION_LOSSES
from mr2unet.errors import UserError
from mr2unet.metrics.segmentation import IGNORE_LABEL

# Every accepted `train.loss`: a pixel term, a region term, or `<pixel>_<region>`.
PIXEL_TERMS, REGION_TERMS, LOSSES = PIXEL_LOSSES, REGION_LOSSES, ALL_LOSSES


def split_loss_name(name: str) -> tuple[str | None, str | None]:
    """``"focal_dice"`` -> ``("focal", "dice")``; ``"ce"`` -> ``("ce", None)``."""
    if name not in LOSSES:
        raise UserError(f"unknown train.loss {name!r}; expected one of {', '.join(LOSSES)}")
    for region in REGION_TERMS:
        if name == region:
            return None, region
        if name.endswith("_" + region):
            return name.removesuffix("_" + region), region
    return name, None


# ----------------------------------------------------------------------- pixel terms


def cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                  weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean pixel-wise cross-entropy ``-(1/V) Σ_i log q_i,y_i`` over the valid pixels.

    With ``weight = (w_0, w_1)``: ``-Σ_i w_y_i log q_i,y_i / Σ_i w_y_i`` (PyTorch's
    weighted mean, so only the ratio ``w_1 / w_0`` matters).  Equal weights give plain CE.
    """
    return F.cross_entropy(logits.float(), target, weight=weight, ignore_index=IGNORE_LABEL)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017), ``-(1/V) Σ_i (1 - q_i,y_i)^γ log q_i,y_i``.

    The factor ``(1 - q)^γ`` shrinks the loss of pixels that are already classified
    confidently (the many easy background pixels), so the few hard ones, often the
    defect's, weigh more.  ``γ = 0`` is the cross-entropy.
    """
    valid = target != IGNORE_LABEL
    logq = logits.float().log_softmax(1)
    logq_t = logq.gather(1, torch.where(valid, target, 0).unsqueeze(1)).squeeze(1)
    per_pixel = -(1 - logq_t.exp()).pow(gamma) * logq_t
    return (per_pixel * valid).sum() / valid.sum().clamp(min=1)


# ---------------------------------------------------------------------- region terms


def soft_sums(logits: torch.Tensor, target: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(TP, Σ p, Σ t)`` of the defect class over the batch's valid pixels.

    ``FP = Σ p - TP`` and ``FN = Σ t - TP``.
    """
    valid = (target != IGNORE_LABEL).float()
    prob = logits.float().softmax(1)[:, 1] * valid
    truth = (target == 1).float()
    return (prob * truth).sum(), prob.sum(), truth.sum()


def tversky_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.5,
                 beta: float = 0.5, eps: float = 1.0) -> torch.Tensor:
    """``1 - (2 TP + ε) / (2 TP + 2α FP + 2β FN + ε)`` (Salehi et al. 2017), over the batch.

    ``β > α`` charges a missed defect pixel more than a false alarm, which pushes a
    network that under-segments rare defects towards larger masks.  Written with the
    factor 2 so that ``α = β = ½`` is exactly :func:`soft_dice_loss` with the same ``ε``.
    """
    tp, prob_sum, truth_sum = soft_sums(logits, target)
    fp, fn = prob_sum - tp, truth_sum - tp
    return 1 - (2 * tp + eps) / (2 * tp + 2 * alpha * fp + 2 * beta * fn + eps)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """``1 - (2 TP + ε) / (2 TP + FP + FN + ε)``: one minus the soft Dice of the defect class.

    Computed over the whole batch, smoothed by ``ε`` (an image batch without defect
    pixels then costs ``Σ p / (Σ p + ε)``, the share of predicted defect, not 0/0).
    A ratio, so it does not care how few the defect pixels are.
    """
    tp, prob_sum, truth_sum = soft_sums(logits, target)
    return 1 - (2 * tp + eps) / (prob_sum + truth_sum + eps)  # 2 TP + FP + FN = Σ p + Σ t


# ----------------------------------------------------------------------- class weights


def class_frequencies(masks: np.ndarray) -> np.ndarray:
    """``(f_0, f_1)``: the share of background and defect among the valid mask pixels."""
    masks = np.asarray(masks)
    counts = np.array([(masks == 0).sum(), (masks == 1).sum()], np.float64)
    total = counts.sum()
    if total == 0:
        raise UserError("the training masks hold no labelled pixel.")
    return counts / total


def balanced_class_weights(masks: np.ndarray) -> list[float]:
    """Inverse-frequency weights ``w_c = 1 / (2 f_c)`` of the training masks (``auto``).

    The "balanced" rule (scikit-learn's ``n_samples / (n_classes · count_c)``): each
    class then carries the same total weight, and the pixel-weighted mean weight
    ``Σ_c f_c w_c`` is 1.  Rounded to 6 significant digits so that the recorded config
    and the fingerprint are stable.
    """
    freq = class_frequencies(masks)
    if (freq == 0).any():
        raise UserError("train.class_weights: auto needs both classes in the training "
                        f"masks (background, defect shares: {freq[0]:.4g}, {freq[1]:.4g}); "
                        "give the weights as [w0, w1] instead.")
    return [float(f"{1 / (2 * f):.6g}") for f in freq]


# ------------------------------------------------------------------------ composition


@dataclass(frozen=True)
class LossConfig:
    """The loss knobs of ``params.yaml: train`` (see the module docstring)."""

    loss: str = "ce"
    dice_weight: float = 1.0
    class_weights: tuple[float, ...] | list[float] | None = None  # resolved, not "auto"
    focal_gamma: float = 2.0
    tversky_alpha: float = 0.5
    tversky_beta: float = 0.5


class SegmentationLoss(nn.Module):
    """``pixel term + dice_weight × region term`` (either may be absent), see above.

    A module so that the class weights live on the training device as a buffer.
    """

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.pixel, self.region = split_loss_name(cfg.loss)
        weight = None
        if self.pixel == "weighted_ce":
            if cfg.class_weights is None or len(cfg.class_weights) != 2:
                raise UserError("train.loss: weighted_ce needs train.class_weights: auto "
                                f"or [w0, w1] (got {cfg.class_weights!r}).")
            weight = torch.tensor([float(w) for w in cfg.class_weights], dtype=torch.float32)
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        loss = None
        if self.pixel == "ce":
            loss = cross_entropy(logits, target)
        elif self.pixel == "weighted_ce":
            loss = cross_entropy(logits, target, self.weight)
        elif self.pixel == "focal":
            loss = focal_loss(logits, target, cfg.focal_gamma)
        if self.region is None:
            assert loss is not None
            return loss
        term = (soft_dice_loss(logits, target) if self.region == "dice" else
                tversky_loss(logits, target, cfg.tversky_alpha, cfg.tversky_beta))
        return term if loss is None else loss + cfg.dice_weight * term


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, cfg: LossConfig
                      ) -> torch.Tensor:
    """Functional form of :class:`SegmentationLoss`."""
    return SegmentationLoss(cfg).to(logits.device)(logits, target)
