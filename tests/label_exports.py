"""Test helpers: masks written out as a labelling tool would export them (YOLO
segmentation, COCO polygons or RLE, LabelMe), to read back through the label layouts."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import contourpy
import numpy as np
import yaml
from PIL import Image
from pycocotools import mask as coco_mask


def outer_polygons(mask: np.ndarray) -> list[list[float]]:
    """The outer outline of each region of a boolean mask, in COCO's pixel coordinates
    (contours at half height between pixel centres, holes dropped), each flat x, y, ..."""
    gen = contourpy.contour_generator(z=np.pad(mask.astype(float), 1), fill_type="OuterOffset")
    points, offsets = gen.filled(0.5, 1.5)
    rings = [pts[off[0]:off[1] - 1] - 0.5 for pts, off in zip(points, offsets, strict=True)]
    return [ring.ravel().tolist() for ring in rings if len(ring) >= 3]


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths of the column-major pixels, zeros first."""
    flat = mask.astype(np.uint8).ravel(order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + runs}


def _classes(labels: np.ndarray) -> list[int]:
    return [int(v) for v in np.unique(labels) if v != 0]


def write_yolo(images: dict[str, Path], masks: dict[str, np.ndarray], dest: Path,
               splits: dict[str, str], names: list[str]) -> Path:
    """``dest``/data.yaml, images/<split>/, labels/<split>/ (an empty label file for an
    image without defects); class k of a label map is names[k - 1]. Returns data.yaml."""
    for stem, image in images.items():
        split = splits[stem]
        (dest / "images" / split).mkdir(parents=True, exist_ok=True)
        (dest / "labels" / split).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, dest / "images" / split / image.name)
        labels = masks.get(stem)
        lines = []
        if labels is not None:
            h, w = labels.shape
            for value in _classes(labels):
                for poly in outer_polygons(labels == value):
                    coords = [v / (w if i % 2 == 0 else h) for i, v in enumerate(poly)]
                    lines.append(" ".join([str(value - 1), *(f"{c:.6f}" for c in coords)]))
        (dest / "labels" / split / f"{stem}.txt").write_text("".join(f"{ln}\n" for ln in lines))
    meta = {"path": ".", "names": names, "task": "segment",
            **{s: f"images/{s}" for s in sorted(set(splits.values()))}}
    (dest / "data.yaml").write_text(yaml.safe_dump(meta))
    return dest / "data.yaml"


def coco_file(images: dict[str, Path], masks: dict[str, np.ndarray], names: list[str],
              encoding: str, image_dir: str = "") -> dict:
    """A COCO instance dict: per image and class one annotation, as ``polygons``,
    ``rle`` (compressed) or ``rle_raw`` (uncompressed counts, iscrowd 1)."""
    out: dict = {"images": [], "annotations": [],
                 "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}
    for image_id, (stem, image) in enumerate(sorted(images.items()), 1):
        with Image.open(image) as img:
            w, h = img.size
        out["images"].append({"id": image_id, "file_name": f"{image_dir}{image.name}",
                              "width": w, "height": h})
        labels = masks.get(stem)
        for value in _classes(labels) if labels is not None else []:
            binary = labels == value
            if encoding == "polygons":
                seg: object = outer_polygons(binary)
            elif encoding == "rle":
                rle = coco_mask.encode(np.asfortranarray(binary.astype(np.uint8)))
                seg = {"size": rle["size"], "counts": rle["counts"].decode()}
            else:
                seg = uncompressed_rle(binary)
            out["annotations"].append({
                "id": len(out["annotations"]) + 1, "image_id": image_id, "category_id": value,
                "segmentation": seg, "iscrowd": int(encoding == "rle_raw"),
                "bbox": [0, 0, w, h], "area": int(binary.sum())})
    return out


def write_labelme(images: dict[str, Path], masks: dict[str, np.ndarray], dest: Path,
                  names: list[str], embed: set[str] = frozenset()) -> Path:
    """One LabelMe JSON per image in ``dest`` (images copied beside them, except those in
    ``embed``, which go into imageData only)."""
    dest.mkdir(parents=True, exist_ok=True)
    for stem, image in images.items():
        with Image.open(image) as img:
            w, h = img.size
        labels = masks.get(stem)
        shapes = [{"label": names[value - 1], "points": np.reshape(poly, (-1, 2)).tolist(),
                   "shape_type": "polygon", "group_id": None, "flags": {}}
                  for value in (_classes(labels) if labels is not None else [])
                  for poly in outer_polygons(labels == value)]
        doc = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": image.name,
               "imageData": None, "imageHeight": h, "imageWidth": w}
        if stem in embed:
            doc["imageData"] = base64.b64encode(image.read_bytes()).decode()
        else:
            shutil.copy(image, dest / image.name)
        (dest / f"{stem}.json").write_text(json.dumps(doc))
    return dest
