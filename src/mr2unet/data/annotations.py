"""What the label layouts (``yolo``, ``coco``, ``labelme``) share: drawing their objects
as a mask, checking their geometry, and mapping an export's own split.

**Rasterising, one rule for all three.** Every object becomes a mask at the image's native
size with pycocotools (COCO's own rasterisation, ``pycocotools.mask``): a polygon through
:func:`pycocotools.mask.frPyObjects`, an RLE (compressed or not) decoded as it is, so its
holes stay. Coordinates are read as COCO's: ``x`` runs from 0 at the left edge of the first
pixel to ``width`` at the right edge of the last, so a polygon traced along pixel borders
covers exactly those pixels. A rectangle is the polygon of its four corners; a circle the
polygon of :func:`circle_polygon`'s vertices. The objects of an image are unioned (one
object's several polygons, and overlapping objects, alike); the mask is 1 inside, 0 outside.

Drawing happens in ``prepare``, before it resizes or tiles (the sample's ``mask_loader``),
so that a thin polygon keeps its width and is area-resampled like any mask file.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

# an object: a list of polygons (each flat: x1, y1, x2, y2, ... in pixels) or an RLE dict
Polygon = list[float]
Shape = list[Polygon] | dict[str, Any]
TOLERANCE = 1.0  # px a coordinate may lie outside the image (exports round at the border)
OWN_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class LabelledImage:
    """One image's objects, in pixels, with the class of each."""

    width: int
    height: int
    shapes: tuple[Shape, ...]
    classes: tuple[str, ...]

    def draw(self) -> Image.Image:
        """The union of the objects, an ``L`` image of 0/1 at the native size."""
        return Image.fromarray(draw_mask(self.shapes, self.width, self.height))


def draw_mask(shapes: Sequence[Shape], width: int, height: int) -> np.ndarray:
    """``(height, width)`` uint8, 1 where any of ``shapes`` is (see the module's rule)."""
    rles = []
    for shape in shapes:
        if isinstance(shape, Mapping):
            counts = shape["counts"]
            rles.append(coco_mask.frPyObjects(dict(shape), height, width)
                        if isinstance(counts, list) else dict(shape))
        else:
            rles += coco_mask.frPyObjects([[float(v) for v in p] for p in shape], height,
                                          width)
    if not rles:
        return np.zeros((height, width), np.uint8)
    with warnings.catch_warnings():  # pycocotools 2.0.11's decode warns on NumPy 2 (harmless)
        warnings.simplefilter("ignore", DeprecationWarning)
        return np.ascontiguousarray(coco_mask.decode(coco_mask.merge(rles, intersect=False)))


def rectangle_polygon(x0: float, y0: float, x1: float, y1: float) -> Polygon:
    """The polygon of the rectangle with the corners ``(x0, y0)`` and ``(x1, y1)``."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def circle_polygon(cx: float, cy: float, radius: float) -> Polygon:
    """A circle as a polygon: ``max(16, ceil(2 pi r))`` vertices on it (one per pixel of
    circumference), so it is drawn by the same rule as every polygon."""
    n = max(16, math.ceil(2 * math.pi * radius))
    return [v for k in range(n) for v in (cx + radius * math.cos(2 * math.pi * k / n),
                                          cy + radius * math.sin(2 * math.pi * k / n))]


def polygon_problem(polygon: Sequence[float], width: int, height: int) -> str | None:
    """Why ``polygon`` cannot be drawn (fewer than 3 points, a coordinate outside the image
    by more than :data:`TOLERANCE`), else None."""
    if len(polygon) % 2 or len(polygon) < 6:
        return f"a polygon with fewer than 3 points ({len(polygon)} coordinates)"
    xs, ys = np.asarray(polygon[0::2], float), np.asarray(polygon[1::2], float)
    if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
        return "a polygon with a coordinate that is not a number"
    if (xs.min() < -TOLERANCE or ys.min() < -TOLERANCE or xs.max() > width + TOLERANCE
            or ys.max() > height + TOLERANCE):
        return (f"a polygon outside the {width}x{height} image by more than {TOLERANCE:g} px "
                f"(x {xs.min():.1f}..{xs.max():.1f}, y {ys.min():.1f}..{ys.max():.1f})")
    return None


def defect_type(classes: Sequence[str]) -> str:
    """The defect type of an image: its objects' class names, sorted, joined by ``+``."""
    return "+".join(sorted(set(classes)))


def own_split_map(present: set[str]) -> dict[str, str]:
    """The pipeline's split for each of an export's own splits (``train``/``val``/
    ``test``): kept as they are when there is a ``test``; without one, ``val`` becomes the
    test split (the pipeline evaluates on ``test``, and ``val`` is the export's held-out
    part) and ``split.val_fraction`` carves the validation images out of ``train``; with
    ``train`` alone, ``""``: the seeded split of ``split:`` decides."""
    if "test" in present:
        return {name: name for name in OWN_SPLITS}
    if "val" in present:
        return {"train": "train", "val": "test"}
    return {"train": ""}


def split_name(text: str) -> str | None:
    """``train``, ``val`` or ``test`` when ``text`` (a file or folder name) names one
    (``valid``, ``validation``, ``val2017`` name ``val``), else None."""
    lowered = text.lower()
    for name in ("train", "val", "test"):
        if name in lowered:
            return name
    return None
