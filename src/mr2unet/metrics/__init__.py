"""Pure metric functions on arrays and tensors (no I/O, no state): pixel confusion counts,
IOU/Dice (:mod:`.segmentation`).

Used by data preparation (the ignore label), training (per-epoch scores) and evaluation.
"""
