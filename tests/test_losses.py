"""The losses of mr2unet.training.losses against hand-computed values, and their identities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mr2unet.errors import UserError
from mr2unet.metrics.segmentation import IGNORE_LABEL
from mr2unet.training.losses import (
    LOSSES,
    LossConfig,
    SegmentationLoss,
    balanced_class_weights,
    cross_entropy,
    focal_loss,
    segmentation_loss,
    soft_dice_loss,
    split_loss_name,
    tversky_loss,
)

LN2 = math.log(2)


def two_pixels(ignored: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel A: logits (0, 0), q = (1/2, 1/2), a defect; pixel B: logits (0, ln 3),
    q = (1/4, 3/4), background.  ``ignored`` adds a third, ignored pixel C."""
    logits = [[0.0, 0.0], [0.0, math.log(3)]]
    target = [1, 0]
    if ignored:
        logits.append([-2.0, 5.0])
        target.append(IGNORE_LABEL)
    x = torch.tensor(logits).T.reshape(1, 2, 1, len(target))
    return x, torch.tensor(target).reshape(1, 1, len(target))


# CE = (ln 2 + ln 4) / 2; soft TP = 1/2, Σp = 5/4, Σt = 1, FP = 3/4, FN = 1/2.
EXPECTED = {
    "ce": 1.5 * LN2,
    "weighted_ce": (3 * LN2 + 2 * LN2) / 4,  # weights (1, 3): (3 ln 2 + 1 ln 4) / (3 + 1)
    "focal": (0.25 * LN2 + 0.5625 * 2 * LN2) / 2,  # γ = 2: (1/2)² ln 2, (3/4)² ln 4
    "dice": 1 - 2 / 3.25,  # 1 - (2·½ + 1) / (5/4 + 1 + 1)
    "tversky": 1 - 2 / 3.15,  # α = 0.3, β = 0.7: 1 - 2 / (1 + 0.6·¾ + 1.4·½ + 1)
}
CFG = LossConfig(class_weights=(1.0, 3.0), focal_gamma=2.0, tversky_alpha=0.3,
                 tversky_beta=0.7, dice_weight=0.5)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_loss_has_its_hand_computed_value(name: str) -> None:
    logits, target = two_pixels()
    cfg = LossConfig(**{**CFG.__dict__, "loss": name})
    assert segmentation_loss(logits, target, cfg).item() == pytest.approx(EXPECTED[name],
                                                                           rel=1e-6)


@pytest.mark.parametrize("name", [n for n in LOSSES if "_" in n and n != "weighted_ce"])
def test_sums_add_the_weighted_region_term(name: str) -> None:
    pixel, region = split_loss_name(name)
    assert pixel is not None and region is not None
    logits, target = two_pixels()
    cfg = LossConfig(**{**CFG.__dict__, "loss": name})
    expected = EXPECTED[pixel] + 0.5 * EXPECTED[region]
    assert segmentation_loss(logits, target, cfg).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", LOSSES)
def test_ignored_pixels_change_nothing(name: str) -> None:
    cfg = LossConfig(**{**CFG.__dict__, "loss": name})
    plain = segmentation_loss(*two_pixels(), cfg)
    logits, target = two_pixels(ignored=True)
    logits.requires_grad_(True)
    with_ignored = segmentation_loss(logits, target, cfg)
    assert with_ignored.item() == pytest.approx(plain.item(), rel=1e-6)
    with_ignored.backward()
    assert logits.grad is not None and torch.all(logits.grad[..., 2] == 0)


def random_case(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 2, 8, 8, generator=gen) * 2
    target = (torch.rand(3, 8, 8, generator=gen) < 0.2).long()
    target[0, :2] = IGNORE_LABEL
    return logits, target


def test_equal_class_weights_are_plain_cross_entropy() -> None:
    logits, target = random_case()
    plain = cross_entropy(logits, target)
    for w in (1.0, 7.5):
        weighted = cross_entropy(logits, target, torch.tensor([w, w]))
        assert weighted.item() == pytest.approx(plain.item(), rel=1e-6)
    assert cross_entropy(logits, target, torch.tensor([1.0, 5.0])).item() != pytest.approx(
        plain.item(), rel=1e-3)


def test_focal_with_gamma_zero_is_cross_entropy() -> None:
    logits, target = random_case(1)
    assert focal_loss(logits, target, 0.0).item() == pytest.approx(
        cross_entropy(logits, target).item(), rel=1e-6)
    assert focal_loss(logits, target, 2.0).item() < cross_entropy(logits, target).item()


def test_tversky_with_halves_is_soft_dice() -> None:
    logits, target = random_case(2)
    assert tversky_loss(logits, target, 0.5, 0.5).item() == pytest.approx(
        soft_dice_loss(logits, target).item(), rel=1e-6)
    # β > α charges the misses more: a network that predicts nothing pays more.
    background = torch.zeros(1, 2, 4, 4)
    background[:, 0] = 5.0
    small = torch.zeros(1, 4, 4, dtype=torch.long)
    small[0, :2, :2] = 1
    assert tversky_loss(background, small, 0.3, 0.7) > soft_dice_loss(background, small)


def test_balanced_class_weights_are_inverse_frequencies() -> None:
    masks = np.zeros((2, 2, 3), np.uint8)  # 12 pixels, 3 defect: f = (3/4, 1/4)
    masks[0, 0] = 1
    assert balanced_class_weights(masks) == [pytest.approx(2 / 3), 2.0]
    padded = np.concatenate([masks, np.full((2, 2, 1), IGNORE_LABEL, np.uint8)], axis=2)
    assert balanced_class_weights(padded) == balanced_class_weights(masks)
    with pytest.raises(UserError, match="both classes"):
        balanced_class_weights(np.zeros((2, 4, 4), np.uint8))


def test_names_and_user_errors() -> None:
    assert split_loss_name("ce") == ("ce", None)
    assert split_loss_name("tversky") == (None, "tversky")
    assert split_loss_name("weighted_ce_dice") == ("weighted_ce", "dice")
    assert len(LOSSES) == 11
    with pytest.raises(UserError, match="train.loss"):
        split_loss_name("dice_ce")
    with pytest.raises(UserError, match="class_weights"):
        SegmentationLoss(LossConfig(loss="weighted_ce", class_weights=None))
