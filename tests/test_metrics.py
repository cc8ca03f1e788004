"""The pure IOU / Dice functions (mr2unet.metrics.segmentation) against hand-computed values."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mr2unet.metrics.segmentation import (
    IGNORE_LABEL,
    confusion_counts,
    dice_from_counts,
    iou_from_counts,
    mean_scores,
    oracle_threshold,
    pixel_auroc_ap,
    pooled_scores,
    scored_pixels,
    scores_from_counts,
)
from mr2unet.reporting.inputs import paper_table

SHARED_TABLE1 = Path(__file__).resolve().parents[1].parent / "shared" / "paper" / "table1.csv"


def test_counts_iou_and_dice_by_hand() -> None:
    pred = torch.tensor([[[1, 1, 0, 0], [0, 0, 0, 0]],
                         [[1, 1, 1, 0], [1, 0, 0, 0]]])
    target = torch.tensor([[[1, 0, 1, 0], [0, 0, 0, 0]],
                           [[1, 1, 0, 0], [1, 1, 0, 0]]])
    counts = confusion_counts(pred, target).numpy()
    assert counts.tolist() == [[1, 1, 1], [3, 1, 1]]
    assert iou_from_counts(counts).tolist() == pytest.approx([1 / 3, 3 / 5])
    assert dice_from_counts(counts).tolist() == pytest.approx([2 / 4, 6 / 8])


def test_counts_reject_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        confusion_counts(torch.zeros(1, 4, 4), torch.zeros(1, 4, 5))


def test_counts_leave_out_padding() -> None:
    """IGNORE_LABEL pixels (prepare.resize: pad) count nowhere: the IOU is over real pixels.

    A 4x8 image padded to 8x8 (two rows of padding above and below); the prediction
    hits the 2x2 defect, adds one false alarm on a real pixel and paints the whole
    padding as defect, which must not count.
    """
    target = torch.full((1, 8, 8), IGNORE_LABEL, dtype=torch.uint8)
    target[0, 2:6] = 0
    target[0, 3:5, 3:5] = 1
    pred = torch.zeros(1, 8, 8, dtype=torch.uint8)
    pred[0, 3:5, 3:5] = 1
    pred[0, 2, 0] = 1            # false alarm on a real pixel
    pred[0, :2] = pred[0, 6:] = 1  # "defect" all over the padding: ignored
    counts = confusion_counts(pred, target)
    assert counts.tolist() == [[4, 1, 0]]
    assert iou_from_counts(counts.numpy()).tolist() == pytest.approx([4 / 5])
    # A miss in the real pixels is still a miss; a padded batch row of only padding is empty.
    pred[0, 3, 3] = 0
    both = confusion_counts(torch.cat([pred, pred]),
                            torch.cat([target, torch.full_like(target, IGNORE_LABEL)]))
    assert both.tolist() == [[3, 1, 1], [0, 0, 0]]


def test_perfect_prediction_scores_one() -> None:
    mask = torch.zeros(1, 8, 8, dtype=torch.uint8)
    mask[0, 2:5, 3:7] = 1
    counts = confusion_counts(mask, mask).numpy()
    assert counts.tolist() == [[12, 0, 0]]
    assert iou_from_counts(counts)[0] == 1.0 and dice_from_counts(counts)[0] == 1.0


@pytest.mark.parametrize("empty_score", [1.0, 0.0])
def test_empty_masks(empty_score: float) -> None:
    # both empty | GT non-empty, prediction empty | GT empty, prediction non-empty
    counts = np.array([[0, 0, 0], [0, 0, 7], [0, 5, 0]])
    assert iou_from_counts(counts, empty_score).tolist() == [empty_score, 0.0, 0.0]
    assert dice_from_counts(counts, empty_score).tolist() == [empty_score, 0.0, 0.0]
    assert mean_scores(counts, empty_score)["iou"] == pytest.approx(empty_score / 3)


def test_mean_and_pooled_differ_on_unequal_images() -> None:
    # A small perfectly found defect and a large half-found one.
    counts = np.array([[1, 0, 0], [10, 10, 0]])
    assert mean_scores(counts) == pytest.approx({"iou": (1 + 0.5) / 2,
                                                 "dice": (1 + 20 / 30) / 2})
    assert pooled_scores(counts) == pytest.approx({"iou": 11 / 21, "dice": 22 / 32})


def test_pooled_score_of_all_empty_images_is_the_empty_score() -> None:
    counts = np.zeros((3, 3), np.int64)
    assert pooled_scores(counts, empty_score=0.0) == {"iou": 0.0, "dice": 0.0}
    assert pooled_scores(counts, empty_score=1.0) == {"iou": 1.0, "dice": 1.0}


def test_mean_of_no_images_is_nan() -> None:
    scores = mean_scores(np.zeros((0, 3), np.int64))
    assert math.isnan(scores["iou"]) and math.isnan(scores["dice"])


def test_tensor_scores_keep_leading_dimensions() -> None:
    counts = torch.tensor([[[2, 2, 0], [0, 0, 0]], [[0, 1, 1], [4, 0, 0]]])
    iou, dice = scores_from_counts(counts, empty_score=0.5)
    assert iou.shape == (2, 2)
    assert iou.flatten().tolist() == pytest.approx([0.5, 0.5, 0.0, 1.0])
    assert dice.flatten().tolist() == pytest.approx([4 / 6, 0.5, 0.0, 1.0])


def _read_shared_table1() -> dict[tuple[str, str], dict[str, float]]:
    if not SHARED_TABLE1.is_file():
        pytest.skip(f"the paper's Table 1 is not at {SHARED_TABLE1} (../shared is missing)")
    with SHARED_TABLE1.open(newline="") as fh:
        return {(r["model"], r["category"]): {"iou": float(r["iou"]), "dice": float(r["dice"])}
                for r in csv.DictReader(fh)}


def test_packaged_table1_is_the_papers() -> None:
    assert paper_table() == _read_shared_table1()


def test_paper_mean_row_is_the_plain_mean_of_its_15_categories() -> None:
    table = _read_shared_table1()
    for model in ("unet", "resunet", "attention_unet", "mr2unet"):
        rows = [v for (m, c), v in table.items() if m == model and c != "mean"]
        assert len(rows) == 15
        for metric in ("iou", "dice"):
            mean = sum(r[metric] for r in rows) / 15
            # The paper rounds every value to 4 decimals; the largest gap is 9.3e-5.
            assert abs(mean - table[(model, "mean")][metric]) < 1e-4, (model, metric)


# ------------------------------------------------------------- threshold-free scores

# Five pixels: defects scored 200 and 100, normals 150, 50, 50 (8-bit levels).
LEVELS = np.array([200, 100, 150, 50, 50])
LABELS = np.array([True, True, False, False, False])


def test_pixel_auroc_and_ap_by_hand() -> None:
    # AUROC = share of (defect, normal) pairs ranked right: 200 > all 3, 100 > the two 50s.
    # AP: by falling score, (precision, recall) at each defect: (1/1, 1/2), (2/3, 1)
    #     -> 1/2 * 1 + 1/2 * 2/3 = 5/6.
    assert pixel_auroc_ap(LEVELS, LABELS) == {"pixel_auroc": pytest.approx(5 / 6),
                                              "pixel_ap": pytest.approx(5 / 6)}
    # Ties count one half (AUROC) and share one precision (AP).
    assert pixel_auroc_ap(np.array([5, 5]), np.array([True, False])) == {
        "pixel_auroc": 0.5, "pixel_ap": 0.5}
    assert pixel_auroc_ap(np.array([0.9, 0.1, 0.4]), np.array([1, 0, 1])) == {
        "pixel_auroc": 1.0, "pixel_ap": 1.0}


def test_levels_counted_per_value_score_as_every_pixel_through_scikit_learn() -> None:
    # pixel_auroc_ap hands integer levels to scikit-learn as weighted (level, label)
    # pairs: the values must equal scikit-learn's on the pixels themselves, to the bit.
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(5)
    for trial in range(6):
        labels = rng.random(20_000) < (0.02, 0.3, 0.5)[trial % 3]
        levels = np.clip(rng.normal(100 + 60 * labels, 40), 0, 255).astype(np.uint8)
        if trial >= 3:  # few distinct values, many ties, a narrow range
            levels = (levels // 64 + 7).astype(np.int64)
        found = pixel_auroc_ap(levels, labels)
        assert found == {"pixel_auroc": roc_auc_score(labels, levels),
                         "pixel_ap": average_precision_score(labels, levels)}


def test_single_class_ground_truth_has_no_auroc() -> None:
    assert pixel_auroc_ap(LEVELS, np.zeros(5, bool)) is None
    assert pixel_auroc_ap(LEVELS, np.ones(5, bool)) is None
    assert oracle_threshold(LEVELS, np.zeros(5, bool)) is None  # nothing to find


def test_oracle_threshold_by_hand() -> None:
    # mask = level >= k:  k <= 50: TP 2, FP 3 -> 2/5;  51..100: TP 2, FP 1 -> 2/3 (best);
    # 101..150: TP 1, FP 1, FN 1 -> 1/3;  151..200: TP 1, FN 1 -> 1/2;  above: 0.
    best = oracle_threshold(LEVELS, LABELS)
    assert best == {"iou": pytest.approx(2 / 3), "dice": pytest.approx(0.8),
                    "threshold": pytest.approx(51 / 255)}
    assert oracle_threshold(np.array([3, 3]), np.array([True, True]), top=3) == {
        "iou": 1.0, "dice": 1.0, "threshold": 0.0}  # all defect: mark everything
    with pytest.raises(ValueError, match="0..255"):
        oracle_threshold(np.array([256]), np.array([True]))


def test_padding_pixels_are_not_scored() -> None:
    scores = np.array([[9, 8], [7, 6]])
    masks = np.array([[1, IGNORE_LABEL], [0, 2]], np.uint8)
    kept, labels = scored_pixels(scores, masks)
    assert kept.tolist() == [9, 7, 6] and labels.tolist() == [True, False, True]
    with pytest.raises(ValueError, match="shape"):
        scored_pixels(scores, masks[:1])
