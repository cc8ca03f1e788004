"""Synthetic MVTec-format data: exact layout, binary masks, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from mr2unet.data.mvtec import count_by_category, scan, validate_layout
from mr2unet.data.synthetic import CATEGORIES, GOOD_IMAGES, Surface, draw_defect, generate
from mr2unet.errors import UserError


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes(synthetic_raw: Path, tmp_path: Path) -> None:
    generate(tmp_path / "again", seed=0, images_per_defect=3)
    generate(tmp_path / "other", seed=1, images_per_defect=3)
    again = tree_bytes(tmp_path / "again")
    assert again == tree_bytes(synthetic_raw)
    other = tree_bytes(tmp_path / "other")
    assert other.keys() == again.keys()
    changed = [name for name in again if name.endswith(".png") and again[name] != other[name]]
    assert len(changed) == sum(name.endswith(".png") for name in again)


def test_layout_is_mvtec(synthetic_raw: Path) -> None:
    names = sorted(c.name for c in CATEGORIES)
    assert validate_layout(synthetic_raw) == names
    samples = scan(synthetic_raw, names)  # every defective image has its mask
    assert count_by_category(samples) == {c.name: 3 * len(c.defects) for c in CATEGORIES}
    for category in CATEGORIES:
        base = synthetic_raw / category.name
        assert sorted(p.name for p in (base / "test").iterdir()) == sorted(
            [*category.defects, "good"])
        assert sorted(p.name for p in (base / "ground_truth").iterdir()) == sorted(
            category.defects)
        assert len(list((base / "test/good").glob("*.png"))) == GOOD_IMAGES
        assert "synthetic" in (base / "readme.txt").read_text().lower()
        assert (base / "license.txt").is_file()


def test_generate_returns_the_counts(tmp_path: Path) -> None:
    counts = generate(tmp_path, seed=3, images_per_defect=1)
    assert counts == count_by_category(scan(tmp_path, validate_layout(tmp_path)))
    assert sum(counts.values()) == sum(len(c.defects) for c in CATEGORIES)
    with pytest.raises(UserError, match="images_per_defect is 0"):
        generate(tmp_path / "none", images_per_defect=0)


def test_images_and_masks(synthetic_raw: Path) -> None:
    samples = scan(synthetic_raw, validate_layout(synthetic_raw))
    modes = {c.name: "L" if c.grayscale else "RGB" for c in CATEGORIES}
    assert set(modes.values()) == {"L", "RGB"}
    fractions = []
    for sample in samples:
        image = Image.open(synthetic_raw / sample.image)
        mask = Image.open(synthetic_raw / sample.mask)
        size = next(c.size for c in CATEGORIES if c.name == sample.category)
        assert image.mode == modes[sample.category] and image.size == (size, size)
        assert mask.mode == "L" and mask.size == image.size
        values = np.asarray(mask)
        assert set(np.unique(values)) == {0, 255}
        fractions.append((values > 0).mean())
    # Defects of varied size: thin lines to blobs, never most of the image.
    assert min(fractions) < 0.01 and 0.03 < max(fractions) < 0.25
    assert len({c.size for c in CATEGORIES}) == len(CATEGORIES)


def test_defects_are_visible(synthetic_raw: Path) -> None:
    """Defect pixels differ clearly from the surface around them (learnable)."""
    contrasts = []
    for sample in scan(synthetic_raw, validate_layout(synthetic_raw)):
        image = np.asarray(Image.open(synthetic_raw / sample.image).convert("L"), float)
        mask_img = Image.open(synthetic_raw / sample.mask)
        mask = np.asarray(mask_img) > 0
        ring = (np.asarray(mask_img.filter(ImageFilter.MaxFilter(7))) > 0) & ~mask
        contrasts.append(np.abs(image[mask] - np.median(image[ring])).mean())
    assert np.median(contrasts) > 60 and min(contrasts) > 20


@pytest.mark.parametrize("kind", ["scratch", "crack", "hole", "stain"])
def test_defects_stay_on_the_object(kind: str) -> None:
    body = np.zeros((96, 96), bool)
    body[:, :48] = True  # the object: the left half
    surface = Surface(np.full((96, 96, 3), 150.0), body)
    rng = np.random.default_rng(0)
    for _ in range(10):
        image, mask = draw_defect(rng, kind, surface)
        assert mask.any() and not mask[:, 48:].any()
        assert (image[:, 48:] == 150.0).all()
        assert np.abs(image[mask] - 150.0).max() > 50  # clearly visible
