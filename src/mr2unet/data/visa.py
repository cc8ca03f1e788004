"""The VisA benchmark's layout (``data.layout: visa``).

``<category>/Data/Images/Anomaly/NNN.JPG`` with its mask ``<category>/Data/Masks/Anomaly/
NNN.png`` (non-zero = defect), defect-free images in ``<category>/Data/Images/Normal/``.
VisA's ``split_csv/1cls.csv`` is not used for the split: its training split holds no
defective image, and a segmentation network must see defects to learn them; the seeded,
stratified split of ``split:`` is applied instead (as for MVTec AD), and images and masks
are paired by stem.
"""

from __future__ import annotations

from pathlib import Path

from mr2unet.data.images import is_image
from mr2unet.data.samples import GOOD, Sample, check_pairs
from mr2unet.errors import UserError

IMAGES = Path("Data/Images")
MASKS = Path("Data/Masks/Anomaly")
ANOMALY, NORMAL = "Anomaly", "Normal"
DEFECT = "anomaly"  # the defect type of a defective VisA image
FIX = ("Every image of <category>/Data/Images/Anomaly/ needs a mask of the same stem in "
       "<category>/Data/Masks/Anomaly/; extract the data set again, or fix the files listed.")


def categories_in(root: Path) -> list[str]:
    """Folders of ``root`` that hold ``Data/Images/Anomaly/``."""
    if not root.is_dir():
        raise UserError(f"{root} is not a directory: point data.directory at an extracted "
                        f"VisA tree (the folder holding candle/, capsules/, ...).")
    return sorted(p.name for p in root.iterdir() if (p / IMAGES / ANOMALY).is_dir())


def choose_categories(root: Path, categories: list[str] | None) -> list[str]:
    """The categories to use: all found, or the requested ones (each must exist)."""
    found = categories_in(root)
    if not found:
        raise UserError(f"{root} holds no VisA category (expected <category>/Data/Images/"
                        f"Anomaly/ folders, e.g. candle/Data/Images/Anomaly/000.JPG).")
    missing = sorted(set(categories or []) - set(found))
    if missing:
        raise UserError(f"data.categories {missing} not found in {root} "
                        f"(found: {', '.join(found)}).")
    return sorted(set(categories)) if categories else found


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_image(p)) if folder.is_dir() else []


def scan_visa(root: Path, categories: list[str], good: bool = False) -> list[Sample]:
    """Defective images with masks (then, with ``good``, the Normal images), sorted."""
    samples, good_samples, problems = [], [], []
    for category in categories:
        masks = {p.stem: p for p in _images(root / category / MASKS)}
        for image in _images(root / category / IMAGES / ANOMALY):
            mask = masks.pop(image.stem, None)
            if mask is None:
                problems.append(f"image {image.relative_to(root)} has no mask")
            else:
                samples.append(Sample(category, DEFECT, image.relative_to(root).as_posix(),
                                      mask.relative_to(root).as_posix()))
        problems += [f"mask {m.relative_to(root)} has no image" for m in masks.values()]
        good_samples += [Sample(category, GOOD, p.relative_to(root).as_posix(), "")
                         for p in _images(root / category / IMAGES / NORMAL)]
    check_pairs(root, samples, problems, FIX)
    return samples + (good_samples if good else [])
