"""Predicting a whole image by overlapping sliding windows (``prepare.mode: tiles``).

A network trained on ``tile x tile`` crops sees a larger image window by window: windows
start every ``stride`` pixels along each axis, the last one flush with the image's end, so
every pixel is covered and windows never leave the image. The logits of the windows that
cover a pixel are **averaged with equal weights** (mean blending):

    z(p) = (1 / |W(p)|) * sum over windows w in W(p) of z_w(p)

For a network whose output does not depend on where a window lies (a constant one), the
tiled output equals the untiled one exactly. Mean rather than Gaussian weights, because
with overlapping windows (a step of three quarters of a tile by default,
:func:`default_stride`) each window's border band, where zero padding inside the network
hurts most, is averaged with another's interior either way; equal weights keep the result
independent of a window's position.

An image smaller than a tile along an axis is padded to the tile by edge replication
first, and the padding cropped off the output.

All four networks are fully convolutional, so a model trained on crops can also predict
the **whole image in one pass** (``predict: whole``, :func:`whole_logits`): the image is
padded by edge replication to the next multiple of
:data:`~mr2unet.models.ushape.SIZE_MULTIPLE` (16: the networks down-sample four times),
predicted once, and the padding cropped off. Each pixel is computed once instead of up to
twice (the windows' default step, :func:`default_stride`), and no pixel sits near a
window's border; the network
sees more context than it was trained with, and its deep levels see interiors where
the crops' were mostly border (a 64 px crop is 4x4 px at the bottleneck). Usually it does
not matter (the same IOU within 0.01, several times faster: docs/performance.md), but a
network whose deep features depend on that border can fail on whole images (MR2U-Net on
DeepCrack, seed 0: IOU 0.45 whole and 0.47 by blocks against 0.70 by windows), so
``prepare.tile_predict: auto`` lets the train stage choose on the validation split
(:mod:`mr2unet.evaluation.validation`). ``predict`` is stored in the model file; a model
file without it (written before the option) predicts by windows, as it did.

On a large image the one pass is slow on a CPU for a reason other than arithmetic: its
full-resolution feature maps (8 channels x 1024² x 4 bytes = 32 MiB, the decoder's
concatenations twice that) exceed glibc's largest recycled allocation (32 MiB), so every
layer maps fresh memory and the kernel zeroes it page by page (250 000-900 000 page
faults per 1024² image, measured), and NCHW inputs make oneDNN reorder each map to its
blocked layout and back. ``predict: blocks`` (:func:`block_logits`) therefore cuts the
padded image into blocks of at most :data:`BLOCK_SIZE` px (sides multiples of 16, the
same pooling grid as the one pass), runs each with a margin of :data:`BLOCK_HALO` px of
its neighbours (clipped at the image's edges, where the one pass's own borders are) and
keeps its core; tensors stay cache- and allocator-sized, and each pixel is computed about
once (1.1-1.3 times at 1024²). A block's core differs from the one pass only through what
lies beyond its margin (the networks' receptive fields are wider, but their weights fade
out): masks equal the one pass's within a tolerance that tests/test_tile_blocks.py states,
and an image that fits one block (up to 512 px a side, e.g. 480x320) is predicted in one
pass as ``whole``. ``blocks`` feeds the network channels-last (oneDNN's native layout: the
same function as ``whole``'s NCHW pass, rounding aside; ``whole`` stays as it was).
:func:`tile_logits` is the one entry point evaluation, ``mr2unet predict`` and the pyfunc
share.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mr2unet.config.params import BLOCKS, TILE_PREDICTS, WHOLE, WINDOWS
from mr2unet.data.prepare import crop_padding, resize_image
from mr2unet.data.transforms import to_input
from mr2unet.models.ushape import SIZE_MULTIPLE

# WINDOWS: overlapping sliding windows of the crop size (mean-blended); WHOLE: the whole
# (padded) image in one forward pass; BLOCKS: the padded image in blocks of BLOCK_SIZE
# with a BLOCK_HALO margin
PREDICT_MODES = TILE_PREDICTS
BLOCK_SIZE = 512  # the largest block's core (px, a multiple of SIZE_MULTIPLE)
BLOCK_HALO = 32  # the margin each block sees of its neighbours (px, a multiple of 16)


def default_stride(tile: int) -> int:
    """The windows' step when ``prepare.tile_stride`` is null: three quarters of a tile
    (48 px for 64 px tiles; windows overlap by a quarter).

    Measured on DeepCrack (docs/performance.md, "Tiles: the windows' stride"): a test IOU
    within 0.0015 of half-tile windows (MR2U-Net 0.6978 against 0.6964, U-Net
    0.6760 against 0.6775), in 1.9-2.5 times less time; windows that do not overlap
    (a step of one tile) lost 0.004-0.010.
    """
    return max(1, tile - tile // 4)


@dataclass(frozen=True)
class Tiling:
    """How a model trained on crops predicts whole images (stored in its model file).

    ``tile``: the crop (network input) size; ``stride``: the windows' step;
    ``source_size``: the long side images are scaled to first (None: native size);
    ``predict``: :data:`BLOCKS` (the padded image in blocks with a margin), :data:`WHOLE`
    (one pass over the padded image) or :data:`WINDOWS`.
    """

    tile: int
    stride: int
    source_size: int | None = None
    predict: str = WINDOWS

    def __post_init__(self) -> None:
        if self.predict not in PREDICT_MODES:
            raise ValueError(f"tile prediction {self.predict!r}: expected one of "
                             f"{', '.join(PREDICT_MODES)}")

    def as_dict(self) -> dict[str, Any]:
        values: dict[str, Any] = {"tile": self.tile, "stride": self.stride,
                                  "source_size": self.source_size}
        if self.predict != WINDOWS:  # a windows model's record as before the option
            values["predict"] = self.predict
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> Tiling | None:
        if not values:
            return None
        source = values.get("source_size")
        return cls(int(values["tile"]), int(values["stride"]),
                   None if source is None else int(source), values.get("predict", WINDOWS))


def window_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of the windows along an axis of ``length`` (>= ``tile``): every
    ``stride``, plus one flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


def tiled_logits(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int,
                 stride: int, windows_per_call: int = 16) -> torch.Tensor:
    """Logits ``(N, C, H, W)`` of float input ``x`` ``(N, 3, H, W)`` by sliding windows.

    ``forward`` maps ``(B, 3, tile, tile)`` to ``(B, C, tile, tile)``; windows of all images
    go through it ``windows_per_call`` at a time.
    """
    n, _, height, width = x.shape
    pad_h, pad_w = max(0, tile - height), max(0, tile - width)
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    h, w = x.shape[-2:]
    boxes = [(top, left) for top in window_starts(h, tile, stride)
             for left in window_starts(w, tile, stride)]
    total: torch.Tensor | None = None
    cover = torch.zeros((1, 1, h, w), device=x.device)
    for top, left in boxes:
        cover[..., top:top + tile, left:left + tile] += 1
    jobs = [(i, top, left) for i in range(n) for top, left in boxes]
    for start in range(0, len(jobs), windows_per_call):
        chunk = jobs[start:start + windows_per_call]
        batch = torch.stack([x[i, :, top:top + tile, left:left + tile] for i, top, left in chunk])
        out = forward(batch).float()
        if total is None:
            total = torch.zeros((n, out.shape[1], h, w), device=x.device)
        for (i, top, left), logits in zip(chunk, out, strict=True):
            total[i, :, top:top + tile, left:left + tile] += logits
    assert total is not None
    return (total / cover)[..., :height, :width]


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """``x`` padded by edge replication (right and below) to multiples of ``multiple``."""
    pad_h, pad_w = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def whole_logits(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 multiple: int = SIZE_MULTIPLE, channels_last: bool = False) -> torch.Tensor:
    """Logits ``(N, C, H, W)`` of float input ``x`` ``(N, 3, H, W)`` in one pass: ``x``
    padded (edge replication, right and below) to multiples of ``multiple`` (and fed
    channels-last if asked), the padding cropped off the output."""
    height, width = x.shape[-2:]
    x = _pad_to_multiple(x, multiple)
    out = forward(_channels_last(x) if channels_last else x).float()
    return out[..., :height, :width].contiguous()


def block_spans(length: int, block: int = BLOCK_SIZE, multiple: int = SIZE_MULTIPLE
                ) -> list[tuple[int, int]]:
    """``(start, end)`` of the cores along a padded axis of ``length`` (a multiple of
    ``multiple``): as few cores of at most ``block`` as cover it, equal up to one step of
    ``multiple``, every border on a multiple of ``multiple``."""
    count = -(-length // block)
    steps = length // multiple
    edges = [multiple * (steps * i // count) for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def block_logits(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 block: int = BLOCK_SIZE, halo: int = BLOCK_HALO,
                 multiple: int = SIZE_MULTIPLE) -> torch.Tensor:
    """Logits ``(N, C, H, W)`` of float input ``x`` ``(N, 3, H, W)`` by blocks: ``x``
    padded as :func:`whole_logits` pads it, cut into cores of at most ``block`` px
    (:func:`block_spans`), each predicted channels-last at batch 1 with ``halo`` px of
    its neighbours around it (clipped at the padded image's edges) and its core kept.
    One block (a padded image up to ``block`` a side) is :func:`whole_logits`'s one
    channels-last pass.
    ``block`` and ``halo`` must be multiples of ``multiple``."""
    if block % multiple or halo % multiple or block <= 0 or halo < 0:
        raise ValueError(f"block {block} and halo {halo} must be multiples of {multiple}")
    height, width = x.shape[-2:]
    padded = _pad_to_multiple(x, multiple)
    h, w = padded.shape[-2:]
    rows, cols = block_spans(h, block, multiple), block_spans(w, block, multiple)
    if len(rows) == len(cols) == 1:
        return whole_logits(forward, x, multiple, channels_last=True)
    total: torch.Tensor | None = None
    for i in range(len(padded)):
        for top, bottom in rows:
            for left, right in cols:
                t0, l0 = max(0, top - halo), max(0, left - halo)
                b1, r1 = min(h, bottom + halo), min(w, right + halo)
                out = forward(_channels_last(padded[i:i + 1, :, t0:b1, l0:r1])).float()
                if total is None:
                    total = torch.empty((len(padded), out.shape[1], h, w), device=x.device)
                total[i, :, top:bottom, left:right] = out[0, :, top - t0:bottom - t0,
                                                          left - l0:right - l0]
    assert total is not None
    return total[..., :height, :width].contiguous()


def tile_logits(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                tiling: Tiling, windows_per_call: int = 16) -> torch.Tensor:
    """Logits of ``x`` ``(N, 3, H, W)`` as ``tiling.predict`` says: by blocks
    (:func:`block_logits`), one padded pass (:func:`whole_logits`), each one image at a
    time, or sliding windows (:func:`tiled_logits`, ``windows_per_call`` at a time)."""
    if tiling.predict == BLOCKS:
        return block_logits(forward, x)
    if tiling.predict == WHOLE:
        return torch.cat([whole_logits(forward, x[i:i + 1]) for i in range(len(x))])
    return tiled_logits(forward, x, tiling.tile, tiling.stride, windows_per_call)


def tiling_of(payload: dict[str, Any]) -> Tiling | None:
    """The :class:`Tiling` a model file records (None: it predicts a resized image)."""
    return Tiling.from_dict((payload.get("meta") or {}).get("tiling"))


def tiling_input(rgb: np.ndarray, tiling: Tiling) -> np.ndarray:
    """An RGB image ``(H, W, 3)`` at the scale a tiled model predicts it: its long side
    scaled to ``tiling.source_size`` exactly as ``prepare`` does, or as it is (native)."""
    if tiling.source_size is None:
        return rgb
    height, width = rgb.shape[:2]
    square = resize_image(Image.fromarray(rgb), tiling.source_size, "pad")
    return crop_padding(square, width, height, "pad")


def whole_image_logits(forward: Callable[[torch.Tensor], torch.Tensor], rgb: np.ndarray,
                       tiling: Tiling, device: torch.device | str = "cpu",
                       windows_per_call: int = 16) -> torch.Tensor:
    """Logits ``(1, 2, H, W)`` of one uint8 RGB image ``(H, W, 3)`` of any size: scaled
    (:func:`tiling_input`), predicted as ``tiling.predict`` says (:func:`tile_logits`),
    and resized back (bilinear) when it was scaled. ``mr2unet predict`` and the MLflow
    pyfunc both call this."""
    scaled = np.array(tiling_input(rgb, tiling), copy=True)  # writable, contiguous
    x = to_input(torch.from_numpy(scaled)[None].to(device))
    logits = tile_logits(forward, x, tiling, windows_per_call)
    if scaled.shape[:2] != rgb.shape[:2]:
        logits = F.interpolate(logits, size=rgb.shape[:2], mode="bilinear", align_corners=False)
    return logits
