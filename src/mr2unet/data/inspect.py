"""``mr2unet inspect``: what a data set holds, before anything is prepared or trained.

Reads the data set through :func:`mr2unet.data.layouts.scan` (every layout ``data.layout``
names) and reports counts per category / defect type / good, image sizes, the mask files'
values, the defects' area share and width (:mod:`mr2unet.data.geometry`) at native size and
at ``prepare.image_size``, how much the defects stand out (:func:`defect_contrast`), what
``prepare.mode: auto`` would choose and why, and the warnings a user needs before training.
Image sizes come from the files' headers; defective images and masks are decoded once each.
(The contrast figures were ``benchmarks/defect_stats.py`` until commit 63e852b.)
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter
from tqdm import tqdm

from mr2unet.data import geometry, layouts
from mr2unet.data.images import mask_values
from mr2unet.data.layouts import DataLayout
from mr2unet.data.prepare import resize_image, resize_mask
from mr2unet.data.samples import Sample


def _size(root: Path, sample: Sample) -> tuple[int, int]:
    return sample.image_size(root)  # the header only (or an image embedded in its labels)


def _spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"min": float(np.min(values)), "median": float(np.median(values)),
            "max": float(np.max(values))}


def defect_contrast(image: Image.Image, mask: Image.Image, size: int) -> tuple[float, float]:
    """How much one image's defect stands out after ``prepare``'s resize to ``size`` px
    (squash; mask by area coverage 0.5, thin defects kept), on grey levels (PIL's ITU-R 601
    luma): (contrast, cnr).  ``contrast`` = |mean inside the mask - mean of a ring around
    it| / 255 (0: invisible on average, 1: black on white); the ring is the mask dilated
    by ``max(1, size // 32)`` px minus the mask.  ``cnr`` = that difference / the ring's
    standard deviation (at least 1 grey level): how many units of surface noise the defect
    stands out by.  NaN without a defect or a ring."""
    small, _ = resize_mask(mask, size, 0.5, True)
    defect = small == 1
    if not defect.any():
        return float("nan"), float("nan")
    width = max(1, size // 32)
    grown = np.asarray(Image.fromarray(defect.astype(np.uint8) * 255)
                       .filter(ImageFilter.MaxFilter(2 * width + 1))) > 0
    ring = grown & ~defect
    if not ring.any():
        return float("nan"), float("nan")
    grey = np.asarray(Image.fromarray(resize_image(image, size)).convert("L"), np.float64)
    diff = abs(float(grey[defect].mean()) - float(grey[ring].mean()))
    return diff / 255, diff / max(float(grey[ring].std()), 1.0)


def warnings_for(counts: dict[str, int], sizes: list[tuple[int, int]], empty_masks: int,
                 image_size: int) -> list[str]:
    """The problems a user should know of before training."""
    found = []
    if counts["good"] == 0:
        found.append("no defect-free (good) images: false alarms on good parts cannot be "
                     "measured (the image-level metrics and the false-alarm threshold need "
                     "them); add some with data.folder.good or the layout's good folder")
    small = sum(1 for w, h in sizes if max(w, h) < image_size)
    if small:
        found.append(f"{small} image(s) are smaller than prepare.image_size ({image_size} "
                     f"px) on both sides: they are enlarged in resize mode and smaller than "
                     f"the crop in tiles mode (tiles refuses them): lower image_size")
    if empty_masks:
        found.append(f"{empty_masks} defective image(s) have an all-zero mask: nothing to "
                     f"learn from them (a good image belongs in the good folder)")
    return found


def inspect(root: Path, layout: DataLayout, categories: list[str] | None, image_size: int,
            progress: bool = True) -> dict[str, Any]:
    """The report of the data set at ``root`` (a JSON-able dict; :func:`format_report`)."""
    chosen = layouts.choose_categories(root, layout, categories or None)
    samples = layouts.scan(root, layout, chosen, good=True)
    defective = [s for s in samples if not s.good]
    per_group = Counter((s.category, s.defect_type) for s in samples)
    counts = {"images": len(samples), "defective": len(defective),
              "good": len(samples) - len(defective)}
    sizes = [_size(root, s) for s in samples]
    shapes: list[geometry.ImageGeometry] = []
    values: set[int] = set()
    contrasts: list[tuple[float, float]] = []
    empty = 0
    for sample in tqdm(defective, desc="inspect", unit="img", disable=not progress):
        mask = sample.read_mask(root)  # a label layout's: drawn
        labels = mask_values(mask)
        values.update(int(v) for v in np.unique(labels))
        shape = geometry.measure(labels != 0)
        empty += shape.regions == 0
        shapes.append(shape)
        if shape.regions:
            contrasts.append(defect_contrast(sample.read_image(root), mask, image_size))
    measured = [g for g in shapes if g.regions]

    def pct(fn: Any) -> dict[str, float]:
        return geometry.percentiles([fn(g) for g in measured])

    def pct_of(values: list[float]) -> dict[str, float]:
        return geometry.percentiles([v for v in values if not np.isnan(v)])

    return {
        "root": str(root), "layout": layout.name, "image_size": image_size,
        "counts": counts,
        "per_category": [{"category": c, "defect_type": t, "images": n}
                         for (c, t), n in sorted(per_group.items())],
        "image_sizes": {"width": _spread([w for w, _ in sizes]),
                        "height": _spread([h for _, h in sizes]),
                        "distinct": len(set(sizes))},
        "mask_values": sorted(values),
        "defects": {
            "area_share": pct(lambda g: g.area),
            "area_pixels_at_size": pct(lambda g: g.area_pixels_at(image_size)),
            "width_native_px": pct(lambda g: g.defect_width),
            "width_at_size_px": pct(lambda g: g.width_at(image_size)),
            "regions_per_image": pct(lambda g: g.regions),
            "contrast_at_size": pct_of([c for c, _ in contrasts]),
            "cnr_at_size": pct_of([n for _, n in contrasts]),
        },
        "auto": geometry.choose_mode(shapes, image_size).as_dict(),
        "warnings": warnings_for(counts, sizes, empty, image_size),
    }


def _row(name: str, stats: dict[str, float], fmt: str) -> str:
    if not stats:
        return f"  {name:28s} -"
    cells = "  ".join(f"{key} {format(stats[key], fmt)}" for key in stats)
    return f"  {name:28s} {cells}"


def format_report(report: dict[str, Any]) -> str:
    """The report as a terminal table."""
    size = report["image_size"]
    counts = report["counts"]
    lines = [f"{report['root']} (layout {report['layout']}): {counts['images']} images, "
             f"{counts['defective']} defective, {counts['good']} good", "",
             f"  {'category':20s} {'defect type':20s} {'images':>7s}"]
    lines += [f"  {row['category'][:20]:20s} {row['defect_type'][:20]:20s} {row['images']:7d}"
              for row in report["per_category"]]
    sizes = report["image_sizes"]
    lines += ["", "image sizes (px, min / median / max):",
              _row("width", sizes["width"], ".0f"), _row("height", sizes["height"], ".0f"),
              f"  {'distinct sizes':28s} {sizes['distinct']}",
              f"mask values: {', '.join(map(str, report['mask_values'])) or '-'}", "",
              "defects per defective image (p10 / median / p90):"]
    defects = report["defects"]
    lines += [_row("area share (%)", {k: 100 * v for k, v in defects["area_share"].items()},
                   ".2f"),
              _row(f"area at {size} px (pixels)", defects["area_pixels_at_size"], ".1f"),
              _row("width, native (px)", defects["width_native_px"], ".1f"),
              _row(f"width at {size} px (px)", defects["width_at_size_px"], ".2f"),
              _row("regions", defects["regions_per_image"], ".0f"),
              _row(f"contrast at {size} px (0-1)", defects["contrast_at_size"], ".3f"),
              _row(f"contrast / noise at {size} px", defects["cnr_at_size"], ".2f"), ""]
    auto = report["auto"]
    lines.append(f"prepare.mode auto -> {auto['mode']}: {auto['reason']}")
    lines += [f"warning: {w}" for w in report["warnings"]]
    return "\n".join(lines)
