"""LabelMe's per-image JSON files (``data.layout: labelme``), read as they are.

``data.labelme.annotations`` is a folder of ``*.json`` (searched recursively) or a glob,
relative to the data set's root. Each JSON names its image by ``imagePath`` (relative to
the JSON); when that file is absent, the image embedded in ``imageData`` (base64) is used.
``shapes`` of type ``polygon``, ``rectangle`` (two corners) and ``circle`` (centre, then
a point on the circle) are defects, drawn by :mod:`mr2unet.data.annotations`; any other
type (line, point, ...) is refused, all listed in one error. A JSON with no shapes is a
good image; an image without a JSON is not read. LabelMe has no split of its own: the
seeded split of ``split:`` applies.
"""

from __future__ import annotations

import base64
import binascii
import glob
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from mr2unet.data.annotations import (
    LabelledImage,
    circle_polygon,
    defect_type,
    polygon_problem,
    rectangle_polygon,
)
from mr2unet.data.samples import GOOD, Sample, pairing_error
from mr2unet.errors import UserError

SHAPE_TYPES = ("polygon", "rectangle", "circle")
EMBEDDED = "#imageData"  # the image name of an image embedded in its JSON
FIX = ("Every LabelMe JSON needs its image (imagePath, relative to the JSON, or imageData) "
       "of the JSON's imageWidth x imageHeight, and shapes of at least 3 points inside the "
       "image: save them again in LabelMe, or fix the files listed.")


@dataclass(frozen=True)
class LabelmeLayout:
    """``data.labelme`` of params.yaml."""

    annotations: str
    category: str = "custom"

    @classmethod
    def from_params(cls, values: Mapping[str, Any] | None, category: str) -> LabelmeLayout:
        values = values or {}
        if not values.get("annotations"):
            raise UserError("data.layout is labelme but data.labelme.annotations is not set: "
                            "set it to the folder of LabelMe's JSON files (or a glob), "
                            "relative to the data set's root.")
        return cls(values["annotations"], values.get("category") or category)


def json_files(root: Path, pattern: str) -> list[Path]:
    """The JSON files of ``pattern``: a folder (recursively) or a glob under ``root``."""
    if glob.has_magic(pattern):
        found = [Path(p) for p in glob.glob(str(root / pattern), recursive=True)]
    elif (root / pattern).is_dir():
        found = list((root / pattern).rglob("*.json"))
    else:
        raise UserError(f"data.labelme.annotations: {root / pattern} is not a folder; set it "
                        f"to the folder of the JSON files (or a glob) relative to {root}.")
    files = sorted(p for p in found if p.is_file() and p.suffix.lower() == ".json")
    if not files:
        raise UserError(f"data.labelme.annotations: no JSON files ({pattern}) under {root}.")
    return files


def _embedded(data: str) -> Image.Image:
    """The image of ``imageData``, opened lazily (only its header is read until used)."""
    return Image.open(io.BytesIO(base64.b64decode(data)))


def _polygon(shape: Mapping[str, Any]) -> list[float]:
    """A shape's outline as one flat polygon, in pixels."""
    points = [(float(x), float(y)) for x, y in shape.get("points") or []]
    kind = shape.get("shape_type") or "polygon"
    if kind == "rectangle" and len(points) == 2:
        (x0, y0), (x1, y1) = points
        return rectangle_polygon(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    if kind == "circle" and len(points) == 2:
        (cx, cy), (px, py) = points
        return circle_polygon(cx, cy, ((px - cx) ** 2 + (py - cy) ** 2) ** 0.5)
    return [v for point in points for v in point]


def scan_labelme(root: Path, layout: LabelmeLayout, good: bool = False) -> list[Sample]:
    """The images with shapes (then, with ``good``, those without), sorted by image path;
    shapes of other types in one UserError, every other problem in another."""
    problems: list[str] = []
    other_types: dict[str, list[str]] = {}
    samples: list[Sample] = []
    good_samples: list[Sample] = []
    for path in json_files(root, layout.annotations):
        rel = path.relative_to(root).as_posix()
        try:
            data = json.loads(path.read_text())
            shapes = list(data.get("shapes") or [])
        except (ValueError, AttributeError, TypeError) as exc:
            problems.append(f"{rel} is not a LabelMe JSON ({exc})")
            continue
        image = path.parent / str(data.get("imagePath") or "")
        loader = None
        try:
            if data.get("imagePath") and image.is_file() and \
                    image.resolve().is_relative_to(root.resolve()):
                image_rel = image.relative_to(root).as_posix()
                with Image.open(image) as img:
                    size = img.size
            elif data.get("imageData"):
                image_rel, size = rel + EMBEDDED, _embedded(data["imageData"]).size
                loader = partial(_embedded, data["imageData"])
            else:
                problems.append(f"{rel}: image {data.get('imagePath')} not found and no "
                                f"imageData (a label without an image)")
                continue
        except (OSError, UnidentifiedImageError, binascii.Error, ValueError) as exc:
            problems.append(f"{rel}: cannot read its image ({exc})")
            continue
        claimed = (data.get("imageWidth"), data.get("imageHeight"))
        if None not in claimed and tuple(claimed) != size:
            problems.append(f"{rel}: the image is {size[0]}x{size[1]} but the JSON says "
                            f"{claimed[0]}x{claimed[1]}")
            continue
        polygons, classes = [], []
        for number, shape in enumerate(shapes):
            kind = shape.get("shape_type") or "polygon"
            if kind not in SHAPE_TYPES:
                other_types.setdefault(kind, []).append(rel)
                continue
            problem = polygon_problem(_polygon(shape), *size)
            if problem:
                problems.append(f"{rel} shape {number} ({kind} {shape.get('label')!r}): "
                                f"{problem}")
                continue
            polygons.append([_polygon(shape)])
            classes.append(str(shape.get("label")))
        if not polygons:
            good_samples.append(Sample(layout.category, GOOD, image_rel, "",
                                       image_loader=loader))
            continue
        labelled = LabelledImage(*size, tuple(polygons), tuple(classes))
        samples.append(Sample(layout.category, defect_type(classes), image_rel, rel,
                              labels=tuple(classes), mask_loader=labelled.draw,
                              image_loader=loader))
    if other_types:
        listed = "; ".join(f"{kind} in {len(files)} file(s), e.g. {files[0]}"
                           for kind, files in sorted(other_types.items()))
        raise UserError(f"LabelMe shapes of a type that is not an area: {listed}. Only "
                        f"{', '.join(SHAPE_TYPES)} shapes are masks: redraw the others as "
                        f"polygons, or delete them.")
    if problems:
        raise pairing_error(root, problems, len(samples), FIX)
    samples.sort(key=lambda s: s.image)
    good_samples.sort(key=lambda s: s.image)
    return samples + (good_samples if good else [])
