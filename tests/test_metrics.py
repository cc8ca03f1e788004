"""The pure IOU / Dice functions (src/mr2unet/metrics.py) against hand-computed values."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mr2unet.metrics import (
    confusion_counts,
    dice_from_counts,
    iou_from_counts,
    mean_scores,
    pooled_scores,
    scores_from_counts,
)
from mr2unet.report import paper_table

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
