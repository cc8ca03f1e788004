"""Reading the image and mask files that defect data really comes in.

Images: ``.png .jpg .jpeg .bmp .tif .tiff`` in any case; 8- or 16-bit, gray, RGB, RGBA or
palette. Masks: 0/255 or 0/1 binary, or **label maps** (one value per defect class):
any non-zero value is a defect. The same reader decodes a file and the bytes of an
encoded image (:func:`read_rgb`: ``mr2unet predict`` and the served model), and
:func:`png_bytes` encodes the masks both hand out.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mr2unet.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def is_image(path: Path) -> bool:
    """True for a file whose suffix (any case) is one of :data:`IMAGE_SUFFIXES`."""
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def read_image(path: Path) -> Image.Image:
    """Open and decode an image; a corrupt or unreadable file is a UserError naming it."""
    try:
        img = Image.open(path)
        img.load()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise UserError(f"cannot read image {path} ({exc}); the file is corrupt: extract "
                        f"the dataset again.") from None
    return img


class ImageTooLarge(ValueError):
    """An image wider or taller than the limit it was read with."""


def read_rgb(source: Path | bytes, max_side: int | None = None) -> Image.Image:
    """A file, or the bytes of an encoded image (PNG, JPEG, BMP, TIFF, ...), as 8-bit RGB
    (:func:`to_rgb`). With ``max_side``, an image wider or taller than that raises
    :class:`ImageTooLarge` from its header, before its pixels are decoded. Bytes that are
    no image raise ValueError naming the reason; a file's own errors (missing, unreadable)
    pass."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            if max_side is not None and max(img.size) > max_side:
                raise ImageTooLarge(f"the image is {img.width}x{img.height} px, larger "
                                    f"than the limit of {max_side}x{max_side} px")
            img.load()
            return to_rgb(img)
    except UnidentifiedImageError as exc:
        reason = "unknown format" if isinstance(source, bytes) else str(exc)
        raise ValueError(f"not a readable image ({reason})") from None
    except (Image.DecompressionBombError, SyntaxError) as exc:
        raise ValueError(f"not a readable image ({exc})") from None
    except OSError as exc:
        if not isinstance(source, bytes):
            raise
        raise ValueError(f"not a readable image ({exc})") from None


def png_bytes(array: np.ndarray) -> bytes:
    """A uint8 ``(H, W)`` or ``(H, W, 3)`` array as PNG bytes (PIL's default settings)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB: 16/32-bit integer grayscale scaled by 1/257 (65535 -> 255), alpha and
    palettes dropped, gray replicated to three channels.

    PIL's own ``convert("RGB")`` of a 16-bit image clips every value above 255, which turns
    a typical 16-bit inspection image white; the scaling keeps its contrast.
    """
    if img.mode.startswith("I") or img.mode == "F":
        gray = np.clip(np.asarray(img, dtype=np.float64) / 257.0, 0, 255)
        return Image.fromarray(np.round(gray).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def mask_values(img: Image.Image) -> np.ndarray:
    """The mask's label values as an ``(H, W)`` integer array (alpha ignored; for a colour
    mask, the largest channel value, so that any non-zero colour stays non-zero)."""
    if img.mode == "P":
        img = img.convert("RGBA")
    values = np.asarray(img)
    if values.ndim == 3:
        if img.mode in ("RGBA", "LA", "PA"):
            values = values[..., :-1]
        values = values.max(axis=2)
    return values


def defect_pixels(img: Image.Image) -> np.ndarray:
    """Boolean ``(H, W)``: any non-zero value (ignoring an alpha channel) is a defect."""
    return mask_values(img) != 0
