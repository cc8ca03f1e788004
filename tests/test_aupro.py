"""AUPRO (mr2unet.metrics.region): a hand-computed case and the definition on random masks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from mr2unet.metrics.region import aupro, integrate_to, label_regions, pro_curve
from mr2unet.metrics.segmentation import IGNORE_LABEL


def two_regions() -> tuple[np.ndarray, np.ndarray]:
    """One 1x14 image: region A = pixels 0-1, region B = pixel 3, 10 normal pixels
    (2 and 4-12), pixel 13 padding."""
    mask = np.zeros((1, 1, 14), np.uint8)
    mask[0, 0, [0, 1, 3]] = 1
    mask[0, 0, 13] = IGNORE_LABEL
    scores = np.full((1, 1, 14), 0.1)
    scores[0, 0, [0, 1, 2, 3, 13]] = [0.9, 0.3, 0.85, 0.8, 1.0]
    return scores, mask


def test_two_regions_by_hand() -> None:
    scores, mask = two_regions()
    fpr, pro = pro_curve(scores, mask)
    # t = 0.9: half of A -> PRO = (1/2 + 0) / 2; t = 0.85: a normal pixel, FPR 1/10;
    # t = 0.8: all of B -> 3/4; t = 0.3: all of A -> 1; t = 0.1: the other 9 normals.
    # The padding pixel (score 1.0) counts nowhere.
    assert fpr.tolist() == pytest.approx([0, 0, 0.1, 0.1, 0.1, 1.0])
    assert pro.tolist() == pytest.approx([0, 0.25, 0.25, 0.75, 1.0, 1.0])
    # Integral to FPR 0.3: 0.1 * 0.25 + 0.2 * 1.0 = 0.225; / 0.3 = 0.75.
    assert aupro(scores, mask) == pytest.approx(0.75)
    # Every region counts the same: the one-pixel B weighs as much as the two-pixel A.
    assert aupro(scores, mask, limit=0.05) == pytest.approx(0.25)


def test_perfect_reversed_and_undefined() -> None:
    _, mask = two_regions()
    perfect = (mask == 1).astype(float)
    assert aupro(perfect, mask) == pytest.approx(1.0)
    # Defects scored lowest: PRO stays 0 until FPR = 1.
    assert aupro(1 - perfect, mask) == pytest.approx(0.0)
    # All scores equal: the curve jumps from (0, 0) to (1, 1); linear at 0.3: 0.15.
    assert aupro(np.zeros_like(perfect), mask) == pytest.approx(0.15)
    assert aupro(perfect, np.zeros_like(mask)) is None  # no region
    assert aupro(perfect, np.ones_like(mask)) is None  # no normal pixel


def test_regions_are_8_connected_within_an_image_only() -> None:
    stack = np.zeros((2, 3, 3), bool)
    stack[0, 0, 0] = stack[0, 1, 1] = True  # diagonal neighbours: one region
    stack[1, 0, 0] = True  # same place in the next image: another region
    labels, count = label_regions(stack)
    assert count == 2 and labels[0, 1, 1] == labels[0, 0, 0] != labels[1, 0, 0]


def test_integrate_to_interpolates_at_the_limit() -> None:
    x, y = np.array([0.0, 0.2, 0.4, 1.0]), np.array([0.0, 1.0, 1.0, 1.0])
    # 0..0.2: triangle 0.1; 0.2..0.3: 0.1.
    assert integrate_to(x, y, 0.3) == pytest.approx(0.2)
    assert integrate_to(x, y, 1.0) == pytest.approx(0.1 + 0.8)


def brute_force_aupro(scores: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """The definition, pixel by pixel, for scores without ties: the curve is a staircase,
    and each normal pixel, taken from the highest score down, adds a step of width
    1 / (normal pixels) at the PRO of the thresholds down to its score."""
    regions = []
    for image, mask in zip(scores, masks, strict=True):
        labels, count = ndimage.label(mask == 1, structure=np.ones((3, 3)))
        regions += [image[labels == k] for k in range(1, count + 1)]
    normal = np.sort(np.concatenate([s[m == 0] for s, m in zip(scores, masks, strict=True)]))
    area, width = 0.0, 1.0 / normal.size
    for i, s in enumerate(normal[::-1]):
        pro = np.mean([(r >= s).mean() for r in regions])
        step = min(width, limit - i * width)
        if step <= 0:
            break
        area += step * pro
    return area / limit


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_definition_on_random_masks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks = (ndimage.uniform_filter(rng.random((3, 24, 24)), (1, 5, 5)) > 0.56).astype(np.uint8)
    masks[0, :2, :] = IGNORE_LABEL  # padding rows
    scores = rng.random(masks.shape) + 0.4 * (masks == 1)
    assert label_regions(masks == 1)[1] >= 3
    assert aupro(scores, masks) == pytest.approx(brute_force_aupro(scores, masks), abs=1e-12)
    # 8-bit levels (ties): the curve at each distinct level, counted region by region.
    levels = np.rint(scores / scores.max() * 255).astype(np.uint8)
    fpr, pro = pro_curve(levels, masks)
    valid = masks != IGNORE_LABEL
    for k, t in enumerate(np.unique(levels[valid])[::-1], start=1):
        hits = []
        for i in range(3):
            labels, count = ndimage.label(masks[i] == 1, np.ones((3, 3)))
            hits += [(levels[i][labels == j] >= t).mean() for j in range(1, count + 1)]
        assert pro[k] == pytest.approx(np.mean(hits), abs=1e-12)
        assert fpr[k] == pytest.approx(((levels >= t) & (masks == 0)).sum()
                                       / (masks == 0).sum(), abs=1e-12)
