"""Stage `download`: put an MVTec-layout tree in data/raw/ from the configured source.

    data.source: url        download data.url (resumable) into data.download_dir, verify, extract
    data.source: archive    verify the local data.archive, extract
    data.source: directory  validate data.directory, copy the needed files
    data.source: synthetic  generate MVTec-format data (mr2unet.data.synthetic)
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from _common import run_stage

from mr2unet.data.download import download, verify
from mr2unet.data.extract import extract
from mr2unet.data.mvtec import validate_layout
from mr2unet.data.synthetic import generate

RAW = Path("data/raw")


def copy_tree(src: Path, categories: list[str]) -> None:
    """Copy (hard-link where possible) the needed files of an extracted tree into RAW."""
    for category in categories:
        for sub in ("test", "ground_truth"):
            shutil.copytree(src / category / sub, RAW / category / sub,
                            copy_function=_link_or_copy)
        for name in ("license.txt", "readme.txt"):
            if (src / category / name).is_file():
                shutil.copy2(src / category / name, RAW / category / name)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        Path(dst).hardlink_to(src)
    except OSError:
        shutil.copy2(src, dst)


def main(params: dict[str, Any]) -> None:
    data = params["data"]
    categories = data["categories"] or None
    shutil.rmtree(RAW, ignore_errors=True)
    source = data["source"]
    if source == "synthetic":
        syn = params["synthetic"]
        counts = generate(RAW, seed=syn["seed"], images_per_defect=syn["images_per_defect"])
        print(f"generated {sum(counts.values())} synthetic defective images in {RAW}")
        return
    if source == "directory":
        src = Path(data["directory"])
        chosen = validate_layout(src, categories)
        copy_tree(src, chosen)
        print(f"copied {len(chosen)} categories from {src} to {RAW}")
        return
    if source == "archive":
        archive = Path(data["archive"])
        verify(archive, data["sha256"], data["size_bytes"])
    else:
        name = Path(urlparse(data["url"]).path).name or "mvtec_anomaly_detection.tar.xz"
        archive = download(data["url"], Path(data["download_dir"]) / name, data["sha256"],
                           data["size_bytes"], timeout=data["timeout_s"])
    files = extract(archive, RAW, categories)
    print(f"extracted {files} files from {archive} to {RAW}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    run_stage(main, parser.parse_args().params)
