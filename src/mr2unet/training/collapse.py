"""Telling a network that learned from one that collapsed to a constant answer.

On rare defects a network can settle on the trivial answer "no defect anywhere" (or,
more rarely, "defect everywhere"): the loss stops falling, the training IOU stays
constant, and its test scores are those of an empty mask.  Such numbers must not be
ranked.  This module is the check the training loop makes (per epoch, from the
confusion counts the loop computes anyway):
``pred_defect_fraction`` = predicted defect pixels / valid pixels of the epoch,
``true_defect_fraction`` the same for the ground truth.  An epoch is *collapsed to
background* when ``pred < COLLAPSE_RATIO · true`` (it predicts less than a twentieth of
the defect area there is) and *collapsed to defect* when
``1 - pred < COLLAPSE_RATIO · (1 - true)``.  A run is collapsed at an epoch when that
epoch and the ``COLLAPSE_EPOCHS - 1`` before it are collapsed the same way; the
history's ``collapsed`` column is 1 there.

The test-split side (empty predictions on more than half of the defective test images)
and what a collapse means for the ranking and the registry aliases are part of the one
verdict system, :mod:`mr2unet.evaluation.verdict`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
