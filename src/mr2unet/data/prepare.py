"""Preparing the defective images: seeded stratified split, resize, one array per split.

Images are converted to RGB and resized with PIL's bilinear filter, which widens its
support when shrinking (antialiased, close to area averaging); ``reducing_gap`` first
shrinks by an integer factor with a box filter, for speed. Masks are resized by area:
each output pixel gets the fraction of its source pixels that are defect (any non-zero
value), and is a defect when that fraction is at least ``mask_threshold``. A defect too
thin to reach the threshold anywhere (a 2-px scratch in a 1024-px image covers 25 % of a
128-px pixel) would vanish; with ``keep_thin_defects`` such a mask is thresholded at
``mask_threshold`` times its highest coverage instead, so it keeps the defect's
best-covered pixels and every defective image keeps a non-empty mask. How often that
happened is logged and written to ``summary.json``.

``resize`` says how a non-square image becomes a square ``image_size``:

``squash`` (the paper's protocol; MVTec AD is square) resizes width and height
    independently, so a 1:4 image is stretched four-fold across and thin defects along the
    long side are squashed;
``pad`` scales the long side to ``image_size`` (keeping the aspect ratio; each side
    rounded, at least 1 px), then pads the short side to a square, **centred**, with
    **edge replication** (:func:`pad_box`). The padding's mask pixels are
    :data:`~mr2unet.metrics.segmentation.IGNORE_LABEL` (255), so the loss and every metric
    leave them out. Centred, because flips and 90-degree rotations (``train.augment``) then keep the
    padding where test images have it (one pixel aside), and a network sees the content
    where it sees MVTec's; edge replication rather than zeros, because a black band would
    put a strong artificial edge along every content border, which the network would have
    to learn is not a defect (the loss ignores the padding, not the real pixels next to
    it), while replicated edges continue the surface.

Masks are area-resampled to the content size in both modes, so ``mask_threshold`` and
``keep_thin_defects`` mean the same thing; a square image gives the same arrays in both.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from mr2unet.data.mvtec import (
    Sample,
    check_counts,
    count_by_category,
    is_full_dataset,
    scan,
    validate_layout,
)
from mr2unet.data.prepared import PreparedSplit
from mr2unet.errors import UserError
from mr2unet.metrics.segmentation import IGNORE_LABEL

log = logging.getLogger(__name__)
SPLITS = ("train", "test")
RESIZE_MODES = ("squash", "pad")
MANIFEST_COLUMNS = ["category", "defect_type", "image", "mask", "split", "width", "height"]


@dataclass(frozen=True)
class PrepareConfig:
    """The ``prepare`` and ``split`` knobs of params.yaml."""

    image_size: int = 128
    mask_threshold: float = 0.5
    keep_thin_defects: bool = True
    test_fraction: float = 0.2
    seed: int = 42
    resize: str = "squash"

    def __post_init__(self) -> None:
        check_resize_mode(self.resize)


def check_resize_mode(mode: str) -> None:
    if mode not in RESIZE_MODES:
        raise UserError(f"resize mode {mode!r}: expected one of {', '.join(RESIZE_MODES)}.")


@dataclass(frozen=True)
class PreparedImage:
    """One sample after resizing."""

    image: np.ndarray
    mask: np.ndarray
    thin_defect_kept: bool
    width: int
    height: int


def n_test_images(n: int, test_fraction: float) -> int:
    """Test images of a category of ``n``: round half up, at least 1 when n >= 2, < n."""
    if n < 2:
        return 0
    return min(max(math.floor(n * test_fraction + 0.5), 1), n - 1)


def split_samples(samples: list[Sample], test_fraction: float, seed: int) -> list[str]:
    """``"train"``/``"test"`` per sample, stratified per category and seeded.

    Categories are taken in sorted order; each draws a permutation of its images (in
    the order of ``samples``, which :func:`~mr2unet.data.mvtec.scan` sorts) from one
    generator, and its first :func:`n_test_images` images are test images.
    """
    rng = np.random.default_rng(seed)
    splits = ["train"] * len(samples)
    for category in sorted({s.category for s in samples}):
        idx = [i for i, s in enumerate(samples) if s.category == category]
        for j in rng.permutation(len(idx))[:n_test_images(len(idx), test_fraction)]:
            splits[idx[j]] = "test"
    return splits


def read_image(path: Path) -> Image.Image:
    """Open and decode an image; a corrupt or unreadable file is a UserError naming it."""
    try:
        img = Image.open(path)
        img.load()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise UserError(f"cannot read image {path} ({exc}); the file is corrupt: extract "
                        f"the dataset again.") from None
    return img


def pad_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """``(left, top, content_width, content_height)`` of a ``width x height`` image in
    ``pad`` mode: the long side becomes ``size``, the short one keeps the aspect ratio
    (rounded, at least 1 px), and the content is centred (the odd pixel of padding goes
    right / below)."""
    scale = size / max(width, height)
    w = min(size, max(1, round(width * scale)))
    h = min(size, max(1, round(height * scale)))
    return (size - w) // 2, (size - h) // 2, w, h


def content_size(width: int, height: int, size: int, mode: str) -> tuple[int, int]:
    """The ``(width, height)`` an image is resized to before any padding."""
    return (size, size) if mode == "squash" else pad_box(width, height, size)[2:]


def _pad(array: np.ndarray, size: int, value: int | None) -> np.ndarray:
    """Centre ``array`` (``(h, w[, c])``) on a ``size`` square: edges replicated, or
    ``value`` when given."""
    h, w = array.shape[:2]
    left, top = (size - w) // 2, (size - h) // 2
    widths = [(top, size - h - top), (left, size - w - left)] + [(0, 0)] * (array.ndim - 2)
    if value is None:
        return np.pad(array, widths, mode="edge")
    return np.pad(array, widths, mode="constant", constant_values=value)


def resize_image(img: Image.Image, size: int, mode: str = "squash") -> np.ndarray:
    """Any mode -> uint8 RGB ``(size, size, 3)`` (grayscale replicated to 3 channels).

    ``mode`` is ``squash`` (stretch to the square) or ``pad`` (keep the aspect ratio, pad
    centred with replicated edges; see the module docstring).
    """
    rgb = img.convert("RGB")
    small = np.asarray(rgb.resize(content_size(*img.size, size, mode),
                                  Image.Resampling.BILINEAR, reducing_gap=3.0))
    return small if mode == "squash" else _pad(small, size, None)


def crop_padding(array: np.ndarray, width: int, height: int, mode: str) -> np.ndarray:
    """The part of a square ``(S, S, ...)`` model-size array that shows a ``width x height``
    image: all of it in ``squash`` mode, the content without the padding in ``pad`` mode."""
    if mode == "squash":
        return array
    left, top, w, h = pad_box(width, height, array.shape[0])
    return array[top:top + h, left:left + w]


def defect_pixels(img: Image.Image) -> np.ndarray:
    """Boolean ``(H, W)``: any non-zero value (ignoring an alpha channel) is a defect."""
    if img.mode == "P":
        img = img.convert("RGBA")
    values = np.asarray(img)
    if values.ndim == 2:
        return values != 0
    if img.mode in ("RGBA", "LA", "PA"):
        values = values[..., :-1]
    return values.any(axis=2)


def resize_mask(img: Image.Image, size: int, threshold: float, keep_thin: bool,
                mode: str = "squash") -> tuple[np.ndarray, bool]:
    """Binary ``(size, size)`` uint8 mask by area coverage; (mask, thin defect kept).

    In ``pad`` mode the coverage is taken at the content size and the padding is
    :data:`~mr2unet.metrics.segmentation.IGNORE_LABEL`.
    """
    binary = Image.fromarray(defect_pixels(img).astype(np.float32))  # mode F: exact fractions
    coverage = np.asarray(binary.resize(content_size(*img.size, size, mode),
                                        Image.Resampling.BOX))
    mask = coverage >= threshold
    kept = bool(keep_thin and not mask.any() and coverage.max() > 0)
    if kept:
        mask = coverage >= threshold * coverage.max()
    mask = mask.astype(np.uint8)
    return (mask if mode == "squash" else _pad(mask, size, IGNORE_LABEL)), kept


def prepare_sample(raw: Path, sample: Sample, cfg: PrepareConfig) -> PreparedImage:
    """Read one image and its mask from the tree ``raw`` and resize both."""
    img = read_image(raw / sample.image)
    mask_img = read_image(raw / sample.mask)
    if mask_img.size != img.size:
        raise UserError(f"mask {raw / sample.mask} is {mask_img.size[0]}x{mask_img.size[1]} "
                        f"but its image is {img.size[0]}x{img.size[1]}; the dataset copy is "
                        f"damaged: extract it again.")
    mask, kept = resize_mask(mask_img, cfg.image_size, cfg.mask_threshold,
                             cfg.keep_thin_defects, cfg.resize)
    if kept:
        log.info("thin defect kept in %s (it would vanish at %d px)", sample.mask,
                 cfg.image_size)
    return PreparedImage(resize_image(img, cfg.image_size, cfg.resize), mask, kept, *img.size)


def count_check(counts: dict[str, int], check: bool) -> str:
    """Compare with the paper's counts on the full dataset; returns what was done."""
    if not check:
        status = "skipped: disabled (data.check_counts: false or synthetic data)"
    elif not is_full_dataset(list(counts)):
        status = "skipped: not the 15 MVTec AD categories"
    else:
        check_counts(counts)
        status = "passed"
    if status != "passed":
        log.info("count check %s", status)
    return status


