"""Stage `evaluate@<model>`: score a trained model on the test split.

Outputs: metrics/<model>.json (mean + per-category IOU/Dice, DVC metrics),
metrics/pooled/<model>.json (pooled scores, counts), data/eval/<model>.csv (per image),
data/eval/<model>_pred.npz (predicted masks, for the report).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from _common import run_stage

from mr2unet.checkpoint import load_model
from mr2unet.data.prepared import load_split
from mr2unet.evaluate import evaluate, flat_metrics, per_image_table, summarise, write_json
from mr2unet.tracking import read_run_info
from mr2unet.train import resolve_device


def main(params: dict[str, Any], arch: str) -> None:
    device = resolve_device(params["train"]["device"])
    model, _ = load_model(Path("data/models") / f"{arch}.pt", device)
    split = load_split("data/prepared/test.npz")
    cfg = params["evaluate"]
    result = evaluate(model, split, device, cfg["batch_size"])
    primary, pooled = summarise(result.counts, split.categories, cfg["empty_score"])
    write_json(Path("metrics") / f"{arch}.json", primary)
    write_json(Path("metrics/pooled") / f"{arch}.json", pooled)
    out = Path("data/eval")
    out.mkdir(parents=True, exist_ok=True)
    per_image_table(split, result.counts, cfg["empty_score"]).to_csv(
        out / f"{arch}.csv", index=False, lineterminator="\n")
    with (out / f"{arch}_pred.npz").open("wb") as fh:
        np.savez_compressed(fh, predictions=result.predictions)
    run_info = read_run_info(Path("data/models") / f"{arch}.run.json")
    if params["tracking"]["enabled"] and run_info.get("tracking"):
        from mr2unet.registry import log_evaluation

        log_evaluation(run_info, flat_metrics(primary))
    print(f"{arch}: mean IOU {primary['mean']['iou']:.4f}, Dice {primary['mean']['dice']:.4f} "
          f"on {len(split)} test images")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    run_stage(lambda params: main(params, args.model), args.params)
