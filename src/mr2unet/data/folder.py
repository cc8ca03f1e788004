"""The folder layout (``data.layout: folder``): an images folder beside a masks folder.

One folder layout is one category (``data.folder.category``). Paths are relative to the
data set's root (the extracted archive or ``data.directory``); each may be a directory
(its image files, not recursive) or a glob (``img_dir/*/*.jpg``, ``**`` recurses):

``images``       the defective images (required)
``masks``        their masks: the mask of ``<stem>.<ext>`` is ``<stem><mask_suffix>.<ext2>``
                 (any image format; ``mask_suffix`` is ``""`` or e.g. ``"_mask"``)
``good``         optional defect-free images (no masks)
``split_lists``  optional ``{train: file, test: file}``: text files of image stems, one a
                 line (VOC-style ``ImageSets``; a line may also be a path, its stem
                 counts), or folders / globs of images (a data set published as
                 ``train_img/`` and ``test_img/``: the stems of their image files). When
                 given, they are the split, and images in neither are left out;
                 otherwise the seeded split of ``split:`` decides.
"""

from __future__ import annotations

import glob
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from mr2unet.data.images import is_image
from mr2unet.data.samples import GOOD, Sample, check_pairs
from mr2unet.errors import UserError

DEFECT = "defect"  # the defect type of every defective image of a folder layout
SPLITS = ("train", "test")


@dataclass(frozen=True)
class FolderLayout:
    """``data.folder`` of params.yaml."""

    images: str
    masks: str
    category: str = "custom"
    mask_suffix: str = ""
    good: str | None = None
    split_lists: Mapping[str, str] | None = None

    @classmethod
    def from_params(cls, values: Mapping[str, Any] | None) -> FolderLayout:
        values = values or {}
        for key in ("images", "masks"):
            if not values.get(key):
                raise UserError(f"data.layout is folder but data.folder.{key} is not set: set "
                                f"it to a folder or glob relative to the data set's root, e.g. "
                                f"data.folder.{key}: {key}/.")
        return cls(**{k: v for k, v in values.items() if v is not None})


def find_files(root: Path, pattern: str, what: str) -> list[Path]:
    """The image files that ``pattern`` (a directory or a glob under ``root``) names."""
    if glob.has_magic(pattern):
        found = [Path(p) for p in glob.glob(str(root / pattern), recursive=True)]
    elif (root / pattern).is_dir():
        found = list((root / pattern).iterdir())
    else:
        raise UserError(f"data.folder.{what}: {root / pattern} is not a directory; set it to "
                        f"a folder or a glob (e.g. {pattern.rstrip('/')}/*.png) relative to "
                        f"{root}.")
    images = sorted(p for p in found if is_image(p))
    if not images:
        raise UserError(f"data.folder.{what}: no image files ({pattern}) under {root}.")
    return images


def _by_stem(root: Path, files: list[Path], what: str, problems: list[str]) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in files:
        if path.stem in index:
            problems.append(f"two {what} share the stem {path.stem!r}: "
                            f"{index[path.stem].relative_to(root)} and {path.relative_to(root)}")
        else:
            index[path.stem] = path
    return index


def read_split_lists(root: Path, lists: Mapping[str, str]) -> dict[str, str]:
    """Stem -> ``"train"``/``"test"`` from the split list files."""
    if set(lists) != set(SPLITS):
        raise UserError(f"data.folder.split_lists must name both lists, {{train: <file>, "
                        f"test: <file>}}; got {sorted(lists)}.")
    split_of: dict[str, str] = {}
    for name in SPLITS:
        path = root / lists[name]
        if path.is_dir() or glob.has_magic(lists[name]):
            stems = [p.stem for p in find_files(root, lists[name], f"split_lists.{name}")]
        elif path.is_file():
            stems = [PurePosixPath(line.strip()).stem
                     for line in path.read_text().splitlines() if line.strip()]
        else:
            raise UserError(f"data.folder.split_lists.{name}: {path} not found: give a text "
                            f"file of image stems or a folder of images.")
        for stem in stems:
            if split_of.setdefault(stem, name) != name:
                raise UserError(f"{stem!r} is in both split lists ({lists['train']} and "
                                f"{lists['test']}): each image belongs to one split.")
    return split_of


def scan_folder(root: Path, layout: FolderLayout, good: bool = False) -> list[Sample]:
    """The defective images with their masks (then, with ``good``, the good images), sorted
    by path; every image without a mask and mask without an image in one UserError."""
    problems: list[str] = []
    suffix = layout.mask_suffix
    # with a suffix, images and masks may share a folder: <stem><suffix> files are masks
    images = _by_stem(root, [p for p in find_files(root, layout.images, "images")
                             if not (suffix and p.stem.endswith(suffix))], "images", problems)
    masks = {stem.removesuffix(suffix) if suffix else stem: path
             for stem, path in _by_stem(root, find_files(root, layout.masks, "masks"),
                                        "masks", problems).items()
             if stem.endswith(suffix)}
    split_of = read_split_lists(root, layout.split_lists) if layout.split_lists else None

    def rel(path: Path) -> str:
        return path.relative_to(root).as_posix()

    samples = []
    for stem, image in sorted(images.items(), key=lambda item: rel(item[1])):
        mask = masks.pop(stem, None)
        if mask is None:
            problems.append(f"image {rel(image)} has no mask "
                            f"({layout.masks}/{stem}{layout.mask_suffix}.<ext>)")
        elif split_of is None or stem in split_of:
            samples.append(Sample(layout.category, DEFECT, rel(image), rel(mask),
                                  split_of.get(stem, "") if split_of else ""))
    problems += [f"mask {rel(m)} has no image" for m in masks.values()]
    check_pairs(root, samples, problems,
                "Every image of data.folder.images needs a mask of the same stem (plus "
                "data.folder.mask_suffix) in data.folder.masks; defect-free images belong in "
                "data.folder.good.")
    if not (good and layout.good):
        return samples
    good_samples = [Sample(layout.category, GOOD, rel(p), "",
                           split_of.get(p.stem, "") if split_of else "")
                    for p in find_files(root, layout.good, "good")
                    if split_of is None or p.stem in split_of]
    return samples + good_samples
