"""Preparing the images: seeded stratified split, resize, one array per split.

The defective images of any layout (``data.layout``, :mod:`mr2unet.data.layouts`) and, with
``good_images``, defect-free ones (all-zero masks; split stratified and seeded like the
defective ones, with generators of their own, so that adding them never moves a defective
image to the other split).

With ``val_fraction`` > 0 a validation split (``val.npz``, the manifest's ``split`` = ``val``)
is carved out of what would have been training images, per category, seeded with generators
of its own (one for the defective images, one for the good ones): the test split is the
same with or without it (:func:`carve_validation`). With ``val_fraction`` 0 (the default)
``val.npz`` holds no image and every other file is as before.

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

``mode: tiles`` keeps the images near full resolution for training on crops
(:mod:`mr2unet.training.crops`) and predicting by sliding windows
(:mod:`mr2unet.models.tiling`): each image's long side is scaled to ``tile_source_size``
(``pad`` as above, at that size), or with ``tile_source_size: None`` left at its native size
and centred on a square as large as the data set's longest side (padding ignored as
above). ``image_size`` is then the crop size; ``resize`` is not used.

``mode: auto`` measures the defective images' defect geometry first (their masks at native
size, :mod:`mr2unet.data.geometry`) and resolves to ``tiles`` when the median defect would
be under 2 px wide (or cover under 16 pixels) at ``image_size``, else to ``resize``; it
logs one line saying why, and ``summary.json`` records the chosen ``mode`` and the numbers
(``auto``). The train stage reads the choice from ``summary.json``
(:func:`resolved_prepare`).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from mr2unet.config.workspace import PreparedFiles
from mr2unet.data import geometry, layouts
from mr2unet.data.images import defect_pixels, mask_values, read_image, to_rgb
from mr2unet.data.layouts import DataLayout
from mr2unet.data.mvtec import check_counts, count_by_category, is_full_dataset
from mr2unet.data.prepared import PreparedSplit
from mr2unet.data.samples import Sample
from mr2unet.errors import UserError
from mr2unet.metrics.segmentation import IGNORE_LABEL

log = logging.getLogger(__name__)
SPLITS = ("train", "test")
VAL = "val"  # the validation split, carved out of the training images (val_fraction > 0)
RESIZE_MODES = ("squash", "pad")
AUTO = "auto"  # prepare.mode: measure the defects, then resize or tiles (mr2unet.data.geometry)
MODES = ("resize", "tiles", AUTO)
NATIVE = "native"  # tiles at native size: centred on the square, not scaled
MANIFEST_COLUMNS = ["category", "defect_type", "image", "mask", "split", "width", "height"]
GOOD_COLUMN = "good"  # added to the manifest only when good images were prepared
__all__ = ["defect_pixels", "read_image"]  # re-exported: tests and callers read them here


@dataclass(frozen=True)
class PrepareConfig:
    """The ``prepare`` and ``split`` knobs of params.yaml."""

    image_size: int = 128
    mask_threshold: float = 0.5
    keep_thin_defects: bool = True
    test_fraction: float = 0.2
    seed: int = 42
    resize: str = "squash"
    # defect-free images per category that join the splits: 0 (the paper), a number, "all"
    good_images: int | str = 0
    # resize (the paper: images become image_size squares) | tiles (see the module doc)
    mode: str = "resize"
    tile_source_size: int | None = None
    # share of each category's training images moved to the validation split (0: none)
    val_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.resize != NATIVE:
            check_resize_mode(self.resize)
        if self.mode not in MODES:
            raise UserError(f"prepare.mode {self.mode!r}: expected one of {', '.join(MODES)}.")
        if self.mode != "resize" and self.tile_source_size is not None and \
                self.tile_source_size < self.image_size:
            raise UserError(f"prepare.tile_source_size {self.tile_source_size} is smaller than "
                            f"the {self.image_size} px crops (prepare.image_size): raise it, "
                            f"or set it to null for the images' native size.")
        if not (self.good_images == "all" or (isinstance(self.good_images, int)
                                              and self.good_images >= 0)):
            raise UserError(f"good_images {self.good_images!r}: expected 0, a number per "
                            f"category, or 'all'.")
        if not 0 <= self.val_fraction < 1:
            raise UserError(f"split.val_fraction {self.val_fraction!r}: expected a number in "
                            f"[0, 1) (0: no validation split).")


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
    mask_values: tuple[int, ...] = ()  # the distinct values of the mask file


def n_test_images(n: int, test_fraction: float) -> int:
    """Test images of a category of ``n``: round half up, at least 1 when n >= 2, < n."""
    if n < 2:
        return 0
    return min(max(math.floor(n * test_fraction + 0.5), 1), n - 1)


def split_samples(samples: list[Sample], test_fraction: float, seed: int | list[int]
                  ) -> list[str]:
    """``"train"``/``"test"`` per sample, stratified per category and seeded.

    Categories are taken in sorted order; each draws a permutation of its images (in
    the order of ``samples``, which :func:`~mr2unet.data.mvtec.scan` sorts) from one
    generator, and its first :func:`n_test_images` images are test images.
    """
    if samples and all(s.split for s in samples):  # the data set's own split lists
        return [s.split for s in samples]
    rng = np.random.default_rng(seed)
    splits = ["train"] * len(samples)
    for category in sorted({s.category for s in samples}):
        idx = [i for i, s in enumerate(samples) if s.category == category]
        for j in rng.permutation(len(idx))[:n_test_images(len(idx), test_fraction)]:
            splits[idx[j]] = "test"
    return splits


def carve_validation(samples: list[Sample], splits: list[str], val_fraction: float,
                     seed: int | list[int]) -> list[str]:
    """``splits`` with some ``"train"`` samples turned ``"val"``, stratified and seeded.

    Per category (sorted), :func:`n_test_images` of its training images (``val_fraction``
    of them, rounded half up, at least 1 and at least one left for training) are drawn
    by one permutation of a generator of their own; ``val_fraction`` 0 changes nothing.
    Test samples are never touched.
    """
    if val_fraction <= 0:
        return list(splits)
    rng = np.random.default_rng(seed)
    carved = list(splits)
    for category in sorted({s.category for s in samples}):
        idx = [i for i, s in enumerate(samples) if s.category == category and
               splits[i] == "train"]
        for j in rng.permutation(len(idx))[:n_test_images(len(idx), val_fraction)]:
            carved[idx[j]] = VAL
    return carved


def val_fraction_for(samples: list[Sample], val_fraction: float) -> float:
    """``val_fraction``, or 0 when the data set ships its own validation split (a YOLO or
    COCO export's ``val``, kept as it is; the log says the fraction is not used)."""
    if not any(s.split == VAL for s in samples):
        return val_fraction
    if val_fraction:
        log.info("split.val_fraction %s not used: the data set's own val split is the "
                 "validation split", val_fraction)
    return 0.0


def choose_good(good: list[Sample], per_category: int | str, seed: int) -> list[Sample]:
    """``per_category`` good images of each category (all with ``"all"``), seeded; in the
    order of ``good``."""
    if per_category == "all":
        return good
    rng = np.random.default_rng([seed, 2])
    chosen: set[int] = set()
    for category in sorted({s.category for s in good}):
        idx = [i for i, s in enumerate(good) if s.category == category]
        chosen.update(idx[j] for j in rng.permutation(len(idx))[:per_category])
    return [s for i, s in enumerate(good) if i in chosen]


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
    if mode == NATIVE:
        return width, height
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
    rgb = to_rgb(img)
    if mode == NATIVE:
        return _pad(np.asarray(rgb), size, None)
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


def resize_mask(img: Image.Image, size: int, threshold: float, keep_thin: bool,
                mode: str = "squash") -> tuple[np.ndarray, bool]:
    """Binary ``(size, size)`` uint8 mask by area coverage; (mask, thin defect kept).

    In ``pad`` mode the coverage is taken at the content size and the padding is
    :data:`~mr2unet.metrics.segmentation.IGNORE_LABEL`.
    """
    binary = Image.fromarray(defect_pixels(img).astype(np.float32))  # mode F: exact fractions
    coverage = np.asarray(binary if mode == NATIVE else binary.resize(
        content_size(*img.size, size, mode), Image.Resampling.BOX))
    mask = coverage >= threshold
    kept = bool(keep_thin and not mask.any() and coverage.max() > 0)
    if kept:
        mask = coverage >= threshold * coverage.max()
    mask = mask.astype(np.uint8)
    return (mask if mode == "squash" else _pad(mask, size, IGNORE_LABEL)), kept


def prepare_sample(raw: Path, sample: Sample, cfg: PrepareConfig) -> PreparedImage:
    """Read one image and its mask (all zeros for a good image) from ``raw``; resize both."""
    img = sample.read_image(raw)
    mask_img = sample.read_mask(raw, img.size)
    if mask_img.size != img.size:
        raise UserError(f"mask {raw / sample.mask} is {mask_img.size[0]}x{mask_img.size[1]} "
                        f"but its image is {img.size[0]}x{img.size[1]}; the dataset copy is "
                        f"damaged: extract it again.")
    mask, kept = resize_mask(mask_img, cfg.image_size, cfg.mask_threshold,
                             cfg.keep_thin_defects, cfg.resize)
    if kept:
        log.info("thin defect kept in %s (it would vanish at %d px)", sample.mask,
                 cfg.image_size)
    values = () if sample.good else tuple(int(v) for v in np.unique(mask_values(mask_img)))
    return PreparedImage(resize_image(img, cfg.image_size, cfg.resize), mask, kept, *img.size,
                         mask_values=values)


def tile_config(raw: Path, samples: list[Sample], cfg: PrepareConfig) -> PrepareConfig:
    """The config ``prepare_sample`` applies in tiles mode: ``pad`` at
    ``tile_source_size``, or ``native`` on a square of the data set's longest side."""
    if cfg.tile_source_size is not None:
        return replace(cfg, image_size=cfg.tile_source_size, resize="pad")
    longest = 0
    for sample in samples:
        longest = max(longest, *sample.image_size(raw))  # the header only
    if longest < cfg.image_size:
        raise UserError(f"the largest image is {longest} px, smaller than the "
                        f"{cfg.image_size} px crops (prepare.image_size): lower image_size.")
    return replace(cfg, image_size=longest, resize=NATIVE)


def measure_geometry(raw: Path, samples: list[Sample]) -> list[geometry.ImageGeometry]:
    """The defect geometry of each defective sample's mask, at native size."""
    return [geometry.measure(defect_pixels(s.read_mask(raw)))
            for s in tqdm(samples, desc="measure defects", unit="img", leave=False)
            if not s.good]


def resolved_prepare(prepare_params: dict[str, Any], summary_path: Path) -> dict[str, Any]:
    """params.yaml's ``prepare`` with ``mode: auto`` replaced by what ``prepare`` chose
    (``summary.json``'s ``mode``); other modes as they are."""
    if prepare_params.get("mode") != AUTO:
        return prepare_params
    if not summary_path.is_file():
        raise UserError(f"prepare.mode is auto but {summary_path} is missing: run "
                        f"`dvc repro prepare` first.")
    chosen = json.loads(summary_path.read_text()).get("mode", "resize")
    return {**prepare_params, "mode": chosen}


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
             "mask": s.mask, "split": split, "width": p.width, "height": p.height,
             GOOD_COLUMN: int(s.good)}
            for s, split, p in zip(samples, splits, prepared, strict=True)]
    with_good = any(s.good for s in samples)
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS + ([GOOD_COLUMN] if with_good else []))


