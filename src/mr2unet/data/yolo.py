"""An Ultralytics YOLO segmentation export (``data.layout: yolo``), read as it is.

``data.yolo.dataset`` names the export's ``data.yaml`` (relative to the data set's root):
``names`` (a list, or ``{index: name}``), and ``train`` / ``val`` / ``test``, each a folder
of images (searched recursively), a ``.txt`` list of image paths, or a list of those,
relative to ``path`` when that folder exists, else to the folder of ``data.yaml`` (a
leading ``../``, as Roboflow writes it, is also tried without). The labels of
``.../images/<x>/<stem>.<ext>`` are ``.../labels/<x>/<stem>.txt``: one object a line,
``class x1 y1 x2 y2 ...``, coordinates normalised to 0-1 (multiplied by the image's width
and height; :mod:`mr2unet.data.annotations` draws them).

Every class is a defect (the class names of an image's objects are its defect type); an
empty or missing label file is a good image. The export's split is kept
(:func:`~mr2unet.data.annotations.own_split_map`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from PIL import Image, UnidentifiedImageError

from mr2unet.data.annotations import (
    OWN_SPLITS,
    LabelledImage,
    defect_type,
    own_split_map,
    polygon_problem,
)
from mr2unet.data.images import is_image
from mr2unet.data.samples import GOOD, Sample, pairing_error
from mr2unet.errors import UserError

FIX = ("Every label file (labels/<split>/<stem>.txt) needs its image (images/<split>/"
       "<stem>.<ext>), and every line must be `class x1 y1 x2 y2 x3 y3 ...` with at least 3 "
       "points inside the image (0-1): export the data set again as YOLO segmentation, or "
       "fix the files listed.")


@dataclass(frozen=True)
class YoloLayout:
    """``data.yolo`` of params.yaml."""

    dataset: str
    category: str = "custom"

    @classmethod
    def from_params(cls, values: Mapping[str, Any] | None, category: str) -> YoloLayout:
        values = values or {}
        if not values.get("dataset"):
            raise UserError("data.layout is yolo but data.yolo.dataset is not set: set it to "
                            "the export's data.yaml, relative to the data set's root (e.g. "
                            "data.yolo: {dataset: data.yaml}).")
        return cls(values["dataset"], values.get("category") or category)


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last ``/images/`` of the path becomes ``/labels/``, the
    suffix ``.txt``."""
    head, sep, tail = str(image).rpartition(f"{os.sep}images{os.sep}")
    return Path(f"{head}{os.sep}labels{os.sep}{tail}" if sep else str(image)).with_suffix(".txt")


def _names(meta: dict[str, Any], where: Path) -> dict[int, str]:
    names = meta.get("names")
    if isinstance(names, list):
        return {i: str(n) for i, n in enumerate(names)}
    if isinstance(names, dict):
        return {int(i): str(n) for i, n in names.items()}
    raise UserError(f"{where} has no `names:` (the class names, a list or {{0: name}}): "
                    f"it is not a YOLO data set's data.yaml.")


def _bases(root: Path, yaml_path: Path, meta: dict[str, Any]) -> list[Path]:
    """The folders a split entry may be relative to: ``path`` (when it exists), then the
    folder of data.yaml."""
    folder = yaml_path.parent
    path = meta.get("path")
    found = [p for p in ([Path(path), folder / path] if path else []) if p.is_dir()
             and p.resolve().is_relative_to(root.resolve())]
    return [*found[:1], folder]


def _images_of(entry: str, bases: list[Path], problems: list[str], name: str) -> list[Path]:
    """The image files a split entry names (a folder, a .txt list or one image)."""
    tried = [b / e for b in bases for e in dict.fromkeys([entry, entry.removeprefix("../")])]
    target = next((p for p in tried if p.exists()), None)
    if target is None:
        problems.append(f"split {name}: {entry} not found (looked for {tried[0]})")
        return []
    if target.is_dir():
        return sorted(p for p in target.rglob("*") if is_image(p))
    if target.suffix.lower() == ".txt":
        lines = [line.strip() for line in target.read_text().splitlines() if line.strip()]
        return [target.parent / line.removeprefix("./") for line in lines]
    return [target]


