"""Image-level detection (mr2unet.metrics.image and evaluate's image-level block), by hand."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from mr2unet.data.prepared import PreparedSplit
from mr2unet.errors import UserError
from mr2unet.evaluation.evaluate import good_images
from mr2unet.evaluation.summaries import image_level, summarise
from mr2unet.metrics.image import (
    defective,
    detection_counts,
    flagged,
    image_auroc_ap,
    image_scores,
)
from mr2unet.metrics.segmentation import IGNORE_LABEL, confusion_counts


def test_max_smoothed_averages_the_valid_3x3_neighbourhood() -> None:
    prob = np.zeros((3, 5, 5))
    prob[0, 0, 0] = 1.0  # a corner: 4 valid pixels in its window -> 1/4
    prob[1, 2, 2] = 0.9  # the centre: every window holding it has 9 pixels -> 0.1
    prob[2, 0, 0] = 1.0  # padding: left out, however high
    prob[2, 4, 4] = 0.6  # a corner next to a padding pixel: 3 valid pixels -> 0.2
    masks = np.zeros((3, 5, 5), np.uint8)
    masks[2, 0, 0] = masks[2, 4, 3] = IGNORE_LABEL
    assert image_scores(prob, masks).tolist() == pytest.approx([0.25, 0.1, 0.2])


def test_top_k_mean_averages_the_top_percent() -> None:
    prob = np.zeros((2, 10, 20))
    prob[0, 0, :3] = [0.9, 0.7, 0.5]  # 200 pixels: k = 2 -> (0.9 + 0.7) / 2
    prob[1, 0, :2] = [0.9, 0.3]
    masks = np.zeros((2, 10, 20), np.uint8)
    masks[1, 0, 0] = IGNORE_LABEL  # 199 valid pixels: k = ceil(1.99) = 2 -> (0.3 + 0) / 2
    assert image_scores(prob, masks, "top_k_mean").tolist() == pytest.approx([0.8, 0.15])
    with pytest.raises(ValueError, match="unknown image score"):
        image_scores(prob, masks, "median")


def test_image_auroc_and_ap_by_hand() -> None:
    # Good images score 0.1 and 0.4, defective ones 0.35 and 0.8: 3 of 4 pairs right.
    # AP: 0.8 (defect, P = 1, R = 1/2), 0.4 (good), 0.35 (defect, P = 2/3, R = 1).
    found = image_auroc_ap(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool))
    assert found == pytest.approx({"image_auroc": 0.75, "image_ap": 0.5 + 0.5 * 2 / 3})
    assert image_auroc_ap(np.array([0.1, 0.2]), np.array([1, 1], bool)) is None


def test_a_detection_is_a_large_enough_8_connected_component() -> None:
    pred = np.zeros((3, 5, 5), np.uint8)
    pred[0, 0, 0] = pred[0, 1, 1] = 1  # diagonal: one component of 2
    pred[1, 0, 0] = pred[1, 0, 2] = pred[1, 4, 4] = 1  # three single pixels
    pred[2, 2, :] = 1  # 5 pixels, 3 of them padding
    masks = np.zeros((3, 5, 5), np.uint8)
    masks[2, 2, :3] = IGNORE_LABEL
    assert flagged(pred, masks, 1).tolist() == [True, True, True]
    assert flagged(pred, masks, 2).tolist() == [True, False, True]
    assert flagged(pred, masks, 3).tolist() == [False, False, False]


def test_false_alarm_and_miss_counts() -> None:
    found = detection_counts(np.array([1, 0, 0, 1, 1, 0], bool),
                             np.array([0, 0, 0, 1, 1, 1], bool))
    assert found == {"good_images": 3, "false_alarms": 1, "defective_images": 3, "misses": 1,
                     "false_alarm_rate": pytest.approx(1 / 3), "miss_rate": pytest.approx(1 / 3)}
    assert "false_alarm_rate" not in detection_counts(np.ones(2, bool), np.ones(2, bool))


def test_good_images_from_the_manifest(tmp_path) -> None:
    masks = np.zeros((3, 2, 2), np.uint8)
    masks[0, 0, 0] = 1
    masks[2, :, :] = IGNORE_LABEL  # all padding: no defect pixel
    split = PreparedSplit(np.zeros((3, 2, 2, 3), np.uint8), masks, np.array(["a"] * 3),
                          np.array(["x", "good", "y"]), np.array(["a/0.png", "a/1.png", "a/2.png"]))
    assert defective(masks).tolist() == [True, False, False]
    assert good_images(split, tmp_path / "missing.csv") is None  # summarise: empty masks
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"image": ["a/2.png", "a/1.png", "a/0.png", "b/9.png"],
                  "good": [False, True, False, True]}).to_csv(manifest, index=False)
    assert good_images(split, manifest).tolist() == [False, True, False]
    pd.DataFrame({"image": ["a/0.png"], "good": [False]}).to_csv(manifest, index=False)
    with pytest.raises(UserError, match="does not list test image a/1.png"):
        good_images(split, manifest)
    pd.DataFrame({"image": ["a/0.png"]}).to_csv(manifest, index=False)  # no `good` column
    assert good_images(split, manifest) is None


def small_set() -> tuple[np.ndarray, ...]:
    """Category a: 2 good and 2 defective 4x4 images; category b: 1 defective image."""
    masks = np.zeros((5, 4, 4), np.uint8)
    masks[2:, 0, 0] = 1
    levels = np.zeros((5, 4, 4), np.uint8)
    levels[:, 1, 1] = [0, 180, 90, 255, 255]
    pred = np.zeros((5, 4, 4), np.uint8)
    pred[1, 1, 1] = 1  # a false alarm
    pred[3, 0, 0] = 1  # a hit; image 2 is missed
    pred[4, 0:2, 0] = 1
    return levels, pred, masks, np.array(["a", "a", "a", "a", "b"])


def test_image_level_block_by_hand() -> None:
    levels, pred, masks, cats = small_set()
    good = ~defective(masks)
    primary, pooled = image_level(levels, pred, masks, cats, good)
    # Each image score is proportional to its one non-zero level: good 0 and 180,
    # defective 90 and 255: pairs right = (90 > 0) + (255 > 0) + (255 > 180) = 3 of 4;
    # AP: 255 (defect, P = 1, R = 1/2), 180 (good), 90 (defect, P = 2/3, R = 1).
    assert primary["per_category"]["a"] == {
        "image_auroc": 0.75, "image_ap": 0.833333, "false_alarm_rate": 0.5, "miss_rate": 0.5}
    assert primary["per_category"]["b"] == {"miss_rate": 0.0}  # no good image in b
    assert primary["mean"] == {"image_auroc": 0.75, "image_ap": 0.833333,
                               "false_alarm_rate": 0.5, "miss_rate": 0.25}
    assert pooled["good_images"] == 2 and pooled["false_alarms"] == 1
    assert pooled["defective_images"] == 3 and pooled["misses"] == 1
    assert pooled["all_images"]["miss_rate"] == pytest.approx(1 / 3, abs=1e-6)
    assert pooled["per_category"]["b"] == {"good_images": 0, "false_alarms": 0,
                                           "defective_images": 1, "misses": 0}
    # With min_defect_area 2 only image 4's two pixels are a detection.
    primary, _ = image_level(levels, pred, masks, cats, good, min_area=2)
    assert primary["per_category"]["a"]["false_alarm_rate"] == 0.0
    assert primary["per_category"]["a"]["miss_rate"] == 1.0


def test_image_level_fields_are_absent_without_good_images() -> None:
    levels, pred, masks, cats = small_set()
    counts = np.zeros((3, 3), np.int64)
    counts[:, 2] = 1
    primary, pooled = summarise(counts, cats[2:], 1.0, levels[2:], masks[2:], pred[2:])
    assert "image_level" not in pooled
    assert not {"image_auroc", "false_alarm_rate", "miss_rate"} & set(primary["mean"])
    counts = np.zeros((5, 3), np.int64)
    primary, pooled = summarise(counts, cats, 1.0, levels, masks, pred)
    assert primary["mean"]["false_alarm_rate"] == 0.5 and pooled["image_level"]["misses"] == 1
    json.dumps(pooled, allow_nan=False)


def test_good_parts_are_left_out_of_iou_but_count_for_detection() -> None:
    """Two defective images (IOU 0.5 and 1.0) and two good parts, one with a false alarm:
    IOU/Dice stay those of the defective images; the false alarm shows at image level."""
    masks = np.zeros((4, 4, 4), np.uint8)
    masks[0, 0, :2] = 1
    masks[1, 1, :2] = 1
    pred = np.zeros_like(masks)
    pred[0, 0, :] = 1          # 2 TP + 2 FP: IOU 0.5
    pred[1, 1, :2] = 1         # exact: IOU 1.0
    pred[3, 2, 2] = 1          # a false alarm on good part 3
    counts = confusion_counts(torch.from_numpy(pred), torch.from_numpy(masks)).numpy()
    levels = (pred * 255).astype(np.uint8)
    good = np.array([False, False, True, True])
    categories = np.array(["a"] * 4)
    primary, pooled = summarise(counts, categories, 1.0, levels, masks, pred, good)
    assert primary["mean"]["iou"] == 0.75 and pooled["good_images_left_out_of_iou"] == 2
    assert pooled["image_level"]["false_alarms"] == 1 and pooled["image_level"]["misses"] == 0
    everything, _ = summarise(counts, categories, 1.0, levels, masks, pred, None)
    assert everything["mean"]["iou"] == pytest.approx((0.5 + 1 + 1 + 0) / 4)
