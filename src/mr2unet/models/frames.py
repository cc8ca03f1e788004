"""A frame of any size in, its mask (and probability) at the frame's own size out.

The one path that ``mr2unet predict`` (image files) and the MLflow pyfunc (what
``mlflow models serve`` runs: uint8 tensors or encoded images) both take, so that they
answer the same image with the same pixels:

1. **pre-process** (:func:`network_input`), as ``prepare`` made the training images: a
   resize-mode model gets the frame resized to its square input size (PIL bilinear,
   ``reducing_gap=3``; squashed or padded, ``prepare.resize``, recorded in the model
   file); a tiles model gets the frame itself, or scaled to ``tiling.source_size``;
2. **predict** (:func:`network_logits`): the one call into the network, in batches of
   resized frames or by sliding windows (:func:`mr2unet.models.tiling.whole_image_logits`);
3. **back to the frame's size** (:func:`frame_maps`): the mask is ``probability >
   threshold`` at the network's resolution (:func:`mr2unet.models.inference.defect_mask`),
   the padding cropped off (``pad``) and resized to the frame's width and height with
   nearest neighbour; the probability bilinearly. A tiles model's maps are already at the
   frame's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from mr2unet.data.prepare import pad_box, resize_image
from mr2unet.data.transforms import to_input
from mr2unet.models.checkpoint import resize_mode, stored_threshold
from mr2unet.models.inference import DEFAULT_THRESHOLD, defect_mask, defect_probability
from mr2unet.models.tiling import Tiling, tiling_of, whole_image_logits


@dataclass(frozen=True)
class LoadedModel:
    """A network ready for inference, the square input size it was trained at and how
    images were made square for it (``squash`` or ``pad``, ``prepare.resize``)."""

    module: torch.nn.Module
    image_size: int
    source: str
    resize: str = "squash"
    tiling: Tiling | None = None  # a model trained on crops: predicted by sliding windows
    threshold: float = DEFAULT_THRESHOLD  # the mask threshold the model file carries


def loaded_model(module: torch.nn.Module, payload: dict[str, Any], source: str
                 ) -> LoadedModel:
    """The :class:`LoadedModel` of a network and its model file's ``payload``."""
    return LoadedModel(module, int(payload["image_size"]), source, resize_mode(payload),
                       tiling_of(payload), stored_threshold(payload))


@dataclass(frozen=True)
class FrameMaps:
    """A frame's uint8 mask ``(H, W)`` (1 = defect) and, when asked for, its float32
    defect probability ``(H, W)``, at the frame's own size."""

    mask: np.ndarray
    probability: np.ndarray | None = None


def network_input(model: LoadedModel, rgb: np.ndarray) -> np.ndarray:
    """A uint8 RGB frame ``(H, W, 3)`` as a resize-mode network sees it: ``(S, S, 3)``,
    resized exactly as ``prepare`` resizes. (A tiles model scales and windows the frame
    itself, in :func:`mr2unet.models.tiling.whole_image_logits`.)"""
    return resize_image(Image.fromarray(rgb), model.image_size, model.resize)


def network_logits(model: LoadedModel, rgbs: Sequence[np.ndarray],
                   device: torch.device | str = "cpu", batch_size: int = 16
                   ) -> list[torch.Tensor]:
    """Logits ``(1, 2, h, w)`` of each uint8 RGB frame: at the network's square input size
    (resize mode, ``batch_size`` frames per forward pass) or at the frame's own size
    (tiles, ``batch_size`` windows per pass). The one place where ``mr2unet predict`` and
    the served model call the network."""
    network = model.module.eval().to(device)
    logits: list[torch.Tensor] = []
    with torch.inference_mode():
        if model.tiling is not None:
            return [whole_image_logits(network, rgb, model.tiling, device, batch_size)
                    for rgb in rgbs]
        for start in range(0, len(rgbs), batch_size):
            small = np.stack([network_input(model, rgb) for rgb in rgbs[start:start + batch_size]])
            out = network(to_input(torch.from_numpy(small).to(device)))
            logits.extend(out[i:i + 1] for i in range(len(out)))
    return logits


def to_frame_size(small: np.ndarray, width: int, height: int, resample: Image.Resampling,
                  resize: str = "squash") -> np.ndarray:
    """A map at the network's square input size back at the frame's ``width x height``
    (in ``pad`` mode the padding is cropped off first)."""
    img = Image.fromarray(small)
    if resize == "pad":
        left, top, w, h = pad_box(width, height, img.width)
        img = img.crop((left, top, left + w, top + h))
    return np.asarray(img.resize((width, height), resample))


def frame_maps(model: LoadedModel, rgbs: Sequence[np.ndarray], device: torch.device | str = "cpu",
               batch_size: int = 16, threshold: float = DEFAULT_THRESHOLD,
               probabilities: bool = False) -> list[FrameMaps]:
    """Each uint8 RGB frame's mask at ``threshold`` (and probability) at its own size."""
    found = []
    for rgb, logits in zip(rgbs, network_logits(model, rgbs, device, batch_size), strict=True):
        mask = defect_mask(logits, threshold)[0].cpu().numpy()
        prob = defect_probability(logits)[0].cpu().numpy() if probabilities else None
        height, width = rgb.shape[:2]
        if model.tiling is None:
            mask = to_frame_size(mask, width, height, Image.Resampling.NEAREST, model.resize)
            if prob is not None:
                prob = to_frame_size(prob, width, height, Image.Resampling.BILINEAR,
                                     model.resize)
        found.append(FrameMaps(mask, prob))
    return found