def _manifest(samples: list[Sample], splits: list[str], prepared: list[PreparedImage]
              ) -> pd.DataFrame:
    rows = [{"category": s.category, "defect_type": s.defect_type, "image": s.image,
             "mask": s.mask, "split": split, "width": p.width, "height": p.height}
            for s, split, p in zip(samples, splits, prepared, strict=True)]
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def _save_splits(out: Path, manifest: pd.DataFrame, prepared: list[PreparedImage]) -> None:
    for name in SPLITS:
        rows = np.flatnonzero(manifest["split"].to_numpy() == name)
        PreparedSplit(
            images=np.stack([prepared[i].image for i in rows]),
            masks=np.stack([prepared[i].mask for i in rows]),
            categories=manifest["category"].to_numpy()[rows],
            defect_types=manifest["defect_type"].to_numpy()[rows],
            sources=manifest["image"].to_numpy()[rows],
        ).save(out / f"{name}.npz")


def _summary(out: Path, cfg: PrepareConfig, manifest: pd.DataFrame,
             prepared: list[PreparedImage], count_status: str) -> dict[str, Any]:
    manifest = manifest.assign(kept=[p.thin_defect_kept for p in prepared],
                               empty=[not (p.mask == 1).any() for p in prepared])
    per_category = {
        str(category): {**{name: int((group["split"] == name).sum()) for name in SPLITS},
                        "thin_defects_kept": int(group["kept"].sum())}
        for category, group in manifest.groupby("category", sort=True)
    }
    sizes = sorted({f"{w}x{h}" for w, h in zip(manifest["width"], manifest["height"],
                                               strict=True)})
    return {
        "images": len(manifest),
        **{name: int((manifest["split"] == name).sum()) for name in SPLITS},
        "image_size": cfg.image_size,
        "resize": cfg.resize,
        "source_sizes": sizes,
        "count_check": count_status,
        "thin_defects_kept": int(manifest["kept"].sum()),
        "empty_masks": int(manifest["empty"].sum()),
        "per_category": per_category,
        "bytes": {name: (out / f"{name}.npz").stat().st_size for name in SPLITS},
    }


