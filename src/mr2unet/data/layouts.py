"""The data layouts a data set can come in, chosen by ``data.layout``.

``mvtec``   MVTec AD's own layout (the default; :mod:`mr2unet.data.mvtec`)
``folder``  an images folder beside a masks folder, one category (:mod:`mr2unet.data.folder`)
``visa``    the VisA benchmark's layout (:mod:`mr2unet.data.visa`)

Each yields the same :class:`~mr2unet.data.samples.Sample` list, so that preparation,
training and evaluation do not know which layout the data came in.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from mr2unet.data import folder, mvtec, visa
from mr2unet.data.extract import wanted
from mr2unet.data.samples import Sample
from mr2unet.errors import UserError

LAYOUTS = ("mvtec", "folder", "visa")


@dataclass(frozen=True)
class DataLayout:
    """``data.layout`` (and ``data.folder`` for the folder layout)."""

    name: str = "mvtec"
    folder: folder.FolderLayout | None = None

    def __post_init__(self) -> None:
        if self.name not in LAYOUTS:
            raise UserError(f"data.layout {self.name!r}: expected one of {', '.join(LAYOUTS)}.")
        if self.name == "folder" and self.folder is None:
            raise UserError("data.layout is folder but data.folder is not set: give at least "
                            "data.folder.images and data.folder.masks.")

    @classmethod
    def from_params(cls, data: Mapping[str, Any]) -> DataLayout:
        """From params.yaml's ``data`` section (the defaults where keys are absent)."""
        name = data.get("layout", "mvtec")
        spec = data.get("folder")
        return cls(name, folder.FolderLayout.from_params(spec) if name == "folder" else None)


def choose_categories(root: Path, layout: DataLayout, categories: list[str] | None
                      ) -> list[str]:
    """The categories of ``root`` to use; a UserError naming what is wrong with the tree."""
    if layout.name == "mvtec":
        return mvtec.validate_layout(root, categories)
    if layout.name == "visa":
        return visa.choose_categories(root, categories)
    assert layout.folder is not None
    if not root.is_dir():
        raise UserError(f"{root} is not a directory: point data.directory (or data.archive) "
                        f"at the data set holding {layout.folder.images}.")
    if categories and list(categories) != [layout.folder.category]:
        raise UserError(f"data.categories {categories} does not match the folder layout's one "
                        f"category, data.folder.category: {layout.folder.category}: leave "
                        f"data.categories empty.")
    return [layout.folder.category]


def scan(root: Path, layout: DataLayout, categories: list[str], good: bool = False
         ) -> list[Sample]:
    """The samples of ``root`` in ``layout``: defective ones first, sorted; then, with
    ``good``, the defect-free ones. Pairing problems are one UserError listing them all."""
    if layout.name == "mvtec":
        return mvtec.scan(root, categories, good)
    if layout.name == "visa":
        return visa.scan_visa(root, categories, good)
    assert layout.folder is not None
    return folder.scan_folder(root, layout.folder, good)


def member_filter(layout: DataLayout) -> Callable[[tarfile.TarInfo, set[str] | None], bool]:
    """What extraction keeps of an archive for ``layout``, as ``keep(member, categories)``.

    MVTec AD: only what preparation reads (:func:`mr2unet.data.extract.wanted`). VisA: the
    chosen categories' files and ``split_csv/``. Folder: every file (the layout's globs
    are matched after extraction).
    """
    if layout.name == "mvtec":
        return wanted

    def keep(member: tarfile.TarInfo, categories: set[str] | None) -> bool:
        first = PurePosixPath(member.name).parts[0]
        if layout.name == "visa" and categories and first not in {*categories, "split_csv"}:
            return False
        return member.isfile() or member.isdir()

    return keep
