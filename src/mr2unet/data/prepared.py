"""The prepared-split format shared by `prepare`, `train`, `evaluate` and `report`.

One ``.npz`` file per split (``data/prepared/train.npz``, ``test.npz``) holding:

``images``        uint8 ``(N, S, S, 3)`` RGB, grayscale categories replicated to 3 channels
``masks``         uint8 ``(N, S, S)`` with values in {0, 1} (1 = defect), and 255
                  (:data:`mr2unet.metrics.segmentation.IGNORE_LABEL`) on the padding of non-square
                  images with ``prepare.resize: pad``: not part of the image, left out
                  of the loss and the metrics
``categories``    str ``(N,)`` MVTec category of each image
``defect_types``  str ``(N,)`` defect type (the folder under ``test/``)
``sources``       str ``(N,)`` image path relative to the dataset root

The original size of each image is in ``manifest.csv`` (``width``, ``height``); with
``pad``, where its content lies follows from it (:func:`mr2unet.data.prepare.pad_box`)
and from the mask (the pixels that are not 255).

Loading both splits of the full dataset takes a few milliseconds (about 60 MB).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mr2unet.errors import UserError


@dataclass(frozen=True)
class PreparedSplit:
    """One split of prepared data, as NumPy arrays (see the module docstring)."""

    images: np.ndarray
    masks: np.ndarray
    categories: np.ndarray
    defect_types: np.ndarray
    sources: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def select(self, rows: np.ndarray) -> PreparedSplit:
        """The images at ``rows`` (indices or a boolean mask), as a split of their own."""
        return PreparedSplit(self.images[rows], self.masks[rows], self.categories[rows],
                             self.defect_types[rows], self.sources[rows])

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # np.savez writes no timestamps, so equal arrays give byte-identical files.
        with path.open("wb") as fh:
            np.savez(
                fh,
                images=self.images,
                masks=self.masks,
                categories=self.categories.astype(str),
                defect_types=self.defect_types.astype(str),
                sources=self.sources.astype(str),
            )


def load_split(path: str | Path) -> PreparedSplit:
    """Load a split written by :meth:`PreparedSplit.save`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found: run `dvc repro prepare` first.")
    with np.load(path, allow_pickle=False) as data:
        return PreparedSplit(
            images=data["images"],
            masks=data["masks"],
            categories=data["categories"],
            defect_types=data["defect_types"],
            sources=data["sources"],
        )
