"""Synthetic MVTec-format data: the demo's stand-in for MVTec AD, generated from a seed.

Four categories, two textures and two objects, two of them grayscale, in different image
sizes, each with three defect types drawn with pixel-exact masks:

* ``scratch``: a thin straight line (2-4 px), brighter or darker than the surface;
* ``crack``:   a dark jagged polyline (2-3 px);
* ``hole``:    a dark or bright ellipse;
* ``stain``:   a soft-edged coloured patch (mask = where it covers more than half).

Defect sizes and contrasts vary, so the task is learnable but not trivial. The tree is
written exactly like the official archive (``<category>/test/<defect>/NNN.png``,
``<category>/ground_truth/<defect>/NNN_mask.png`` with 0/255, a few ``test/good`` images
without masks, a readme and license), so the demo runs the real download/prepare code.
Same seed, same bytes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

log = logging.getLogger(__name__)

Surface = Callable[[np.random.Generator, int], np.ndarray]


@dataclass(frozen=True)
class Category:
    name: str
    size: int
    grayscale: bool
    surface: str
    defects: tuple[str, ...]


CATEGORIES = (
    Category("weave", 192, False, "weave", ("scratch", "hole", "stain")),
    Category("marble", 160, True, "marble", ("crack", "hole", "scratch")),
    Category("disc", 224, False, "disc", ("scratch", "stain", "crack")),
    Category("bolt", 176, True, "bolt", ("hole", "crack", "stain")),
)
GOOD_IMAGES = 3


def _smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: random values on a coarse grid, upsampled."""
    coarse = rng.random((scale, scale)).astype(np.float32)
    img = Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size),
                                                                  Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255


def _weave(rng: np.random.Generator, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(7, 11)
    pattern = 0.5 + 0.25 * np.sin(2 * math.pi * x / period) * np.sin(2 * math.pi * y / period)
    tint = rng.uniform(0.4, 0.9, 3).astype(np.float32)
    rgb = pattern[..., None] * tint * 255 + rng.normal(0, 6, (size, size, 3))
    return rgb


def _marble(rng: np.random.Generator, size: int) -> np.ndarray:
    veins = _smooth_noise(rng, size, 6) + 0.5 * _smooth_noise(rng, size, 14)
    gray = 90 + 70 * veins / 1.5 + rng.normal(0, 5, (size, size))
    return np.repeat(gray[..., None], 3, axis=2)


def _object(rng: np.random.Generator, size: int, shape: str) -> np.ndarray:
    background = 25 + rng.normal(0, 4, (size, size, 3))
    canvas = Image.fromarray(np.zeros((size, size), np.uint8))
    draw = ImageDraw.Draw(canvas)
    c = size / 2 + rng.uniform(-0.05, 0.05, 2) * size
    if shape == "disc":
        r = size * rng.uniform(0.36, 0.42)
        draw.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=255)
    else:
        w, h = size * rng.uniform(0.2, 0.26), size * rng.uniform(0.38, 0.44)
        draw.rounded_rectangle([c[0] - w, c[1] - h, c[0] + w, c[1] + h], radius=int(w / 3),
                               fill=255)
    body = np.asarray(canvas, dtype=np.float32)[..., None] / 255
    colour = rng.uniform(120, 200, 3)
    shading = 0.85 + 0.3 * _smooth_noise(rng, size, 4)[..., None]
    return background * (1 - body) + body * colour * shading + rng.normal(0, 4, (size, size, 3))


SURFACES: dict[str, Surface] = {
    "weave": _weave,
    "marble": _marble,
    "disc": lambda rng, size: _object(rng, size, "disc"),
    "bolt": lambda rng, size: _object(rng, size, "bolt"),
}


def _point(rng: np.random.Generator, size: int, margin: float = 0.2) -> tuple[float, float]:
    return tuple(rng.uniform(margin * size, (1 - margin) * size, 2))  # type: ignore[return-value]


