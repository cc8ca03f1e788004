"""Telling a network that learned from one that collapsed to a constant answer.

On rare defects a network can settle on the trivial answer "no defect anywhere" (or,
more rarely, "defect everywhere"): the loss stops falling, the training IOU stays
constant, and its test scores are those of an empty mask.  Such numbers must not be
ranked.  Two pure checks, used by training, evaluation and the report:

Training (per epoch, from the confusion counts the loop computes anyway):
``pred_defect_fraction`` = predicted defect pixels / valid pixels of the epoch,
``true_defect_fraction`` the same for the ground truth.  An epoch is *collapsed to
background* when ``pred < COLLAPSE_RATIO · true`` (it predicts less than a twentieth of
the defect area there is) and *collapsed to defect* when
``1 - pred < COLLAPSE_RATIO · (1 - true)``.  A run is collapsed at an epoch when that
epoch and the ``COLLAPSE_EPOCHS - 1`` before it are collapsed the same way; the
history's ``collapsed`` column is 1 there.

Evaluation: a network is collapsed on the test split when its prediction is empty on
more than half of the test images that have a defect (``missed_images``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Ten epochs: healthy runs on real data often predict nothing for a few early epochs.
COLLAPSE_EPOCHS = 10
COLLAPSE_RATIO = 0.05

ADVICE = ("try a loss for rare defects (train.loss: weighted_ce_dice, focal_dice or ce_dice; "
          "docs/training.md, class imbalance), a smaller train.lr, or more train.epochs")


def epoch_collapse(pred_fraction: float, true_fraction: float,
                   ratio: float = COLLAPSE_RATIO) -> str | None:
    """``"background"``, ``"defect"`` or None for one epoch's predicted/true defect share."""
    if true_fraction > 0 and pred_fraction < ratio * true_fraction:
        return "background"
    if true_fraction < 1 and 1 - pred_fraction < ratio * (1 - true_fraction):
        return "defect"
    return None


def collapse_streak(history: Sequence[Mapping[str, float]], epochs: int = COLLAPSE_EPOCHS,
                    ratio: float = COLLAPSE_RATIO) -> str | None:
    """The collapse kind when the last ``epochs`` rows are all collapsed the same way.

    Rows without ``pred_defect_fraction`` (histories written before it existed) never
    count as collapsed.
    """
    if epochs < 1 or len(history) < epochs:
        return None
    kinds = {epoch_collapse(row["pred_defect_fraction"], row["true_defect_fraction"], ratio)
             if "pred_defect_fraction" in row and "true_defect_fraction" in row else None
             for row in history[-epochs:]}
    return kinds.pop() if len(kinds) == 1 else None


def training_warning(arch: str, kind: str, row: Mapping[str, float],
                     epochs: int = COLLAPSE_EPOCHS) -> str:
    """The log line of a run that collapsed: what happened, what it means, what to try."""
    what = "no defect anywhere" if kind == "background" else "defect everywhere"
    return (f"{arch} has collapsed: for {epochs} epochs in a row (up to epoch "
            f"{int(row['epoch'])}) it predicted {what} (predicted defect share "
            f"{row['pred_defect_fraction']:.2%}, true {row['true_defect_fraction']:.2%}). "
            f"If it stays so, its scores are those of a constant mask, not of a trained "
            f"network; {ADVICE}.")


# ------------------------------------------------------------------------ evaluation


def missed_images(counts: np.ndarray) -> int:
    """Test images with a defect (TP + FN > 0) whose prediction is empty (TP + FP = 0)."""
    counts = np.asarray(counts).reshape(-1, 3)
    return int((((counts[:, 0] + counts[:, 1]) == 0) & ((counts[:, 0] + counts[:, 2]) > 0))
               .sum())


def defective_images(counts: np.ndarray) -> int:
    """Test images whose ground truth holds a defect (TP + FN > 0)."""
    counts = np.asarray(counts).reshape(-1, 3)
    return int(((counts[:, 0] + counts[:, 2]) > 0).sum())


def evaluation_collapsed(counts: np.ndarray) -> bool:
    """Empty predictions on more than half of the test images that have a defect."""
    return 2 * missed_images(counts) > defective_images(counts)


def report_sentence(label: str, pooled: Mapping[str, Any],
                    history: Sequence[Mapping[str, float]] = ()) -> str | None:
    """The report's warning about one network, or None when it learned.

    From ``metrics/pooled/<model>.json`` (``collapsed``, ``missed_images``,
    ``defective_images``) and the training history's last ``collapsed`` value.
    """
    trained = bool(history) and bool(history[-1].get("collapsed", 0))
    if pooled.get("collapsed"):
        text = (f"{label} predicts no defect on {pooled['missed_images']} of "
                f"{pooled['defective_images']} defective test images: not a valid ranking.")
        if trained:
            text += " Its training had collapsed too (history column `collapsed`)."
        return f"{text} Its scores are those of an empty mask; {ADVICE}."
    if trained:
        return (f"{label} collapsed during training (its last {COLLAPSE_EPOCHS} epochs "
                f"predicted a constant mask; history column `collapsed`): not a valid "
                f"ranking; {ADVICE}.")
    return None
