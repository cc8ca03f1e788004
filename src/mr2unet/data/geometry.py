"""Defect geometry: how large and how wide a data set's defects are, and the resolution
they need (``prepare.mode: auto``, ``mr2unet inspect``).

Per defective image (its boolean mask at native size):

``area``    defect pixels / image pixels;
``width``   the median, over the mask's connected regions (8-connected), of each region's
            width ``2 * max(d) - 1``, where ``d`` is the Euclidean distance of a defect
            pixel's centre to the nearest background pixel's centre
            (``scipy.ndimage.distance_transform_edt``). A line ``w`` px wide measures
            exactly ``w`` for odd ``w`` and ``w - 1`` for even ``w``; a disc of diameter
            ``D``, about ``D``. The median over regions, so that a few specks beside a long
            crack do not decide.

At ``prepare.image_size`` a defect is ``scale = image_size / long side`` times as wide and
``scale**2`` times as large in pixels: the factor ``prepare`` shrinks the image by (``resize:
pad``; with ``squash`` the long side shrinks by it too, the short one less). The scaled
width, not a width measured on the resized mask: area resampling with a threshold turns a
0.4-px crack into nothing or (kept as a thin defect) into 1-px specks, and either would
hide how thin it became.

:func:`choose_mode` is ``prepare.mode: auto``'s rule (docs/data.md, "Tiles"): **tiles**
when the median defective image's defect would be under :data:`MIN_WIDTH_PX` (2 px) wide
after resizing, or its median area share after resizing under :data:`MIN_AREA_PIXELS` (16)
pixels of the ``image_size`` square; **resize** otherwise. Below 2 px a defect is one
pixel or less at the network's input: its shape is gone and area resampling decides
whether it exists at all; 16 pixels is a 4x4 patch, one pixel of the networks' deepest
level (they down-sample 16-fold).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MIN_WIDTH_PX = 2.0  # auto: tiles when the median defect is narrower at image_size
MIN_AREA_PIXELS = 16.0  # auto: tiles when the median defect covers fewer pixels at image_size
PERCENTILES = (10, 50, 90)
_EIGHT = np.ones((3, 3), bool)  # 8-connectivity: a diagonal crack stays one region


def defect_region_widths(mask: np.ndarray) -> np.ndarray:
    """Widths ``2 * max(d) - 1`` (px) of the 8-connected regions of a boolean ``mask``
    (``d``: distance to the nearest background pixel); empty without a defect."""
    mask = np.asarray(mask, bool)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return np.zeros(0)
    # the defects' bounding box, padded by one background pixel: a defect touching the
    # border is measured as if the image went on empty (and the transform is cheaper)
    box = np.pad(mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], 1)
    # Imported here: prepare imports this module, and `mr2unet predict` and the served
    # model import prepare's resizing without measuring anything (test_pictures checks it).
    from scipy import ndimage

    labels, count = ndimage.label(box, structure=_EIGHT)
    distance = ndimage.distance_transform_edt(box)
    peaks = np.zeros(count + 1)
    np.maximum.at(peaks, labels.ravel(), distance.ravel())  # ndimage.maximum: 30x slower
    return 2 * peaks[1:] - 1


@dataclass(frozen=True)
class ImageGeometry:
    """One defective image: its size, defect area share and width at native size."""

    width_px: int  # the image's width and height
    height_px: int
    area: float  # defect pixels / image pixels
    defect_width: float  # median region width (px); 0 for an empty mask
    regions: int

    def scale(self, image_size: int) -> float:
        """The factor ``prepare`` shrinks this image's long side by at ``image_size``."""
        return image_size / max(self.width_px, self.height_px)

    def width_at(self, image_size: int) -> float:
        """The defect's width (px) after resizing to ``image_size``."""
        return self.defect_width * self.scale(image_size)

    def area_pixels_at(self, image_size: int) -> float:
        """The defect's pixels after resizing to ``image_size``."""
        return self.area * self.width_px * self.height_px * self.scale(image_size) ** 2


def measure(mask: np.ndarray) -> ImageGeometry:
    """The geometry of one boolean defect ``mask`` ``(H, W)`` at its own size."""
    mask = np.asarray(mask, bool)
    widths = defect_region_widths(mask)
    return ImageGeometry(int(mask.shape[1]), int(mask.shape[0]), float(mask.mean()),
                         float(np.median(widths)) if widths.size else 0.0, int(widths.size))


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """``{"p10": ..., "median": ..., "p90": ...}`` of ``values`` (empty: {})."""
    if len(values) == 0:
        return {}
    p10, p50, p90 = np.percentile(np.asarray(values, float), PERCENTILES)
    return {"p10": float(p10), "median": float(p50), "p90": float(p90)}


@dataclass(frozen=True)
class Decision:
    """``prepare.mode: auto``'s choice and the numbers that made it."""

    mode: str  # "tiles" or "resize"
    reason: str
    image_size: int
    defective_images: int
    median_width_native: float
    median_width_at_size: float
    median_area: float
    median_area_pixels_at_size: float
    min_width_px: float = MIN_WIDTH_PX
    min_area_pixels: float = MIN_AREA_PIXELS

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def choose_mode(images: Sequence[ImageGeometry], image_size: int) -> Decision:
    """``tiles`` or ``resize`` for these defective images at ``image_size`` (module doc)."""
    measured = [g for g in images if g.regions > 0]
    if not measured:
        return Decision("resize", "no defect pixels to measure: resize (the default)",
                        image_size, 0, 0.0, 0.0, 0.0, 0.0)
    native = float(np.median([g.defect_width for g in measured]))
    scaled = float(np.median([g.width_at(image_size) for g in measured]))
    area = float(np.median([g.area for g in measured]))
    area_pixels = float(np.median([g.area_pixels_at(image_size) for g in measured]))
    if scaled < MIN_WIDTH_PX:
        mode, why = "tiles", (f"the median defect, {native:.1f} px wide, would be {scaled:.2f} "
                              f"px wide at {image_size} px (under {MIN_WIDTH_PX:g})")
    elif area_pixels < MIN_AREA_PIXELS:
        mode, why = "tiles", (f"the median defect, {100 * area:.2f} % of an image, would "
                              f"cover {area_pixels:.1f} pixels at {image_size} px (under "
                              f"{MIN_AREA_PIXELS:g})")
    else:
        mode, why = "resize", (f"the median defect, {native:.1f} px wide and {100 * area:.2f} "
                               f"% of an image, stays {scaled:.1f} px wide at {image_size} px")
    return Decision(mode, why, image_size, len(measured), native, scaled, area, area_pixels)
