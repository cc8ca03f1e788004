"""Synthetic MVTec-format data: the demo's stand-in for MVTec AD, generated from a seed.

Four categories, two textures and two objects on a dark background, two of them
grayscale, in different image sizes, each with three defect types drawn with
pixel-exact masks:

* ``scratch``: a thin straight line (2-3.5 % of the image side wide), brighter or darker
  than the surface;
* ``crack``:   a dark jagged polyline (1.6-2.6 % of the side);
* ``hole``:    a dark or bright ellipse;
* ``stain``:   a soft-edged coloured patch (mask = where it covers more than half).

On objects, defects start on the object and are clipped to it, as in MVTec AD. Defect
sizes and contrasts vary, so the task is learnable but not trivial. The tree is written
exactly like the official archive (``<category>/test/<defect>/NNN.png``,
``<category>/ground_truth/<defect>/NNN_mask.png`` with 0/255, a few ``test/good`` images
without masks, a readme and license), so the demo runs the real download/prepare code.
Same seed, same bytes (PIL writes no timestamps into PNG files).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mr2unet.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Category:
    name: str
    size: int
    grayscale: bool
    surface: str
    defects: tuple[str, ...]


@dataclass(frozen=True)
class Surface:
    """A defect-free image: float RGB ``(S, S, 3)`` and where defects may go (bool)."""

    image: np.ndarray
    body: np.ndarray


CATEGORIES = (
    Category("weave", 192, False, "weave", ("scratch", "hole", "stain")),
    Category("marble", 160, True, "marble", ("crack", "hole", "scratch")),
    Category("disc", 224, False, "disc", ("scratch", "stain", "crack")),
    Category("bolt", 176, True, "bolt", ("hole", "crack", "stain")),
)
GOOD_IMAGES = 3
MAX_DEFECTS = 2  # per image, all of the folder's type
TRIES = 20  # placements tried before one is accepted anyway
# Line widths as fractions of the image side: at the demo's 64 px a scratch stays 1.3-2.2 px
# and a crack 1-1.7 px wide, so IOU measures what a network learned rather than how the
# resize aliased a sub-pixel line (MVTec AD's thin scratches at 128 px are of that order).
SCRATCH_WIDTH = (0.02, 0.035)
CRACK_WIDTH = (0.016, 0.026)
KEEP_FRACTION = 0.5  # of a defect on an object that must lie on the object


def _smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: random values on a coarse grid, upsampled."""
    coarse = rng.random((scale, scale)).astype(np.float32)
    img = Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size),
                                                                  Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255


def _texture(image: np.ndarray) -> Surface:
    return Surface(image, np.ones(image.shape[:2], bool))


def _weave(rng: np.random.Generator, size: int) -> Surface:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(7, 11)
    pattern = 0.5 + 0.25 * np.sin(2 * math.pi * x / period) * np.sin(2 * math.pi * y / period)
    tint = rng.uniform(0.4, 0.9, 3).astype(np.float32)
    return _texture(pattern[..., None] * tint * 255 + rng.normal(0, 6, (size, size, 3)))


def _marble(rng: np.random.Generator, size: int) -> Surface:
    veins = _smooth_noise(rng, size, 6) + 0.5 * _smooth_noise(rng, size, 14)
    gray = 90 + 70 * veins / 1.5 + rng.normal(0, 5, (size, size))
    return _texture(np.repeat(gray[..., None], 3, axis=2))


def _object(rng: np.random.Generator, size: int, shape: str) -> Surface:
    """A shaded disc or rounded bar, slightly off-centre, on a dark noisy background."""
    background = 25 + rng.normal(0, 4, (size, size, 3))
    canvas = Image.new("L", (size, size), 0)
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
    image = background * (1 - body) + body * colour * shading
    return Surface(image + rng.normal(0, 4, (size, size, 3)), body[..., 0] > 0.5)


SURFACES: dict[str, Callable[[np.random.Generator, int], Surface]] = {
    "weave": _weave,
    "marble": _marble,
    "disc": lambda rng, size: _object(rng, size, "disc"),
    "bolt": lambda rng, size: _object(rng, size, "bolt"),
}


def _point(rng: np.random.Generator, body: np.ndarray, margin: float = 0.2
           ) -> tuple[float, float]:
    """A random point on ``body``, at least ``margin * size`` away from the borders."""
    size = body.shape[0]
    for _ in range(TRIES):
        x, y = rng.uniform(margin * size, (1 - margin) * size, 2)
        if body[int(y), int(x)]:
            break
    return float(x), float(y)


