"""'Did it learn?' (mr2unet.evaluation.verdict): baselines, the bootstrap, the rule, and the
verdicts of a constant, an untrained, a weak and a trained network."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers import CFG, RUN, constant_model
from sklearn.metrics import roc_auc_score

from mr2unet.data.prepared import PreparedSplit
from mr2unet.evaluation import verdict as v
from mr2unet.evaluation.inference import evaluate
from mr2unet.evaluation.summaries import judge, summarise
from mr2unet.metrics.segmentation import IGNORE_LABEL
from mr2unet.models import build_model
from mr2unet.training.loop import train


def colour_split(n: int, seed: int, size: int = 32) -> PreparedSplit:
    """Grey noise; each defect a rectangle shifted towards red at the same grey level
    (R + 60, G - 30, B - 30), so that no grey threshold can find it."""
    rng = np.random.default_rng(seed)
    images = np.repeat(128 + rng.integers(-40, 41, (n, size, size, 1)), 3, axis=-1)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        y, x = rng.integers(0, size - 10, 2)
        h, w = rng.integers(4, 10, 2)
        masks[i, y:y + h, x:x + w] = 1
    images = images + masks[..., None] * np.array([60, -30, -30])
    return PreparedSplit(np.clip(images, 0, 255).astype(np.uint8), masks,
                         np.array(["a", "b"] * (n // 2)), np.array(["d"] * n),
                         np.array([f"{i}.png" for i in range(n)]))


# ------------------------------------------------------------------------- pieces


def test_auroc_from_histograms_is_scikit_learns() -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(5000) < 0.2
    levels = np.clip(rng.normal(100, 30, 5000) + 25 * labels, 0, 255).astype(np.int64)
    pos = np.bincount(levels[labels], minlength=256)
    neg = np.bincount(levels[~labels], minlength=256)
    assert v.auroc_from_histograms(pos, neg) == pytest.approx(roc_auc_score(labels, levels),
                                                              abs=1e-12)
    # By hand: defects at levels 2 and 1, normals at 1 and 0: (1 + 1 + 1/2 + 1) / 4.
    assert v.auroc_from_histograms(np.array([0, 1, 1]), np.array([1, 1, 0])) == 0.875
    assert np.isnan(v.auroc_from_histograms(np.array([0, 0]), np.array([1, 1])))


def test_level_histograms_leave_padding_out() -> None:
    levels = np.array([[[3, 3, 5]], [[0, 1, 2]]], np.uint8)
    masks = np.array([[[1, 0, IGNORE_LABEL]], [[0, 0, 1]]], np.uint8)
    pos, neg = v.level_histograms(levels, masks)
    assert pos.shape == (2, 256) and pos[0, 3] == 1 and pos[1, 2] == 1 and pos.sum() == 2
    assert neg[0, 3] == 1 and neg[1, :2].tolist() == [1, 1] and neg.sum() == 3


def test_pixel_auroc_interval() -> None:
    split = colour_split(8, seed=1)
    flat = np.full(split.masks.shape, 7, np.uint8)
    assert v.pixel_auroc_interval(flat, split.masks, split.categories) == (0.5, 0.5)
    perfect = (split.masks * 200).astype(np.uint8)
    assert v.pixel_auroc_interval(perfect, split.masks, split.categories) == (1.0, 1.0)
    rng = np.random.default_rng(0)
    noisy = np.clip(rng.normal(100, 40, split.masks.shape) + 40 * split.masks, 0, 255
                    ).astype(np.uint8)
    low, high = v.pixel_auroc_interval(noisy, split.masks, split.categories)
    per = [roc_auc_score(split.masks[split.categories == c].ravel(),
                         noisy[split.categories == c].ravel()) for c in ("a", "b")]
    assert low < np.mean(per) < high and high - low < 0.2
    assert v.pixel_auroc_interval(noisy, split.masks, split.categories) == (low, high)  # seeded


def test_fit_intensity_by_hand() -> None:
    # Grey levels 10 (normal x3), 200 (defect x2), 120 (normal): the best rule marks
    # grey >= 121..200; the lowest such threshold wins.
    images = np.repeat(np.array([[[10, 10, 10, 200, 200, 120]]], np.uint8)[..., None], 3, -1)
    masks = np.array([[[0, 0, 0, 1, 1, 0]]], np.uint8)
    rule = v.fit_intensity(images, masks)
    assert (rule.threshold, rule.brighter, rule.train_iou) == (121, True, 1.0)
    dark = v.fit_intensity(255 - images, masks)  # defects darker: grey <= 55
    assert (dark.threshold, dark.brighter, dark.train_iou) == (55, False, 1.0)
    assert v.grey(np.array([[[[1, 2, 4]]]], np.uint8)).tolist() == [[[2]]]


def test_baselines_by_hand() -> None:
    # Two 2x4 images in one category: a 2-pixel defect on 8 valid pixels, and a 1-pixel
    # defect on 4 valid pixels (4 are padding).
    masks = np.zeros((2, 2, 4), np.uint8)
    masks[0, 0, :2] = 1
    masks[1, 0, 0] = 1
    masks[1, 1, :] = IGNORE_LABEL
    images = np.zeros((2, 2, 4, 3), np.uint8)
    images[masks == 1] = 255
    split = PreparedSplit(images, masks, np.array(["a", "a"]), np.array(["d", "d"]),
                          np.array(["0", "1"]))
    found = v.baselines(split, split)
    assert found["no_defect"] == {"iou": 0.0, "dice": 0.0}
    # IOU 2/8 and 1/4; Dice 2*2/(2*2+6) = 0.4 and 2/(2+3) = 0.4.
    assert found["defect_everywhere"] == pytest.approx({"iou": 0.25, "dice": 0.4})
    assert found["intensity"]["iou"] == 1.0  # white defects on black: found exactly
    assert v.best_baseline(found) == ("intensity", 1.0)
    assert "intensity" not in v.baselines(split, None)


# --------------------------------------------------------------------------- rule


BASE = {"no_defect": {"iou": 0.0}, "defect_everywhere": {"iou": 0.04},
        "intensity": {"iou": 0.03}}


def test_the_rule_and_its_words() -> None:
    weak = v.decide(0.09, 0.70, (0.61, 0.78), BASE)
    assert weak.verdict == v.WEAK and weak.baseline == "defect_everywhere"
    assert v.sentence("U-Net", weak.as_dict()) == (
        'U-Net is weak: IOU 0.090 against 0.040 for "defect everywhere", pixel AUROC 0.70 '
        "[0.61, 0.78]; IOU below 0.25 and pixel AUROC below 0.85: not fit for a line.")
    chance = v.decide(0.30, 0.55, (0.45, 0.66), BASE)
    assert chance.verdict == v.NOT_LEARNED and "interval includes 0.5" in chance.reason
    below = v.decide(0.04, 0.95, (0.93, 0.97), BASE)  # equal to "defect everywhere"
    assert below.verdict == v.NOT_LEARNED
    assert 'the IOU is not above "defect everywhere"' in below.reason
    good = v.decide(0.60, 0.95, (0.93, 0.97), BASE)
    assert good.verdict == v.LEARNED
    assert v.sentence("MR2U-Net", good.as_dict()).startswith("MR2U-Net learned: IOU 0.600")
    # The thresholds are parameters.
    assert v.decide(0.60, 0.95, (0.93, 0.97), BASE, {"iou": 0.7}).verdict == v.WEAK
    assert v.decide(0.09, 0.70, (0.61, 0.78), BASE,
                    {"iou": 0.05, "pixel_auroc": 0.6}).verdict == v.LEARNED
    # Without probabilities only the IOU rule applies.
    assert v.decide(0.30, None, None, BASE).verdict == v.LEARNED


@pytest.mark.parametrize(("flagged", "good", "low", "high", "expected"), [
    # exact (Clopper-Pearson) 95 % intervals; weak only when the lower end is above 0.1
    (0, 20, 0.0, 0.168433, v.LEARNED),
    (1, 4, 0.006309, 0.805880, v.LEARNED),  # 25 % flagged, but 4 parts prove nothing
    (3, 4, 0.194120, 0.993690, v.WEAK),
    (15, 20, 0.508954, 0.913429, v.WEAK),
])
def test_false_alarms_against_the_budget(flagged: int, good: int, low: float, high: float,
                                         expected: str) -> None:
    assert v.exact_interval(flagged, good) == (pytest.approx(low, abs=1e-6),
                                               pytest.approx(high, abs=1e-6))
    found = v.decide(0.60, 0.95, (0.93, 0.97), BASE, {"false_alarm_rate": 0.1},
                     (flagged, good))
    assert found.verdict == expected, found.reason
    block = found.as_dict()["false_alarms"]
    assert (block["count"], block["total"], block["budget"], block["measured"]) == (
        flagged, good, 0.1, True)
    assert block["rate"] == round(flagged / good, 6) and block["above"] is (expected == v.WEAK)
    text = f"{flagged} of {good} ({flagged / good:.0%}, 95 % interval {low:.2f}-{high:.2f})"
    assert text in found.reason
    if expected == v.WEAK:
        assert found.reason.endswith("above the budget 0.1 even at the interval's lower "
                                     "end: not fit for a line")
    # a looser budget passes 3 of 4 (lower end 0.19 < 0.2)
    assert v.decide(0.60, 0.95, (0.93, 0.97), BASE, {"false_alarm_rate": 0.2},
                    (3, 4)).verdict == v.LEARNED


def test_without_good_test_parts_false_alarms_are_not_measured() -> None:
    plain = v.decide(0.60, 0.95, (0.93, 0.97), BASE)
    unmeasured = v.decide(0.60, 0.95, (0.93, 0.97), BASE, None, (0, 0))
    assert unmeasured.verdict == v.LEARNED and unmeasured.reason == plain.reason
    assert unmeasured.as_dict()["false_alarms"] == {
        "count": 0, "total": 0, "rate": None, "ci": None, "budget": 0.1, "measured": False,
        "above": False}
    assert "false_alarms" not in plain.as_dict()  # not counted at all: the block as before
    assert v.sentence("U-Net", unmeasured.as_dict()).endswith(
        "pixel AUROC 0.85). False alarms not measured: no good (defect-free) test images.")
    assert v.sentence("U-Net", plain.as_dict()).endswith("pixel AUROC 0.85).")


def test_judge_counts_good_parts_flagged_and_defective_parts_passed() -> None:
    from mr2unet.evaluation.evaluate import verdict_tags

    split = colour_split(8, seed=1)
    good = np.zeros(8, bool)
    good[:4] = True
    split.masks[good] = 0
    predictions = split.masks.copy()
    predictions[0, :2, :2] = 1  # good part 0 flagged
    predictions[1, 0, 0] = 1  # good part 1 flagged, by a single pixel
    predictions[5] = 0  # defective part 5 passed
    levels = (predictions * 200).astype(np.uint8)
    primary, _ = summarise(np.zeros((8, 3), np.int64) + [1, 0, 0], split.categories, 1.0)
    found = judge(primary, split, levels, split, 1.0, {**v.FIT_FOR_USE, "iou": 0.0,
                                                       "pixel_auroc": 0.0}, good, predictions)
    assert (found["false_alarms"]["count"], found["false_alarms"]["total"]) == (2, 4)
    assert found["misses"] == {"count": 1, "total": 4, "rate": 0.25,
                               "ci": [0.006309, 0.805880]}
    assert found["verdict"] == v.LEARNED  # 2 of 4: lower end 0.07, within 0.1
    tags = verdict_tags(found)
    assert tags["verdict_false_alarms"] == "2 of 4 (50%, 95 % interval 0.07-0.93), budget 0.1"
    # min_defect_area 2: the single pixel is no detection
    fewer = judge(primary, split, levels, split, 1.0, v.FIT_FOR_USE, good, predictions,
                  min_area=2)
    assert fewer["false_alarms"]["count"] == 1
    assert verdict_tags({**found, "false_alarms": {"measured": False}})[
        "verdict_false_alarms"] == v.NOT_MEASURED


# ------------------------------------------------------------------- four networks


@pytest.fixture(scope="module")
def task() -> tuple[PreparedSplit, PreparedSplit]:
    return colour_split(16, seed=0), colour_split(8, seed=1)


def verdict_of(model: torch.nn.Module, task: tuple[PreparedSplit, PreparedSplit]
               ) -> dict[str, object]:
    train_split, test = task
    result = evaluate(model, test, torch.device("cpu"), progress=False)
    primary, _ = summarise(result.counts, test.categories, 1.0, result.probabilities,
                           test.masks)
    return judge(primary, test, result.probabilities, train_split, 1.0, v.FIT_FOR_USE)


def trained(epochs: int, task: tuple[PreparedSplit, PreparedSplit]) -> torch.nn.Module:
    cfg = dataclasses.replace(CFG, epochs=epochs, loss="ce_dice", lr=1e-2)
    return train(cfg, task[0], progress=False, options=RUN).model


def test_a_constant_network_has_not_learned(task) -> None:

    found = verdict_of(constant_model("unet", True), task)
    assert found["verdict"] == v.NOT_LEARNED
    assert found["pixel_auroc"] == 0.5 and found["pixel_auroc_ci"] == [0.5, 0.5]
    assert found["best_baseline"] == "defect_everywhere"  # it *is* that baseline
    assert found["iou"] == found["best_baseline_iou"]
    # The grey threshold finds nothing the colour shift made (same grey level).
    assert found["baselines"]["intensity"]["iou"] < 0.06


def test_an_untrained_network_has_not_learned(task) -> None:
    torch.manual_seed(0)
    found = verdict_of(build_model("unet", base_width=4), task)
    assert found["verdict"] == v.NOT_LEARNED
    assert found["pixel_auroc_ci"][0] <= 0.5 <= found["pixel_auroc_ci"][1]


def test_a_briefly_trained_network_is_weak(task) -> None:
    found = verdict_of(trained(6, task), task)
    assert found["verdict"] == v.WEAK, found["reason"]
    assert found["iou"] > found["best_baseline_iou"] and found["iou"] < 0.25
    assert found["pixel_auroc_ci"][0] > 0.5
    assert "not fit for a line" in found["reason"]


@pytest.mark.slow
def test_a_trained_network_has_learned(task) -> None:
    found = verdict_of(trained(25, task), task)
    assert found["verdict"] == v.LEARNED, found["reason"]
    assert found["iou"] > 0.8 and found["pixel_auroc_ci"][0] > 0.85
