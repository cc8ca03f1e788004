"""Shared fixtures: the real MVTec bottle sample (../shared) and synthetic data."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
BOTTLE_TAR = SHARED / "data" / "mvtec_ad_bottle_test.tar.xz"
BOTTLE_SHA256 = "9be336dd3af7738f6478464652eb07309b039059f51d562377e7afe81eb99f2a"


@pytest.fixture(scope="session")
def bottle_tar() -> Path:
    if not BOTTLE_TAR.is_file():
        pytest.skip(f"real MVTec sample not found at {BOTTLE_TAR} (../shared is missing)")
    return BOTTLE_TAR


@pytest.fixture(scope="session")
def bottle_raw(bottle_tar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mr2unet.data.extract import extract

    root = tmp_path_factory.mktemp("bottle_raw")
    extract(bottle_tar, root)
    return root


@pytest.fixture(scope="session")
def synthetic_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mr2unet.data.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic")
    generate(root, seed=0, images_per_defect=3)
    return root