def _contrast(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """A colour that differs from the surface by 60-130 grey levels, up or down."""
    level = float(base.mean())
    delta = rng.uniform(60, 130)
    target = level - delta if level > 128 else level + delta
    return np.clip(target + rng.normal(0, 15, 3), 0, 255)


def draw_defect(rng: np.random.Generator, kind: str, image: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Draw one defect of ``kind`` onto ``image`` (float RGB); returns (image, bool mask)."""
    size = image.shape[0]
    shape = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(shape)
    if kind == "scratch":
        (x0, y0), angle = _point(rng, size), rng.uniform(0, math.pi)
        length = size * rng.uniform(0.2, 0.45)
        x1, y1 = x0 + length * math.cos(angle), y0 + length * math.sin(angle)
        draw.line([x0, y0, x1, y1], fill=255, width=int(rng.integers(2, 5)))
    elif kind == "crack":
        points = [_point(rng, size)]
        angle = rng.uniform(0, 2 * math.pi)
        for _ in range(int(rng.integers(4, 8))):
            angle += rng.normal(0, 0.6)
            step = size * rng.uniform(0.04, 0.08)
            x, y = points[-1]
            points.append((float(np.clip(x + step * math.cos(angle), 2, size - 3)),
                           float(np.clip(y + step * math.sin(angle), 2, size - 3))))
        draw.line(points, fill=255, width=int(rng.integers(2, 4)), joint="curve")
    elif kind == "hole":
        (x, y) = _point(rng, size)
        rx, ry = size * rng.uniform(0.03, 0.09, 2)
        draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=255)
    elif kind == "stain":
        (x, y) = _point(rng, size)
        r = size * rng.uniform(0.06, 0.14)
        draw.ellipse([x - r, y - r * rng.uniform(0.5, 1), x + r, y + r], fill=255)
        shape = shape.filter(ImageFilter.GaussianBlur(r / 4))
    else:
        raise ValueError(f"unknown defect kind {kind!r}")
    alpha = np.asarray(shape, dtype=np.float32)[..., None] / 255
    mask = alpha[..., 0] > 0.5
    colour = _contrast(rng, image[mask] if mask.any() else image)
    if kind == "crack":
        colour = np.minimum(colour, 40)
    return image * (1 - alpha) + colour * alpha, mask


def _save(array: np.ndarray, path: Path, grayscale: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
    (img.convert("L") if grayscale else img).save(path)


README = """Synthetic MVTec-format data generated by mr2unet (mr2unet.data.synthetic).
Not MVTec AD: procedurally drawn surfaces and defects for demos and tests. Seed: {seed}.
"""


def generate(root: str | Path, seed: int = 0, images_per_defect: int = 12) -> dict[str, int]:
    """Write the synthetic dataset under ``root``; returns defective images per category."""
    root = Path(root)
    counts = {}
    for index, category in enumerate(CATEGORIES):
        rng = np.random.default_rng([seed, index])
        base = root / category.name
        surface = SURFACES[category.surface]
        for defect in category.defects:
            for i in range(images_per_defect):
                image, mask = surface(rng, category.size), None
                for _ in range(int(rng.integers(1, 3))):  # one or two defects
                    image, one = draw_defect(rng, defect, image)
                    mask = one if mask is None else mask | one
                _save(image, base / "test" / defect / f"{i:03d}.png", category.grayscale)
                _save(mask.astype(np.float32) * 255,
                      base / "ground_truth" / defect / f"{i:03d}_mask.png", grayscale=True)
        for i in range(GOOD_IMAGES):
            _save(surface(rng, category.size), base / "test" / "good" / f"{i:03d}.png",
                  category.grayscale)
        (base / "readme.txt").write_text(README.format(seed=seed))
        (base / "license.txt").write_text("Generated data; no license restrictions.\n")
        counts[category.name] = len(category.defects) * images_per_defect
    log.info("generated %d synthetic defective images in %s", sum(counts.values()), root)
    return counts
