"""Stage `prepare`: data/raw/ -> data/prepared/{train,test,val}.npz, manifest.csv,
summary.json (val.npz: split.val_fraction of the training images; empty at 0).

Usage: python pipeline/prepare.py [--params params.yaml]   (from the repository root)
"""

from __future__ import annotations

from typing import Any

from _common import run_stage_cli

from mr2unet.config.workspace import PREPARED, RAW
from mr2unet.data.layouts import DataLayout
from mr2unet.data.prepare import PrepareConfig, prepare


def main(params: dict[str, Any]) -> None:
    cfg = PrepareConfig(
        image_size=params["prepare"]["image_size"],
        mask_threshold=params["prepare"]["mask_threshold"],
        keep_thin_defects=params["prepare"]["keep_thin_defects"],
        resize=params["prepare"]["resize"],
        test_fraction=params["split"]["test_fraction"],
        seed=params["split"]["seed"],
        val_fraction=params["split"]["val_fraction"],
        good_images=params["prepare"]["good_images"],
        mode=params["prepare"]["mode"],
        tile_source_size=params["prepare"]["tile_source_size"],
    )
    data = params["data"]
    summary = prepare(RAW, PREPARED.folder, cfg, categories=data["categories"] or None,
                      check=data["check_counts"] and data["source"] != "synthetic",
                      layout=DataLayout.from_params(data))
    good = summary.get("good_images")
    print(f"prepared {summary['images']} images: {summary['train']} train / "
          f"{summary['test']} test" + (f" / {summary['val']} val" if "val" in summary else "")
          + f" at {cfg.image_size} px ({cfg.resize}"
          + (f"; prepare.mode auto -> {summary['mode']}" if "auto" in summary else "") + "), "
          + (f"of them good: {good['train']} train / {good['test']} test"
             + (f" / {good['val']} val" if "val" in good else "") + ", " if good else "") +
          f"{sum(summary['bytes'].values()) / 1e6:.1f} MB in {PREPARED.folder}/")


if __name__ == "__main__":
    run_stage_cli(main, __doc__)
