"""The MVTec AD layout: finding defective images and their masks, validating a tree.

``<category>/test/<defect_type>/NNN.png`` with its mask at
``<category>/ground_truth/<defect_type>/NNN_mask.png``; ``test/good`` has no masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mr2unet.errors import UserError

# Defective test images per category in the official release (the paper's 1258).
PAPER_COUNTS: dict[str, int] = {
    "bottle": 63, "cable": 92, "capsule": 109, "carpet": 89, "grid": 57, "hazelnut": 70,
    "leather": 92, "metal_nut": 93, "pill": 141, "screw": 119, "tile": 84, "toothbrush": 30,
    "transistor": 40, "wood": 60, "zipper": 119,
}
IMAGE_SUFFIXES = (".png",)


@dataclass(frozen=True)
class Sample:
    """One defective test image and its mask, as paths relative to the dataset root."""

    category: str
    defect_type: str
    image: str
    mask: str


def categories_in(root: Path) -> list[str]:
    """Category folders of an MVTec tree: those with a ``test`` and a ``ground_truth``."""
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and (p / "test").is_dir() and (p / "ground_truth").is_dir())


def validate_layout(root: Path, categories: list[str] | None = None) -> list[str]:
    """The categories to use; a UserError saying what is missing when the tree is wrong."""
    if not root.is_dir():
        raise UserError(f"{root} is not a directory: point data.directory at an extracted "
                        f"MVTec AD tree (the folder holding bottle/, cable/, ...).")
    found = categories_in(root)
    if not found:
        raise UserError(f"{root} holds no MVTec AD category (expected <category>/test/ and "
                        f"<category>/ground_truth/ folders, e.g. bottle/test/broken_large/).")
    if categories:
        missing = sorted(set(categories) - set(found))
        if missing:
            raise UserError(f"categories {missing} of data.categories are not in {root} "
                            f"(found: {', '.join(found)}).")
        return sorted(categories)
    return found


def scan(root: Path, categories: list[str]) -> list[Sample]:
    """Every defective test image with its mask, sorted; a missing mask is a UserError."""
    samples = []
    for category in categories:
        test_dir = root / category / "test"
        for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
            if defect_dir.name == "good":
                continue
            for image in sorted(p for p in defect_dir.iterdir()
                                if p.suffix.lower() in IMAGE_SUFFIXES):
                mask = root / category / "ground_truth" / defect_dir.name / \
                    f"{image.stem}_mask.png"
                if not mask.is_file():
                    raise UserError(f"defective image {image} has no mask (expected {mask}); "
                                    f"the dataset copy is incomplete: extract it again.")
                samples.append(Sample(category, defect_dir.name,
                                      image.relative_to(root).as_posix(),
                                      mask.relative_to(root).as_posix()))
    return samples


def check_counts(counts: dict[str, int]) -> None:
    """On the full dataset the per-category counts must be the paper's (1258 in 15)."""
    diff = {c: counts.get(c, 0) - n for c, n in PAPER_COUNTS.items() if counts.get(c, 0) != n}
    if diff:
        lines = ", ".join(f"{c}: {counts.get(c, 0)} vs {PAPER_COUNTS[c]} ({d:+d})"
                          for c, d in diff.items())
        raise UserError(f"defective-image counts differ from the paper's (found vs expected): "
                        f"{lines}. The dataset copy is incomplete or altered; set "
                        f"data.check_counts: false to proceed anyway.")