def _read_labels(label: Path, size: tuple[int, int], names: dict[int, str],
                 problems: list[str], where: str) -> LabelledImage:
    width, height = size
    shapes, classes = [], []
    for number, line in enumerate(label.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        at = f"{where}:{number}"
        try:
            cls, coords = int(fields[0]), [float(v) for v in fields[1:]]
        except ValueError:
            problems.append(f"{at}: not `class x1 y1 x2 y2 ...` ({line.strip()[:60]!r})")
            continue
        if cls not in names:
            problems.append(f"{at}: class {cls} is not in data.yaml's names "
                            f"({len(names)} classes)")
            continue
        if len(coords) == 4:
            problems.append(f"{at}: a detection box (class cx cy w h), not a polygon: boxes "
                            f"are not masks; export the data set for segmentation")
            continue
        polygon = [v * (width if i % 2 == 0 else height) for i, v in enumerate(coords)]
        problem = polygon_problem(polygon, width, height)
        if problem:
            problems.append(f"{at}: {problem}")
            continue
        shapes.append([polygon])
        classes.append(names[cls])
    return LabelledImage(width, height, tuple(shapes), tuple(classes))


def scan_yolo(root: Path, layout: YoloLayout, good: bool = False) -> list[Sample]:
    """The images with objects (then, with ``good``, those without), sorted by path;
    every problem of the export in one UserError."""
    yaml_path = root / layout.dataset
    if not yaml_path.is_file():
        raise UserError(f"data.yolo.dataset: {yaml_path} not found; set it to the export's "
                        f"data.yaml relative to {root}.")
    meta = yaml.safe_load(yaml_path.read_text()) or {}
    if not isinstance(meta, dict):
        raise UserError(f"{yaml_path} is not a YOLO data.yaml (a mapping with names:, "
                        f"train:, val:).")
    names = _names(meta, yaml_path)
    bases = _bases(root, yaml_path, meta)
    present = {name for name in OWN_SPLITS if meta.get(name)}
    if "train" not in present:
        raise UserError(f"{yaml_path} names no `train:` split; a YOLO data set has train: "
                        f"and val: (folders of images).")
    split_map = own_split_map(present)
    problems: list[str] = []
    samples: list[Sample] = []
    good_samples: list[Sample] = []
    label_dirs: set[Path] = set()
    used: set[Path] = set()
    for name in sorted(present, key=OWN_SPLITS.index):
        entries = meta[name] if isinstance(meta[name], list) else [meta[name]]
        for image in (i for e in entries for i in _images_of(str(e), bases, problems, name)):
            inside = image.is_relative_to(root) and ".." not in image.relative_to(root).parts
            rel = image.relative_to(root).as_posix() if inside else None
            label = label_path(image)
            label_dirs.add(label.parent)
            if rel is None or not image.is_file():
                problems.append(f"split {name}: image {image} not found under {root}")
                continue
            try:
                with Image.open(image) as img:
                    size = img.size
            except (OSError, UnidentifiedImageError) as exc:
                problems.append(f"cannot read image {rel} ({exc})")
                continue
            split = split_map.get(name, "")
            if not label.is_file():
                good_samples.append(Sample(layout.category, GOOD, rel, "", split))
                continue
            used.add(label)
            label_rel = label.relative_to(root).as_posix()
            labelled = _read_labels(label, size, names, problems, label_rel)
            if not labelled.shapes:
                good_samples.append(Sample(layout.category, GOOD, rel, "", split))
                continue
            samples.append(Sample(layout.category, defect_type(labelled.classes), rel,
                                  label_rel, split, labels=labelled.classes,
                                  mask_loader=labelled.draw))
    problems += [f"label {p.relative_to(root).as_posix()} has no image"
                 for folder in sorted(label_dirs) if folder.is_dir()
                 for p in sorted(folder.glob("*.txt")) if p not in used]
    if problems:
        raise pairing_error(root, problems, len(samples), FIX)
    samples.sort(key=lambda s: s.image)
    good_samples.sort(key=lambda s: s.image)
    return samples + (good_samples if good else [])
