"""Stage `prepare`: data/raw/ -> data/prepared/{train,test}.npz, manifest.csv, summary.json."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from _common import run_stage

from mr2unet.data.prepare import PrepareConfig, prepare


def main(params: dict[str, Any]) -> None:
    cfg = PrepareConfig(
        image_size=params["prepare"]["image_size"],
        mask_threshold=params["prepare"]["mask_threshold"],
        keep_thin_defects=params["prepare"]["keep_thin_defects"],
        test_fraction=params["split"]["test_fraction"],
        seed=params["split"]["seed"],
    )
    data = params["data"]
    summary = prepare(Path("data/raw"), Path("data/prepared"), cfg,
                      categories=data["categories"] or None,
                      check=data["check_counts"] and data["source"] != "synthetic")
    train = sum(c["train"] for c in summary["per_category"].values())
    test = sum(c["test"] for c in summary["per_category"].values())
    print(f"prepared {summary['images']} images: {train} train / {test} test, "
          f"{sum(summary['bytes'].values()) / 1e6:.1f} MB in data/prepared/")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    run_stage(main, parser.parse_args().params)
