"""COCO instance-segmentation JSON (``data.layout: coco``), read as it is.

``data.coco.annotations`` is one JSON file or a glob of several (relative to the data
set's root); ``data.coco.images`` the folder their ``file_name``s are relative to (by
default each JSON's own folder, as Roboflow exports it). A ``file_name`` is looked up in
that folder, then in its subfolder named after the JSON (``instances_val2017.json`` ->
``val2017/``, without the ``instances_`` prefix).

``segmentation`` may be polygons (one or several per object) or RLE (compressed or
uncompressed counts, as ``iscrowd: 1`` objects have): both are drawn by pycocotools
(:mod:`mr2unet.data.annotations`), and RLE holes stay holes. Every category is a defect; an
image with no annotation is a good image. An annotation with a ``bbox`` but no
``segmentation`` is refused: boxes are not masks.

**Split.** One JSON file: the seeded split of ``split:``. Several: each file's split is
the first of ``train``, ``val``, ``test`` in its name (or else its folder's name:
``instances_train.json``, ``valid/_annotations.coco.json``), mapped by
:func:`~mr2unet.data.annotations.own_split_map`; a file that names none is an error.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from mr2unet.data.annotations import (
    LabelledImage,
    Shape,
    defect_type,
    own_split_map,
    polygon_problem,
    split_name,
)
from mr2unet.data.samples import GOOD, Sample, pairing_error
from mr2unet.errors import UserError

FIX = ("Every annotation needs an image the JSON lists and whose file exists (of the JSON's "
       "width x height), and a segmentation (polygons of at least 3 points inside the "
       "image, or RLE of the image's size): export again, or fix the entries listed.")
SHOWN = 5  # examples named in the boxes-only error


@dataclass(frozen=True)
class CocoLayout:
    """``data.coco`` of params.yaml."""

    annotations: str
    images: str | None = None
    category: str = "custom"

    @classmethod
    def from_params(cls, values: Mapping[str, Any] | None, category: str) -> CocoLayout:
        values = values or {}
        if not values.get("annotations"):
            raise UserError("data.layout is coco but data.coco.annotations is not set: set it "
                            "to the instance JSON file (or a glob of them, e.g. "
                            "annotations/instances_*.json) relative to the data set's root.")
        return cls(values["annotations"], values.get("images"),
                   values.get("category") or category)


def annotation_files(root: Path, pattern: str) -> list[Path]:
    """The JSON files ``pattern`` (a file or a glob under ``root``) names, sorted."""
    files = sorted(Path(p) for p in glob.glob(str(root / pattern), recursive=True)
                   if Path(p).is_file())
    if not files:
        raise UserError(f"data.coco.annotations: no file matches {pattern} under {root}.")
    return files


def file_splits(files: list[Path]) -> dict[Path, str]:
    """Each annotation file's pipeline split (``""`` with one file: the seeded split)."""
    if len(files) == 1:
        return {files[0]: ""}
    names = {f: split_name(f.stem) or split_name(f.parent.name) for f in files}
    unnamed = [str(f) for f, name in names.items() if name is None]
    if unnamed:
        raise UserError(f"cannot tell the split of {', '.join(unnamed)}: with several "
                        f"annotation files, each names its split (train, val or test) in its "
                        f"file or folder name, e.g. instances_train.json, instances_val.json.")
    split_map = own_split_map(set(names.values()))
    if "train" not in names.values():
        raise UserError(f"no training annotation file among {', '.join(map(str, files))}: "
                        f"one must name train (e.g. instances_train.json).")
    return {f: split_map.get(name, "") for f, name in names.items()}


def _find_image(folder: Path, json_file: Path, file_name: str) -> Path | None:
    subfolder = json_file.stem.removeprefix("instances_")
    return next((p for p in (folder / file_name, folder / subfolder / file_name)
                 if p.is_file()), None)


