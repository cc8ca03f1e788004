"""Extraction: only the needed members, any compression, malicious archives refused."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from mr2unet.data.extract import extract
from mr2unet.data.mvtec import scan, validate_layout
from mr2unet.errors import UserError

MVTEC_LIKE = {
    "license.txt": b"top-level license",
    "bottle/license.txt": b"license",
    "bottle/readme.txt": b"readme",
    "bottle/train/good/000.png": b"train image",
    "bottle/test/good/000.png": b"good image",
    "bottle/test/broken/000.png": b"image",
    "bottle/ground_truth/broken/000_mask.png": b"mask",
    "cable/test/cut/000.png": b"image",
    "cable/ground_truth/cut/000_mask.png": b"mask",
    "cable/train/good/000.png": b"train image",
}


def _add(tar: tarfile.TarFile, member: tarfile.TarInfo, data: bytes = b"") -> None:
    member.size = len(data)
    tar.addfile(member, io.BytesIO(data) if member.isfile() else None)


def make_tar(path: Path, files: dict[str, bytes], mode: str = "w",
             extra: tarfile.TarInfo | None = None) -> Path:
    """A tar at ``path`` with ``files`` (name -> content) and then one ``extra`` member."""
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            _add(tar, tarfile.TarInfo(name), data)
        if extra is not None:
            _add(tar, extra, b"evil" if extra.isfile() else b"")
    return path


def relative_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("mode,suffix", [("w", ".tar"), ("w:gz", ".tar.gz"),
                                         ("w:xz", ".tar.xz")])
def test_extracts_only_what_is_needed(tmp_path: Path, mode: str, suffix: str) -> None:
    archive = make_tar(tmp_path / f"mvtec{suffix}", MVTEC_LIKE, mode)
    assert extract(archive, tmp_path / "out") == 5  # the PNG files
    assert relative_files(tmp_path / "out") == {
        name for name in MVTEC_LIKE if "/train/" not in name}
    assert (tmp_path / "out/bottle/ground_truth/broken/000_mask.png").read_bytes() == b"mask"


def test_category_subset(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "mvtec.tar", MVTEC_LIKE)
    extract(archive, tmp_path / "out", categories=["cable"])
    assert relative_files(tmp_path / "out") == {
        "license.txt", "cable/test/cut/000.png", "cable/ground_truth/cut/000_mask.png"}
    with pytest.raises(UserError, match=r"no MVTec AD test/ground_truth files for categories "
                                        r"\['wood'\]"):
        extract(archive, tmp_path / "out2", categories=["wood"])


def test_damaged_archive_is_a_user_error(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "mvtec.tar.xz", MVTEC_LIKE, "w:xz")
    archive.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(UserError, match=f"cannot extract {archive}.*damaged"):
        extract(archive, tmp_path / "out")


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = tarfile.SYMTYPE, target
    return member


def _hardlink(name: str, target: str) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = tarfile.LNKTYPE, target
    return member


def _device(name: str) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.devmajor, member.devminor = tarfile.CHRTYPE, 1, 3
    return member


@pytest.mark.parametrize("member,message", [
    (tarfile.TarInfo("../evil.txt"), "refusing member '../evil.txt'"),
    (tarfile.TarInfo("bottle/test/../../../evil.txt"), "refusing member"),
    (tarfile.TarInfo("/tmp/mr2unet-evil.txt"), "refusing member '/tmp/mr2unet-evil.txt'"),
    (_symlink("bottle/test/broken/001.png", "/etc/passwd"), "refusing link or device"),
    (_symlink("bottle/test/escape", "../../.."), "refusing link or device"),
    (_hardlink("bottle/test/broken/002.png", "/etc/passwd"), "refusing link or device"),
    (_device("bottle/test/broken/null"), "refusing link or device"),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink", "dir-symlink", "hardlink", "device"])
def test_malicious_members_are_refused(tmp_path: Path, member: tarfile.TarInfo,
                                       message: str) -> None:
    archive = make_tar(tmp_path / "evil.tar", MVTEC_LIKE, extra=member)
    out = tmp_path / "deep" / "out"
    with pytest.raises(UserError, match=f"{message}.*not a genuine MVTec AD archive"):
        extract(archive, out)
    # Nothing outside the target; inside it, only regular files and folders.
    assert {p.name for p in tmp_path.iterdir()} == {"evil.tar", "deep"}
    assert [p.name for p in (tmp_path / "deep").iterdir()] == ["out"]
    assert not Path("/tmp/mr2unet-evil.txt").exists()
    assert all(p.is_file() or p.is_dir() for p in out.rglob("*"))
    assert not any(p.is_symlink() for p in out.rglob("*"))


def test_real_bottle_sample(bottle_raw: Path) -> None:
    assert validate_layout(bottle_raw) == ["bottle"]
    samples = scan(bottle_raw, ["bottle"])
    by_type: dict[str, int] = {}
    for sample in samples:
        by_type[sample.defect_type] = by_type.get(sample.defect_type, 0) + 1
    assert by_type == {"broken_large": 20, "broken_small": 22, "contamination": 21}
    assert (bottle_raw / "bottle" / "license.txt").is_file()
    assert (bottle_raw / "bottle" / "readme.txt").is_file()
    assert len(list((bottle_raw / "bottle/test/good").glob("*.png"))) == 3
    assert not (bottle_raw / "bottle" / "train").exists()
