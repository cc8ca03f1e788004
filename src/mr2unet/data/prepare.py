"""Preparing the defective images: seeded stratified split, resize, one array per split.

Images are resized with PIL's bilinear filter, which widens its support when shrinking
(an antialiased, area-like reduction; ``reducing_gap`` first shrinks by an integer factor
with a box filter for speed). Masks are resized by area: each output pixel gets the
fraction of its source pixels that are defect, and is a defect when that fraction is at
least ``mask_threshold``. A defect too thin to reach the threshold anywhere (a 2-px
scratch in a 1024-px image covers 25 % of a 128-px pixel) would vanish; with
``keep_thin_defects`` such an image keeps the pixels of highest coverage instead, so every
defective image keeps a non-empty mask. How often that happened is in summary.json.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from mr2unet.data.mvtec import PAPER_COUNTS, Sample, check_counts, scan, validate_layout
from mr2unet.data.prepared import PreparedSplit
from mr2unet.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareConfig:
    image_size: int = 128
    mask_threshold: float = 0.5
    keep_thin_defects: bool = True
    test_fraction: float = 0.2
    seed: int = 42


def split_samples(samples: list[Sample], test_fraction: float, seed: int) -> list[str]:
    """``"train"``/``"test"`` per sample, stratified per category and seeded.

    Each category (in sorted order) draws its own permutation from one generator; its
    first ``floor(n * test_fraction + 0.5)`` images (at least one when n >= 2) are test.
    """
    rng = np.random.default_rng(seed)
    splits = ["train"] * len(samples)
    for category in sorted({s.category for s in samples}):
        idx = [i for i, s in enumerate(samples) if s.category == category]
        n_test = math.floor(len(idx) * test_fraction + 0.5)
        n_test = min(max(n_test, 1 if len(idx) >= 2 else 0), len(idx) - 1 if len(idx) else 0)
        for j in rng.permutation(len(idx))[:n_test]:
            splits[idx[j]] = "test"
    return splits


def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
        return img
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise UserError(f"cannot read image {path} ({exc}); the file is corrupt: extract "
                        f"the dataset again.") from None


def resize_image(img: Image.Image, size: int) -> np.ndarray:
    """Any mode -> uint8 RGB ``(size, size, 3)`` (grayscale replicated to 3 channels)."""
    rgb = img.convert("RGB")
    return np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0))


def resize_mask(img: Image.Image, size: int, threshold: float, keep_thin: bool
                ) -> tuple[np.ndarray, bool]:
    """Binary ``(size, size)`` uint8 mask by area coverage; (mask, thin defect rescued)."""
    binary = Image.fromarray((np.asarray(img.convert("L")) > 0).astype(np.uint8) * 255)
    coverage = np.asarray(binary.resize((size, size), Image.Resampling.BOX),
                          dtype=np.float32) / 255
    mask = coverage >= threshold
    rescued = False
    if keep_thin and not mask.any() and coverage.max() > 0:
        mask = coverage >= coverage.max()
        rescued = True
    return mask.astype(np.uint8), rescued


def prepare(raw: Path, out: Path, cfg: PrepareConfig, categories: list[str] | None = None,
            check: bool = True) -> dict:
    """Prepare ``raw`` (an MVTec tree) into ``out``; returns the summary dict."""
    chosen = validate_layout(raw, categories or None)
    samples = scan(raw, chosen)
    if not samples:
        raise UserError(f"no defective images with masks under {raw}.")
    counts = {c: sum(s.category == c for s in samples) for c in chosen}
    if check and set(chosen) == set(PAPER_COUNTS):
        check_counts(counts)
    else:
        log.info("count check skipped (categories %s are not the full MVTec AD set)", chosen)
    splits = split_samples(samples, cfg.test_fraction, cfg.seed)

    size = cfg.image_size
    images = np.zeros((len(samples), size, size, 3), np.uint8)
    masks = np.zeros((len(samples), size, size), np.uint8)
    rows, rescued = [], 0
    for i, sample in enumerate(tqdm(samples, desc="prepare", unit="img")):
        img = _open(raw / sample.image)
        mask_img = _open(raw / sample.mask)
        if mask_img.size != img.size:
            raise UserError(f"mask {raw / sample.mask} is {mask_img.size}, its image "
                            f"{img.size}; the dataset copy is damaged.")
        images[i] = resize_image(img, size)
        masks[i], was_rescued = resize_mask(mask_img, size, cfg.mask_threshold,
                                            cfg.keep_thin_defects)
        rescued += was_rescued
        rows.append({"category": sample.category, "defect_type": sample.defect_type,
                     "image": sample.image, "mask": sample.mask, "split": splits[i],
                     "width": img.size[0], "height": img.size[1]})

    manifest = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    manifest.to_csv(out / "manifest.csv", index=False, lineterminator="\n")
    split_array = np.array(splits)
    for name in ("train", "test"):
        sel = split_array == name
        PreparedSplit(images[sel], masks[sel], manifest["category"].to_numpy()[sel],
                      manifest["defect_type"].to_numpy()[sel],
                      manifest["image"].to_numpy()[sel]).save(out / f"{name}.npz")
    summary = {
        "image_size": size,
        "images": len(samples),
        "per_category": {c: {"train": int(((manifest.category == c) & (split_array == "train"))
                                          .sum()),
                             "test": int(((manifest.category == c) & (split_array == "test"))
                                         .sum())}
                         for c in chosen},
        "empty_masks": int((masks.reshape(len(samples), -1).max(1) == 0).sum()),
        "thin_defects_kept": rescued,
        "bytes": {name: (out / f"{name}.npz").stat().st_size for name in ("train", "test")},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("prepared %d images (%d train / %d test); %d thin defects kept", len(samples),
             int((split_array == "train").sum()), int((split_array == "test").sum()), rescued)
    return summary
