"""What a data layout yields: the samples (an image and its mask, or a defect-free image),
and the one error that lists every file that did not pair.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from mr2unet.data.images import read_image
from mr2unet.errors import UserError

GOOD = "good"  # the defect type of a defect-free image


@dataclass(frozen=True)
class Sample:
    """One image, as paths relative to the dataset root.

    ``mask`` is ``""`` for a defect-free (good) image; ``split`` is ``"train"``/``"test"``
    (or ``"val"``) when the data set ships its own split, else ``""`` (the seeded split
    decides).

    The label layouts (yolo, coco, labelme) have no mask file: ``mask`` names the label
    file, ``labels`` holds the class of each labelled object, and ``mask_loader`` draws the
    mask at the image's native size (:mod:`mr2unet.data.rasterise`); ``image_loader``
    decodes an image embedded in its label file. Mask-file layouts leave all three unset.
    """

    category: str
    defect_type: str
    image: str
    mask: str
    split: str = ""
    labels: tuple[str, ...] = ()
    mask_loader: Callable[[], Image.Image] | None = field(default=None, compare=False,
                                                          repr=False)
    image_loader: Callable[[], Image.Image] | None = field(default=None, compare=False,
                                                           repr=False)

    @property
    def good(self) -> bool:
        return not self.mask

    def read_image(self, root: Path) -> Image.Image:
        """The decoded image (a file under ``root``, or the embedded one)."""
        return self.image_loader() if self.image_loader else read_image(root / self.image)

    def image_size(self, root: Path) -> tuple[int, int]:
        """``(width, height)``, from the file's header only where there is a file."""
        if self.image_loader:
            return self.image_loader().size
        with Image.open(root / self.image) as img:
            return img.size

    def read_mask(self, root: Path, size: tuple[int, int] | None = None) -> Image.Image:
        """The mask: all zeros for a good image (of ``size``, by default the image's),
        drawn for a label layout, else the mask file."""
        if self.good:
            return Image.new("L", size or self.image_size(root), 0)
        return self.mask_loader() if self.mask_loader else read_image(root / self.mask)


def pairing_error(root: Path, problems: list[str], paired: int, fix: str) -> UserError:
    """One UserError listing every problem, with the count of images that did pair."""
    listed = "\n".join(f"  - {p}" for p in problems)
    return UserError(f"{len(problems)} problem(s) pairing images and masks under {root} "
                     f"({paired} defective image(s) paired):\n{listed}\n{fix}")


def size_problems(root: Path, samples: Iterable[Sample]) -> list[str]:
    """A line for each mask whose size differs from its image's (headers only: fast)."""
    problems = []
    for sample in samples:
        if sample.good or sample.mask_loader:  # label layouts check their sizes themselves
            continue
        try:
            with Image.open(root / sample.image) as img, Image.open(root / sample.mask) as mask:
                if img.size != mask.size:
                    problems.append(f"mask {sample.mask} is {mask.size[0]}x{mask.size[1]} but "
                                    f"its image {sample.image} is {img.size[0]}x{img.size[1]}")
        except (OSError, UnidentifiedImageError) as exc:
            problems.append(f"cannot read {sample.image} or {sample.mask} ({exc})")
    return problems


def check_pairs(root: Path, samples: list[Sample], problems: list[str], fix: str) -> None:
    """Raise one :func:`pairing_error` for the pairing ``problems`` plus any size mismatch."""
    mismatched = size_problems(root, samples)
    if problems or mismatched:
        paired = sum(not s.good for s in samples) - len(mismatched)
        raise pairing_error(root, problems + mismatched, paired, fix)