def prepare(raw: Path, out: Path, cfg: PrepareConfig, categories: list[str] | None = None,
            check: bool = True) -> dict[str, Any]:
    """Prepare the MVTec tree ``raw`` into ``out``; returns the summary (also written).

    ``out`` receives ``train.npz``, ``test.npz``, ``manifest.csv`` and ``summary.json``;
    the same inputs and ``cfg`` give byte-identical files.
    """
    chosen = validate_layout(raw, categories or None)
    samples = scan(raw, chosen)
    if not samples:
        raise UserError(f"no defective images with masks under {raw} (categories: "
                        f"{', '.join(chosen)}).")
    status = count_check(count_by_category(samples), check)
    splits = split_samples(samples, cfg.test_fraction, cfg.seed)
    if "test" not in splits:
        raise UserError(f"{len(samples)} defective images are too few for a train/test "
                        f"split: every category needs at least 2.")
    prepared = [prepare_sample(raw, sample, cfg)
                for sample in tqdm(samples, desc="prepare", unit="img")]

    out.mkdir(parents=True, exist_ok=True)
    manifest = _manifest(samples, splits, prepared)
    manifest.to_csv(out / "manifest.csv", index=False, lineterminator="\n")
    _save_splits(out, manifest, prepared)
    summary = _summary(out, cfg, manifest, prepared, status)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("prepared %d images (%d train / %d test) at %d px (%s); %d thin defects kept",
             summary["images"], summary["train"], summary["test"], cfg.image_size,
             cfg.resize, summary["thin_defects_kept"])
    return summary
