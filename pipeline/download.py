"""Stage `download`: put the data set in data/raw/ from the configured source.

The data set is in the layout ``data.layout`` names (mvtec, folder, visa, yolo, coco or
labelme; docs/data.md), and is checked here (every image paired with its mask, or its
labels) so that a bad copy fails first.

    data.source: url        download data.url (resumable) into data.download_dir, verify, extract
    data.source: archive    verify the local data.archive (when data.sha256/size_bytes are set),
                            extract
    data.source: directory  validate data.directory, hard-link (or copy) the needed files
    data.source: synthetic  generate MVTec-format data (mr2unet.data.synthetic)

Usage: python pipeline/download.py [--params params.yaml]   (from the repository root)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from _common import run_stage_cli

from mr2unet.config.workspace import RAW, project_path
from mr2unet.data import layouts
from mr2unet.data.download import download, verify
from mr2unet.data.extract import KEEP_FILES, extract
from mr2unet.data.layouts import DataLayout
from mr2unet.data.synthetic import generate
from mr2unet.errors import UserError

DEFAULT_NAME = "mvtec_anomaly_detection.tar.xz"


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed: copy instead
        shutil.copy2(src, dst)


def copy_tree(src: Path, categories: list[str], dest: Path, layout: DataLayout) -> None:
    """Hard-link (or copy) the needed files of an extracted tree into ``dest``: MVTec AD's
    test/, ground_truth/ and notes of each category, a VisA category's folder, or the whole
    tree of a folder layout."""
    if layout.name != "mvtec":
        for part in categories if layout.name == "visa" else [""]:
            shutil.copytree(src / part, dest / part, copy_function=_link_or_copy,
                            dirs_exist_ok=True)
        return
    for category in categories:
        for sub in ("test", "ground_truth"):
            shutil.copytree(src / category / sub, dest / category / sub,
                            copy_function=_link_or_copy)
        for name in KEEP_FILES:
            if (src / category / name).is_file():
                shutil.copy2(src / category / name, dest / category / name)
    for name in KEEP_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)


def verified_archive(data: dict[str, Any]) -> Path:
    """The local ``data.archive``, checked against data.sha256 / data.size_bytes."""
    archive = project_path(data["archive"])
    try:
        verify(archive, data["sha256"], data["size_bytes"])
    except UserError as exc:
        raise UserError(f"{exc} For a per-category archive (e.g. bottle.tar.xz) or another "
                        f"copy, set data.sha256 and data.size_bytes to its values, or to "
                        f"null to skip the check.") from None
    return archive


def downloaded_archive(data: dict[str, Any]) -> Path:
    """``data.url`` downloaded into ``data.download_dir`` (reused when already verified)."""
    name = Path(urlparse(data["url"]).path).name or DEFAULT_NAME
    return download(data["url"], project_path(data["download_dir"]) / name, data["sha256"],
                    data["size_bytes"], timeout=data["timeout_s"])


def from_synthetic(params: dict[str, Any]) -> str:
    syn = params["synthetic"]
    counts = generate(RAW, seed=syn["seed"], images_per_defect=syn["images_per_defect"],
                      good_images=syn["good_images"])
    return (f"generated {sum(counts.values())} synthetic defective images of "
            f"{', '.join(counts)} in {RAW}")


def from_directory(src: Path, categories: list[str] | None, layout: DataLayout) -> str:
    if RAW.resolve() in (src.resolve(), *src.resolve().parents):
        raise UserError(f"data.directory ({src}) must lie outside {RAW}, which this stage "
                        f"rewrites: point it at your copy of the data set.")
    chosen = layouts.choose_categories(src, layout, categories)
    samples = layouts.scan(src, layout, chosen)  # fails early, listing every unpaired file
    shutil.rmtree(RAW, ignore_errors=True)
    copy_tree(src, chosen, RAW, layout)
    return f"linked {len(samples)} defective images of {', '.join(chosen)} from {src} to {RAW}"


def from_archive(archive: Path, categories: list[str] | None, layout: DataLayout) -> str:
    shutil.rmtree(RAW, ignore_errors=True)
    files = extract(archive, RAW, categories, keep=layouts.member_filter(layout),
                    what="MVTec AD test/ground_truth files" if layout.name == "mvtec"
                    else "image files")
    chosen = layouts.choose_categories(RAW, layout, categories)
    samples = layouts.scan(RAW, layout, chosen)  # fails early, listing every unpaired file
    return (f"extracted {files} images and masks of {', '.join(chosen)} from {archive} to "
            f"{RAW}: {len(samples)} defective images paired with their masks")


def main(params: dict[str, Any]) -> None:
    data = params["data"]
    categories = data["categories"] or None
    source = data["source"]
    layout = DataLayout.from_params(data)
    if source == "synthetic":
        shutil.rmtree(RAW, ignore_errors=True)
        print(from_synthetic(params))
    elif source == "directory":
        print(from_directory(project_path(data["directory"]), categories, layout))
    elif source == "archive":
        print(from_archive(verified_archive(data), categories, layout))
    else:
        print(from_archive(downloaded_archive(data), categories, layout))


if __name__ == "__main__":
    run_stage_cli(main, __doc__)