def _stack(arrays: list[np.ndarray], like: np.ndarray) -> np.ndarray:
    """``np.stack`` that also stacks no array: ``(0, *like.shape)`` of ``like``'s dtype."""
    return np.stack(arrays) if arrays else np.zeros((0, *like.shape), like.dtype)


def _save_splits(out: Path, manifest: pd.DataFrame, prepared: list[PreparedImage]) -> None:
    """``train.npz``, ``test.npz`` and ``val.npz`` (always written; empty without
    ``val_fraction``)."""
    for name in (*SPLITS, VAL):
        rows = np.flatnonzero(manifest["split"].to_numpy() == name)
        PreparedSplit(
            images=_stack([prepared[i].image for i in rows], prepared[0].image),
            masks=_stack([prepared[i].mask for i in rows], prepared[0].mask),
            categories=manifest["category"].to_numpy()[rows],
            defect_types=manifest["defect_type"].to_numpy()[rows],
            sources=manifest["image"].to_numpy()[rows],
        ).save(PreparedFiles(out).split(name))


def _summary(out: Path, cfg: PrepareConfig, manifest: pd.DataFrame,
             prepared: list[PreparedImage], count_status: str) -> dict[str, Any]:
    # the validation split is listed only where there is one (the default's file as before)
    splits = (*SPLITS, VAL) if cfg.val_fraction > 0 or (manifest["split"] == VAL).any() \
        else SPLITS
    manifest = manifest.assign(kept=[p.thin_defect_kept for p in prepared],
                               empty=[not (p.mask == 1).any() for p in prepared])
    per_category = {
        str(category): {**{name: int((group["split"] == name).sum()) for name in splits},
                        "thin_defects_kept": int(group["kept"].sum())}
        for category, group in manifest.groupby("category", sort=True)
    }
    sizes = sorted({f"{w}x{h}" for w, h in zip(manifest["width"], manifest["height"],
                                               strict=True)})
    good = {}
    if GOOD_COLUMN in manifest:
        is_good = manifest[GOOD_COLUMN] == 1
        good = {"good_images": {name: int((is_good & (manifest["split"] == name)).sum())
                                for name in splits}}
        for category, group in manifest.groupby("category", sort=True):
            per_category[str(category)]["good"] = int(group[GOOD_COLUMN].sum())
    return {
        "images": len(manifest),
        **{name: int((manifest["split"] == name).sum()) for name in splits},
        "image_size": cfg.image_size,
        "resize": cfg.resize,
        "source_sizes": sizes,
        "count_check": count_status,
        "thin_defects_kept": int(manifest["kept"].sum()),
        "empty_masks": int((manifest["empty"] & (manifest.get(GOOD_COLUMN, 0) == 0)).sum()),
        **good,
        # the distinct values seen in the mask files: 0/255, 0/1, or a label map's classes
        "mask_values": sorted({v for p in prepared for v in p.mask_values}),
        "per_category": per_category,
        "bytes": {name: PreparedFiles(out).split(name).stat().st_size for name in splits},
    }