def _shapes(ann: dict[str, Any], size: tuple[int, int], at: str, problems: list[str]
            ) -> list[Shape]:
    """The object's shapes, checked; problems appended."""
    width, height = size
    seg = ann["segmentation"]
    if isinstance(seg, dict):
        if list(seg.get("size", [])) != [height, width]:
            problems.append(f"{at}: RLE of size {seg.get('size')} on a {width}x{height} "
                            f"image (size is [height, width])")
            return []
        return [seg]
    if not isinstance(seg, list):
        problems.append(f"{at}: segmentation is neither polygons nor RLE")
        return []
    bad = [p for p in (polygon_problem(poly, width, height) for poly in seg) if p]
    problems += [f"{at}: {p}" for p in bad]
    return [] if bad else [seg]


def scan_coco(root: Path, layout: CocoLayout, good: bool = False) -> list[Sample]:
    """The images with annotations (then, with ``good``, those without), sorted by path;
    boxes without masks in one UserError, every other problem in another."""
    problems: list[str] = []
    boxes: list[str] = []
    samples: list[Sample] = []
    good_samples: list[Sample] = []
    for json_file, split in file_splits(annotation_files(root, layout.annotations)).items():
        json_rel = json_file.relative_to(root).as_posix()
        try:
            data = json.loads(json_file.read_text())
            images = {im["id"]: im for im in data["images"]}
            names = {c["id"]: str(c["name"]) for c in data.get("categories", [])}
            anns = data.get("annotations", [])
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{json_file} is not a COCO instance file (images:, "
                            f"annotations:, categories:): {exc!r}.") from None
        by_image: dict[Any, list[dict[str, Any]]] = {}
        for ann in anns:
            at = f"{json_rel} annotation {ann.get('id')}"
            if ann.get("image_id") not in images:
                problems.append(f"{at}: image id {ann.get('image_id')} is not in the file's "
                                f"images (a label without an image)")
            elif not ann.get("segmentation"):
                if ann.get("bbox"):
                    boxes.append(at)
                else:
                    problems.append(f"{at}: no segmentation")
            elif ann.get("category_id") not in names:
                problems.append(f"{at}: category id {ann.get('category_id')} is not in the "
                                f"file's categories")
            else:
                by_image.setdefault(ann["image_id"], []).append(ann)
        folder = root / layout.images if layout.images else json_file.parent
        for image_id, entry in images.items():
            path = _find_image(folder, json_file, entry["file_name"])
            if path is None:
                problems.append(f"{json_rel}: image {entry['file_name']} not found in {folder}")
                continue
            if not path.is_relative_to(root) or ".." in path.relative_to(root).parts:
                problems.append(f"{json_rel}: image {path} lies outside the data set's root "
                                f"{root}: data.coco.images must be a folder inside it")
                continue
            rel = path.relative_to(root).as_posix()
            try:
                with Image.open(path) as img:
                    size = img.size
            except (OSError, UnidentifiedImageError) as exc:
                problems.append(f"cannot read image {rel} ({exc})")
                continue
            claimed = (entry.get("width"), entry.get("height"))
            if None not in claimed and tuple(claimed) != size:
                problems.append(f"image {rel} is {size[0]}x{size[1]} but {json_rel} says "
                                f"{claimed[0]}x{claimed[1]}")
                continue
            shapes, classes = [], []
            for ann in by_image.get(image_id, []):
                found = _shapes(ann, size, f"{json_rel} annotation {ann.get('id')}", problems)
                shapes += found
                classes += [names[ann["category_id"]]] * bool(found)
            if not shapes:
                good_samples.append(Sample(layout.category, GOOD, rel, "", split))
                continue
            labelled = LabelledImage(*size, tuple(shapes), tuple(classes))
            samples.append(Sample(layout.category, defect_type(classes), rel,
                                  f"{json_rel}#{image_id}", split, labels=tuple(classes),
                                  mask_loader=labelled.draw))
    if boxes:
        raise UserError(f"{len(boxes)} annotation(s) have a bbox but no segmentation "
                        f"({', '.join(boxes[:SHOWN])}{', ...' if len(boxes) > SHOWN else ''})"
                        f": boxes are not masks. Export the data set with its segmentation "
                        f"(polygons or masks), or label the defects' outlines.")
    if problems:
        raise pairing_error(root, problems, len(samples), FIX)
    samples.sort(key=lambda s: s.image)
    good_samples.sort(key=lambda s: s.image)
    return samples + (good_samples if good else [])
