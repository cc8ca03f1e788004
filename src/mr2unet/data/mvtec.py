"""The MVTec AD layout (``data.layout: mvtec``): finding images and masks, validating a tree.

``<category>/test/<defect_type>/NNN.png`` with its mask at
``<category>/ground_truth/<defect_type>/NNN_mask.png``; ``test/good`` has no masks. Any
image format of :data:`~mr2unet.data.images.IMAGE_SUFFIXES` is read, and a mask may also
carry its image's own stem (``ground_truth/<defect_type>/NNN.<ext>``), as data sets
arranged by hand into this layout often do.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mr2unet.data.images import is_image
from mr2unet.data.samples import GOOD, Sample, check_pairs
from mr2unet.errors import UserError

log = logging.getLogger(__name__)

# Defective test images per category in the official release: the paper's 1258
# (/work/shared/paper/abnormal_counts.csv).
PAPER_COUNTS: dict[str, int] = {
    "bottle": 63, "cable": 92, "capsule": 109, "carpet": 89, "grid": 57, "hazelnut": 70,
    "leather": 92, "metal_nut": 93, "pill": 141, "screw": 119, "tile": 84, "toothbrush": 30,
    "transistor": 40, "wood": 60, "zipper": 119,
}
CATEGORY_PARTS = ("test", "ground_truth")
MASK_SUFFIX = "_mask"
FIX = ("Every image under test/<type>/ (except test/good/) needs a mask "
       "ground_truth/<type>/<stem>_mask.<ext> (or <stem>.<ext>); extract the data set again, "
       "or fix the files listed.")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_image(p)) if folder.is_dir() else []


def _mask_index(folder: Path) -> dict[str, Path]:
    """Mask files of ``folder`` by the stem of the image they belong to."""
    index: dict[str, Path] = {}
    for mask in _images(folder):
        index.setdefault(mask.stem.removesuffix(MASK_SUFFIX), mask)
    return index


def _has_all_parts(folder: Path) -> bool:
    return all((folder / part).is_dir() for part in CATEGORY_PARTS)


def _incomplete(root: Path) -> list[str]:
    """Folders that look like a category (train/, test/ or ground_truth/) but lack a part."""
    problems = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if not any((folder / part).is_dir() for part in ("train", *CATEGORY_PARTS)):
            continue
        problems += [f"{folder / part}/ is missing" for part in CATEGORY_PARTS
                     if not (folder / part).is_dir()]
    return problems


def categories_in(root: Path) -> list[str]:
    """Category folders of an MVTec tree: those with both ``test/`` and ``ground_truth/``."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _has_all_parts(p))


def validate_layout(root: Path, categories: list[str] | None = None) -> list[str]:
    """The categories to use, sorted; a UserError naming what is missing when the tree is wrong.

    Every category folder must hold ``test/`` and ``ground_truth/``; the masks themselves
    are checked by :func:`scan`.
    """
    if not root.is_dir():
        raise UserError(f"{root} is not a directory: point data.directory at an extracted "
                        f"MVTec AD tree (the folder holding bottle/, cable/, ...).")
    if _has_all_parts(root):
        raise UserError(f"{root} is a single category folder; point data.directory at the "
                        f"folder that holds it ({root.parent}) and select it with "
                        f"data.categories: [{root.name}].")
    problems = _incomplete(root)
    if problems:
        raise UserError(f"{root} is not a complete MVTec AD tree: {'; '.join(problems)}. "
                        f"Extract the archive again (every category needs test/ and "
                        f"ground_truth/).")
    found = categories_in(root)
    if not found:
        raise UserError(f"{root} holds no MVTec AD category (expected <category>/test/ and "
                        f"<category>/ground_truth/ folders, e.g. bottle/test/broken_large/).")
    if not categories:
        return found
    missing = sorted(set(categories) - set(found))
    if missing:
        raise UserError(f"data.categories {missing} not found in {root} "
                        f"(found: {', '.join(found)}).")
    return sorted(set(categories))


def scan(root: Path, categories: list[str], good: bool = False) -> list[Sample]:
    """Every defective test image with its mask (and with ``good``, every ``test/good``
    image after them), sorted; every image without a mask, mask without an image and mask
    of another size is listed in one UserError.

    Sorting (category, defect type, file name) makes everything downstream independent
    of the order in which the file system lists a directory.
    """
    samples: list[Sample] = []
    good_samples: list[Sample] = []
    problems: list[str] = []
    for category in sorted(categories):
        test_dir = root / category / "test"
        for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
            if defect_dir.name == GOOD:
                good_samples += [Sample(category, GOOD, image.relative_to(root).as_posix(), "")
                                 for image in _images(defect_dir)]
                continue
            masks = _mask_index(root / category / "ground_truth" / defect_dir.name)
            for image in _images(defect_dir):
                mask = masks.pop(image.stem, None)
                if mask is None:
                    expected = (Path(category) / "ground_truth" / defect_dir.name
                                / f"{image.stem}{MASK_SUFFIX}.png")
                    problems.append(f"image {image.relative_to(root)} has no mask (expected "
                                    f"{expected})")
                    continue
                samples.append(Sample(category, defect_dir.name,
                                      image.relative_to(root).as_posix(),
                                      mask.relative_to(root).as_posix()))
            problems += [f"mask {m.relative_to(root)} has no image" for m in masks.values()]
    check_pairs(root, samples, problems, FIX)
    return samples + (good_samples if good else [])


def count_by_category(samples: list[Sample]) -> dict[str, int]:
    """Defective images per category, in sorted category order."""
    counts: dict[str, int] = {}
    for sample in samples:
        counts[sample.category] = counts.get(sample.category, 0) + 1
    return dict(sorted(counts.items()))


def is_full_dataset(categories: list[str]) -> bool:
    """True when ``categories`` are exactly the 15 of MVTec AD."""
    return set(categories) == set(PAPER_COUNTS)


def check_counts(counts: dict[str, int]) -> None:
    """On the full dataset the per-category counts must be the paper's (1258 in 15)."""
    diff = {c: counts.get(c, 0) - n for c, n in PAPER_COUNTS.items() if counts.get(c, 0) != n}
    if diff:
        lines = ", ".join(f"{c}: {counts.get(c, 0)} vs {PAPER_COUNTS[c]} ({d:+d})"
                          for c, d in diff.items())
        raise UserError(f"defective-image counts differ from the paper's (found vs expected): "
                        f"{lines}. The dataset copy is incomplete or altered; set "
                        f"data.check_counts: false to proceed anyway.")
    log.info("defective-image counts match the paper's: %d in %d categories",
             sum(counts.values()), len(counts))