def prepare(raw: Path, out: Path, cfg: PrepareConfig, categories: list[str] | None = None,
            check: bool = True, layout: DataLayout | None = None) -> dict[str, Any]:
    """Prepare the data set ``raw`` (in ``layout``, MVTec AD's by default) into ``out``;
    returns the summary (also written).

    ``out`` receives ``train.npz``, ``test.npz``, ``val.npz`` (empty without
    ``val_fraction``), ``manifest.csv`` and ``summary.json``; the same inputs and ``cfg``
    give byte-identical files. The defective images come first, in the layout's sorted
    order, then the good ones.
    """
    layout = layout or DataLayout()
    chosen = layouts.choose_categories(raw, layout, categories or None)
    found = layouts.scan(raw, layout, chosen, good=cfg.good_images != 0)
    samples = [s for s in found if not s.good]
    if not samples:
        raise UserError(f"no defective images with masks under {raw} (categories: "
                        f"{', '.join(chosen)}, layout {layout.name}); docs/data.md shows "
                        f"the layouts.")
    status = count_check(count_by_category(samples), check)
    val_fraction = val_fraction_for(found, cfg.val_fraction)
    splits = split_samples(samples, cfg.test_fraction, cfg.seed)
    splits = carve_validation(samples, splits, val_fraction, [cfg.seed, 3])
    if "test" not in splits:
        raise UserError(f"{len(samples)} defective images are too few for a train/test "
                        f"split: every category needs at least 2.")
    decision = None
    if cfg.mode == AUTO:
        decision = geometry.choose_mode(measure_geometry(raw, samples), cfg.image_size)
        log.info("prepare.mode auto -> %s: %s", decision.mode, decision.reason)
        cfg = replace(cfg, mode=decision.mode)
    if cfg.good_images != 0:
        good = choose_good([s for s in found if s.good], cfg.good_images, cfg.seed)
        if not good:
            log.warning("prepare.good_images is %s but %s holds no defect-free images",
                        cfg.good_images, raw)
        samples += good
        splits += carve_validation(good, split_samples(good, cfg.test_fraction, [cfg.seed, 1]),
                                   val_fraction, [cfg.seed, 4])
    sample_cfg = tile_config(raw, samples, cfg) if cfg.mode == "tiles" else cfg
    prepared = [prepare_sample(raw, sample, sample_cfg)
                for sample in tqdm(samples, desc="prepare", unit="img")]

    out.mkdir(parents=True, exist_ok=True)
    manifest = _manifest(samples, splits, prepared)
    manifest.to_csv(PreparedFiles(out).manifest, index=False, lineterminator="\n")
    _save_splits(out, manifest, prepared)
    summary = _summary(out, cfg, manifest, prepared, status)
    summary.update(layouts.label_summary(layout, samples))
    if cfg.mode == "tiles":
        summary.update(mode="tiles", tile_source_size=sample_cfg.image_size,
                       crop_size=cfg.image_size)
    if decision is not None:
        summary.update(mode=decision.mode, auto=decision.as_dict())
    PreparedFiles(out).summary.write_text(json.dumps(summary, indent=2) + "\n")
    log.info("prepared %d images (%d train / %d test%s) at %d px (%s); %d thin defects kept",
             summary["images"], summary["train"], summary["test"],
             f" / {summary[VAL]} val" if VAL in summary else "", cfg.image_size,
             cfg.resize, summary["thin_defects_kept"])
    return summary
