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

log = logging.getLogger(__name__)
SPLITS = ("train", "test")
MANIFEST_COLUMNS = ["category", "defect_type", "image", "mask", "split", "width", "height"]


@dataclass(frozen=True)
class PrepareConfig:
    """The ``prepare`` and ``split`` knobs of params.yaml."""

    image_size: int = 128
    mask_threshold: float = 0.5
    keep_thin_defects: bool = True
    test_fraction: float = 0.2
    seed: int = 42


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


def resize_image(img: Image.Image, size: int) -> np.ndarray:
    """Any mode -> uint8 RGB ``(size, size, 3)`` (grayscale replicated to 3 channels)."""
    rgb = img.convert("RGB")
    return np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0))


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


def resize_mask(img: Image.Image, size: int, threshold: float, keep_thin: bool
                ) -> tuple[np.ndarray, bool]:
    """Binary ``(size, size)`` uint8 mask by area coverage; (mask, thin defect kept)."""
    binary = Image.fromarray(defect_pixels(img).astype(np.float32))  # mode F: exact fractions
    coverage = np.asarray(binary.resize((size, size), Image.Resampling.BOX))
    mask = coverage >= threshold
    kept = bool(keep_thin and not mask.any() and coverage.max() > 0)
    if kept:
        mask = coverage >= threshold * coverage.max()
    return mask.astype(np.uint8), kept


def prepare_sample(raw: Path, sample: Sample, cfg: PrepareConfig) -> PreparedImage:
    """Read one image and its mask from the tree ``raw`` and resize both."""
    img = read_image(raw / sample.image)
    mask_img = read_image(raw / sample.mask)
    if mask_img.size != img.size:
        raise UserError(f"mask {raw / sample.mask} is {mask_img.size[0]}x{mask_img.size[1]} "
                        f"but its image is {img.size[0]}x{img.size[1]}; the dataset copy is "
                        f"damaged: extract it again.")
    mask, kept = resize_mask(mask_img, cfg.image_size, cfg.mask_threshold,
                             cfg.keep_thin_defects)
    if kept:
        log.info("thin defect kept in %s (it would vanish at %d px)", sample.mask,
                 cfg.image_size)
    return PreparedImage(resize_image(img, cfg.image_size), mask, kept, *img.size)


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
                               empty=[not p.mask.any() for p in prepared])
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
    log.info("prepared %d images (%d train / %d test) at %d px; %d thin defects kept",
             summary["images"], summary["train"], summary["test"], cfg.image_size,
             summary["thin_defects_kept"])
    return summary
