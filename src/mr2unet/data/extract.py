"""Safe, selective extraction of data set archives (MVTec AD full or per-category, others).

Only what the pipeline needs is extracted: for MVTec AD ``<category>/test/``,
``<category>/ground_truth/`` and the license/readme files (:func:`wanted`); other layouts
pass their own choice (:func:`mr2unet.data.layouts.keeps_member`).  Members that would land
outside the target (absolute paths, ``..``), links and device files are refused before
anything is written for them, and ``tarfile``'s ``data`` filter guards the rest.
"""

from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from mr2unet.data.images import IMAGE_SUFFIXES
from mr2unet.errors import UserError

log = logging.getLogger(__name__)
KEEP_DIRS = ("test", "ground_truth")
KEEP_FILES = ("license.txt", "readme.txt")
# Compressions recognised by their first bytes. Decompressing ourselves (rather than with
# tarfile's "r|xz") makes a truncated archive an error instead of a silently shorter one.
DECOMPRESSORS: dict[bytes, Callable[[Path], BinaryIO]] = {
    b"\xfd7zXZ\x00": lzma.open, b"\x1f\x8b": gzip.open, b"BZh": bz2.open,
}
DAMAGED = (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error, gzip.BadGzipFile)


def check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Refuse members that could escape the extraction directory."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        raise UserError(f"{archive}: refusing member {member.name!r}, which would be written "
                        f"outside the target directory; the archive is not a genuine MVTec "
                        f"AD archive.")
    if member.issym() or member.islnk() or member.isdev() or member.isfifo():
        raise UserError(f"{archive}: refusing link or device member {member.name!r}; the "
                        f"archive is not a genuine MVTec AD archive.")


def wanted(member: tarfile.TarInfo, categories: set[str] | None) -> bool:
    parts = PurePosixPath(member.name).parts
    if len(parts) == 1:
        return member.isfile() and parts[0].lower() in KEEP_FILES
    if categories and parts[0] not in categories:
        return False
    if len(parts) == 2:
        return member.isfile() and parts[1].lower() in KEEP_FILES
    return parts[1] in KEEP_DIRS


def open_decompressed(archive: Path) -> BinaryIO:
    """``archive`` as a stream of tar bytes (.tar, .tar.xz, .tar.gz or .tar.bz2)."""
    with archive.open("rb") as fh:
        head = fh.read(6)
    for magic, opener in DECOMPRESSORS.items():
        if head.startswith(magic):
            return opener(archive)
    return archive.open("rb")


def extract(archive: Path, dest: Path, categories: list[str] | None = None,
            keep: Callable[[tarfile.TarInfo, set[str] | None], bool] = wanted,
            what: str = "MVTec AD test/ground_truth files") -> int:
    """Extract the members of ``archive`` that ``keep(member, categories)`` wants into
    ``dest`` (by default MVTec AD's, :func:`wanted`).

    Returns the number of image files (images and masks) written.
    """
    selected = set(categories) if categories else None
    count = 0

    def members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
        nonlocal count
        for member in tar:
            check_member(member, archive)
            if keep(member, selected):
                count += member.isfile() and member.name.lower().endswith(IMAGE_SUFFIXES)
                yield member

    dest.mkdir(parents=True, exist_ok=True)
    try:
        # One streaming pass ("r|"), even for the 5 GB archive: no seeking, no index.
        with open_decompressed(archive) as stream, \
                tarfile.open(fileobj=stream, mode="r|") as tar:
            tar.extractall(dest, members=members(tar), filter="data")
    except DAMAGED as exc:
        raise UserError(f"cannot extract {archive}: {exc}. The file is damaged or not a tar "
                        f"archive: replace it (a download in data.download_dir: delete it and "
                        f"run the stage again).") from None
    except OSError as exc:
        raise UserError(f"cannot extract {archive} into {dest}: {exc}. Check the free disk "
                        f"space and the permissions there.") from None
    if count == 0:
        raise UserError(f"{archive} contains no {what}"
                        + (f" for categories {sorted(selected)}" if selected else "") + ".")
    log.info("extracted %d images and masks from %s", count, archive)
    return count
