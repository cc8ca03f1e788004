"""Random training crops from full-resolution images (``prepare.mode: tiles``).

Each epoch every image gives one ``size x size`` crop, drawn on the device without a
host sync: a share ``defect_fraction`` of the crops is **centred on a defect pixel**
(drawn uniformly among the image's defect pixels), the rest lie uniformly inside the
image's content (its pixels that are not padding). A centred crop that would leave the
content is shifted back inside it. Images without a defect pixel (good parts) always get
a uniform crop. Rare, small defects are then seen about ``defect_fraction`` of the time
instead of in proportion to their area.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mr2unet.metrics.segmentation import content_boxes


@dataclass(frozen=True)
class CropTable:
    """Per image: its content box and where its defect pixels are (flattened, CSR-style).

    ``boxes`` long ``(N, 4)``: top, left, bottom, right (exclusive) of the content;
    ``defects`` long ``(D,)``: flat ``y * W + x`` indices of all defect pixels, image by
    image; ``offsets``/``counts`` long ``(N,)``: where each image's run starts, its length.
    """

    boxes: torch.Tensor
    defects: torch.Tensor
    offsets: torch.Tensor
    counts: torch.Tensor


def crop_table(masks: torch.Tensor) -> CropTable:
    """The :class:`CropTable` of integer masks ``(N, H, W)`` (255 = padding)."""
    boxes = content_boxes(masks)
    flat = (masks == 1).flatten(1)
    counts = flat.sum(1)
    offsets = torch.cumsum(counts, 0) - counts
    defects = flat.nonzero()[:, 1]  # row-major: image by image, in order
    # one spare entry, so that an image without defects still indexes something (unused)
    defects = torch.cat([defects, defects.new_zeros(1)])
    return CropTable(boxes, defects, offsets, counts)


def crop_origins(table: CropTable, idx: torch.Tensor, size: int, shape: tuple[int, int],
                 defect_fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Top-left corners ``(B, 2)`` of the crops of images ``idx`` of ``shape`` (H, W)
    (see the module doc)."""
    device = idx.device
    draws = torch.rand((idx.numel(), 4), generator=generator, device=generator.device)
    draws = draws.to(device)
    box = table.boxes[idx]
    low = box[:, :2]
    high = torch.clamp(box[:, 2:] - size, min=0)
    high = torch.maximum(high, low)  # content smaller than a crop: start at its edge
    uniform = low + torch.minimum((draws[:, :2] * (high - low + 1).float()).long(), high - low)
    counts = table.counts[idx]
    pick = table.offsets[idx] + torch.minimum((draws[:, 2] * counts.float()).long(),
                                              torch.clamp(counts - 1, min=0))
    flat = table.defects[pick]
    centre = torch.stack([flat // shape[1], flat % shape[1]], dim=1)
    centred = torch.minimum(torch.maximum(centre - size // 2, low), high)
    use_defect = (draws[:, 3] < defect_fraction) & (counts > 0)
    origins = torch.where(use_defect.unsqueeze(1), centred, uniform)
    # a content smaller than a crop: the crop covers padding, never leaves the array
    limit = torch.tensor([shape[0] - size, shape[1] - size], device=device)
    return torch.minimum(origins, limit).clamp(min=0)


def gather_crops(images: torch.Tensor, masks: torch.Tensor, idx: torch.Tensor,
                 origins: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops ``(B, size, size, 3)`` of uint8 ``images`` ``(N, H, W, 3)`` and ``(B, size,
    size)`` of ``masks`` at ``origins``, by one advanced-indexing gather each."""
    steps = torch.arange(size, device=idx.device)
    rows = (origins[:, 0:1] + steps).unsqueeze(2)  # (B, size, 1)
    cols = (origins[:, 1:2] + steps).unsqueeze(1)  # (B, 1, size)
    picks = idx.view(-1, 1, 1)
    return images[picks, rows, cols], masks[picks, rows, cols]