def _contrast(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """A colour that differs from the surface by 60-130 grey levels, up or down."""
    level = float(base.mean())
    delta = rng.uniform(60, 130)
    target = level - delta if level > 128 else level + delta
    return np.clip(target + rng.normal(0, 15, 3), 0, 255)


def _line_width(rng: np.random.Generator, size: int, fraction: tuple[float, float]) -> int:
    """A line width in pixels, ``fraction`` of the image side, at least 2."""
    return max(2, round(size * rng.uniform(*fraction)))


def _shape(rng: np.random.Generator, kind: str, size: int, start: tuple[float, float]
           ) -> Image.Image:
    """The defect's opacity (mode L, 0-255) starting or centred at ``start``."""
    shape = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(shape)
    x0, y0 = start
    if kind == "scratch":
        angle, length = rng.uniform(0, math.pi), size * rng.uniform(0.2, 0.45)
        draw.line([x0, y0, x0 + length * math.cos(angle), y0 + length * math.sin(angle)],
                  fill=255, width=_line_width(rng, size, SCRATCH_WIDTH))
    elif kind == "crack":
        points = [start]
        angle = rng.uniform(0, 2 * math.pi)
        for _ in range(int(rng.integers(4, 8))):
            angle += rng.normal(0, 0.6)
            step = size * rng.uniform(0.04, 0.08)
            x, y = points[-1]
            points.append((float(np.clip(x + step * math.cos(angle), 2, size - 3)),
                           float(np.clip(y + step * math.sin(angle), 2, size - 3))))
        draw.line(points, fill=255, width=_line_width(rng, size, CRACK_WIDTH), joint="curve")
    elif kind == "hole":
        rx, ry = size * rng.uniform(0.03, 0.09, 2)
        draw.ellipse([x0 - rx, y0 - ry, x0 + rx, y0 + ry], fill=255)
    elif kind == "stain":
        r = size * rng.uniform(0.06, 0.14)
        draw.ellipse([x0 - r, y0 - r * rng.uniform(0.5, 1), x0 + r, y0 + r], fill=255)
        shape = shape.filter(ImageFilter.GaussianBlur(r / 4))
    else:
        raise ValueError(f"unknown defect kind {kind!r}")
    return shape


def draw_defect(rng: np.random.Generator, kind: str, surface: Surface
                ) -> tuple[np.ndarray, np.ndarray]:
    """Draw one defect of ``kind`` on ``surface``; returns (float RGB image, bool mask).

    The defect starts on ``surface.body`` and is clipped to it; a placement that would
    lose more than half of the defect to clipping is drawn again. The mask is where the
    opacity exceeds one half.
    """
    size = surface.image.shape[0]
    for _ in range(TRIES):
        opacity = np.asarray(_shape(rng, kind, size, _point(rng, surface.body)),
                             dtype=np.float32) / 255
        alpha = opacity * surface.body
        mask = alpha > 0.5
        if mask.sum() >= KEEP_FRACTION * (opacity > 0.5).sum():
            break
    colour = _contrast(rng, surface.image[mask])
    if kind == "crack":
        colour = np.minimum(colour, 40)
    alpha = alpha[..., None]
    return surface.image * (1 - alpha) + colour * alpha, mask


def _save(array: np.ndarray, path: Path, grayscale: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
    (img.convert("L") if grayscale else img).save(path)


README = """Synthetic MVTec-format data generated by mr2unet (mr2unet.data.synthetic).
Not MVTec AD: procedurally drawn surfaces and defects for demos and tests. Seed: {seed}.
"""


def _defective(rng: np.random.Generator, category: Category, defect: str
               ) -> tuple[np.ndarray, np.ndarray]:
    """One image with one or two defects of type ``defect`` and their joint mask."""
    surface = SURFACES[category.surface](rng, category.size)
    mask = np.zeros(surface.body.shape, bool)
    for _ in range(int(rng.integers(1, MAX_DEFECTS + 1))):
        image, one = draw_defect(rng, defect, surface)
        surface = Surface(image, surface.body)
        mask |= one
    return surface.image, mask


def generate(root: str | Path, seed: int = 0, images_per_defect: int = 12,
             good_images: int = GOOD_IMAGES) -> dict[str, int]:
    """Write the synthetic dataset under ``root``; returns defective images per category.

    Each category also gets ``good_images`` defect-free ``test/good`` images, drawn after
    its defective ones, so their number never changes the defective images.
    """
    if images_per_defect < 1:
        raise UserError(f"images_per_defect is {images_per_defect}; it must be at least 1.")
    if good_images < 0:
        raise UserError(f"synthetic.good_images is {good_images}; it must be 0 or more.")
    root = Path(root)
    counts = {}
    for index, category in enumerate(CATEGORIES):
        rng = np.random.default_rng([seed, index])
        base = root / category.name
        for defect in category.defects:
            for i in range(images_per_defect):
                image, mask = _defective(rng, category, defect)
                _save(image, base / "test" / defect / f"{i:03d}.png", category.grayscale)
                _save(mask.astype(np.float32) * 255,
                      base / "ground_truth" / defect / f"{i:03d}_mask.png", grayscale=True)
        for i in range(good_images):
            _save(SURFACES[category.surface](rng, category.size).image,
                  base / "test" / "good" / f"{i:03d}.png", category.grayscale)
        (base / "readme.txt").write_text(README.format(seed=seed))
        (base / "license.txt").write_text("Generated data; no license restrictions.\n")
        counts[category.name] = len(category.defects) * images_per_defect
    log.info("generated %d synthetic defective images in %s", sum(counts.values()), root)
    return counts
