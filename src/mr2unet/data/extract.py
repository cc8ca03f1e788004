"""Safe, selective extraction of MVTec AD archives (full or per-category).

Only what the pipeline needs is extracted: ``<category>/test/``,
``<category>/ground_truth/`` and the license/readme files.  Members that would land
outside the target (absolute paths, ``..``), links and device files are refused before
anything is written for them, and ``tarfile``'s ``data`` filter guards the rest.
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from mr2unet.errors import UserError

log = logging.getLogger(__name__)
KEEP_DIRS = ("test", "ground_truth")
KEEP_FILES = ("license.txt", "readme.txt")


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


def extract(archive: Path, dest: Path, categories: list[str] | None = None) -> int:
    """Extract the needed members of ``archive`` into ``dest``; returns the files written."""
    selected = set(categories) if categories else None
    count = 0

    def members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
        nonlocal count
        for member in tar:
            check_member(member, archive)
            if wanted(member, selected):
                count += member.isfile()
                yield member

    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r|*") as tar:  # one streaming pass, even for 5 GB
            tar.extractall(dest, members=members(tar), filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UserError(f"cannot extract {archive}: {exc}. The file is damaged or not a tar "
                        f"archive; delete it and download it again.") from None
    if count == 0:
        raise UserError(f"{archive} contains no MVTec AD test/ground_truth files"
                        + (f" for categories {sorted(selected)}" if selected else "") + ".")
    log.info("extracted %d files from %s", count, archive)
    return count
