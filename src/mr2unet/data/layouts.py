"""The data layouts a data set can come in, chosen by ``data.layout``.

``mvtec``   MVTec AD's own layout (the default; :mod:`mr2unet.data.mvtec`)
``folder``  an images folder beside a masks folder, one category (:mod:`mr2unet.data.folder`)
``visa``    the VisA benchmark's layout (:mod:`mr2unet.data.visa`)
``yolo``    an Ultralytics YOLO segmentation export (:mod:`mr2unet.data.yolo`)
``coco``    COCO instance-segmentation JSON (:mod:`mr2unet.data.coco`)
``labelme`` LabelMe's per-image JSON (:mod:`mr2unet.data.labelme`)

The last three are label layouts: one category each (``category``, by default the data
set's folder name, :func:`default_category`), their objects drawn as masks in ``prepare``.

Each yields the same :class:`~mr2unet.data.samples.Sample` list, so that preparation,
training and evaluation do not know which layout the data came in.
"""

from __future__ import annotations

import tarfile
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from mr2unet.config.params import LAYOUTS
from mr2unet.data import coco, folder, labelme, mvtec, visa, yolo
from mr2unet.data.extract import wanted
from mr2unet.data.samples import Sample
from mr2unet.errors import UserError

LabelLayout = yolo.YoloLayout | coco.CocoLayout | labelme.LabelmeLayout
# data.layout -> (its params class, its scan)
LABEL_LAYOUTS: dict[str, tuple[Any, Callable[..., list[Sample]]]] = {
    "yolo": (yolo.YoloLayout, yolo.scan_yolo),
    "coco": (coco.CocoLayout, coco.scan_coco),
    "labelme": (labelme.LabelmeLayout, labelme.scan_labelme),
}
ARCHIVE_SUFFIXES = (".tar.xz", ".tar.gz", ".tar.bz2", ".tgz", ".tar", ".zip")


@dataclass(frozen=True)
class DataLayout:
    """``data.layout`` (and ``data.folder``, ``data.yolo``, ``data.coco`` or
    ``data.labelme`` for those layouts)."""

    name: str = "mvtec"
    folder: folder.FolderLayout | None = None
    labels: LabelLayout | None = None

    def __post_init__(self) -> None:
        if self.name not in LAYOUTS:
            raise UserError(f"data.layout {self.name!r}: expected one of {', '.join(LAYOUTS)}.")
        if self.name == "folder" and self.folder is None:
            raise UserError("data.layout is folder but data.folder is not set: give at least "
                            "data.folder.images and data.folder.masks.")
        if self.name in LABEL_LAYOUTS and self.labels is None:
            raise UserError(f"data.layout is {self.name} but data.{self.name} is not set "
                            f"(docs/data.md).")

    @property
    def category(self) -> str | None:
        """The one category of a folder or label layout (None for mvtec and visa)."""
        spec = self.folder or self.labels
        return spec.category if spec else None

    @classmethod
    def from_params(cls, data: Mapping[str, Any]) -> DataLayout:
        """From params.yaml's ``data`` section (the defaults where keys are absent)."""
        name = data.get("layout", "mvtec")
        if name in LABEL_LAYOUTS:
            spec_class = LABEL_LAYOUTS[name][0]
            return cls(name, labels=spec_class.from_params(data.get(name),
                                                           default_category(data)))
        spec = data.get("folder")
        return cls(name, folder.FolderLayout.from_params(spec) if name == "folder" else None)


def default_category(data: Mapping[str, Any]) -> str:
    """A label layout's category when ``category`` is not given: the data set's folder
    name (``data.directory``'s), or its archive's name without the archive suffix."""
    source = data.get("source")
    where = {"directory": data.get("directory"), "archive": data.get("archive"),
             "url": urlparse(data.get("url") or "").path}.get(source) or ""
    name = PurePosixPath(str(where).rstrip("/")).name
    for suffix in ARCHIVE_SUFFIXES:
        name = name.removesuffix(suffix)
    return name or "custom"


def choose_categories(root: Path, layout: DataLayout, categories: list[str] | None
                      ) -> list[str]:
    """The categories of ``root`` to use; a UserError naming what is wrong with the tree."""
    if layout.name == "mvtec":
        return mvtec.validate_layout(root, categories)
    if layout.name == "visa":
        return visa.choose_categories(root, categories)
    assert layout.category is not None
    if not root.is_dir():
        raise UserError(f"{root} is not a directory: point data.directory (or data.archive) "
                        f"at the data set ({layout.name} layout).")
    if categories and list(categories) != [layout.category]:
        raise UserError(f"data.categories {categories} does not match the {layout.name} "
                        f"layout's one category, data.{layout.name}.category: "
                        f"{layout.category}: leave data.categories empty.")
    return [layout.category]


def scan(root: Path, layout: DataLayout, categories: list[str], good: bool = False
         ) -> list[Sample]:
    """The samples of ``root`` in ``layout``: defective ones first, sorted; then, with
    ``good``, the defect-free ones. Pairing problems are one UserError listing them all."""
    if layout.name == "mvtec":
        return mvtec.scan(root, categories, good)
    if layout.name == "visa":
        return visa.scan_visa(root, categories, good)
    if layout.labels is not None:
        return LABEL_LAYOUTS[layout.name][1](root, layout.labels, good)
    assert layout.folder is not None
    return folder.scan_folder(root, layout.folder, good)


def label_summary(layout: DataLayout, samples: list[Sample]) -> dict[str, Any]:
    """For ``summary.json`` of a label layout: the layout, the objects of each class, and
    how many objects each image had (``{}`` for the mask layouts)."""
    if layout.labels is None:
        return {}
    return {"labels": {
        "layout": layout.name,
        "classes": dict(sorted(Counter(c for s in samples for c in s.labels).items())),
        "objects_per_image": {s.image: len(s.labels) for s in samples},
    }}


def member_filter(layout: DataLayout) -> Callable[[tarfile.TarInfo, set[str] | None], bool]:
    """What extraction keeps of an archive for ``layout``, as ``keep(member, categories)``.

    MVTec AD: only what preparation reads (:func:`mr2unet.data.extract.wanted`). VisA: the
    chosen categories' files and ``split_csv/``. Folder and label layouts: every file
    (their paths are resolved after extraction).
    """
    if layout.name == "mvtec":
        return wanted

    def keep(member: tarfile.TarInfo, categories: set[str] | None) -> bool:
        first = (PurePosixPath(member.name).parts or ("",))[0]  # "." of `tar -C dir .`
        if layout.name == "visa" and categories and first not in {*categories, "split_csv"}:
            return False
        return member.isfile() or member.isdir()

    return keep
