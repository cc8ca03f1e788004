"""What the user-data recipe's threshold (``evaluate.threshold: auto=0.05`` on a 20 %
validation split) costs in IOU and misses, and what it saves in false alarms, against
the old recipe (no validation split, threshold 0.5), per network and seed.

    python benchmarks/threshold_recipe.py --set bottle --models unet --seeds 0 1 2
    python benchmarks/threshold_recipe.py --set synthetic --good-images 30 --seeds 0 1 2

``bottle``: the real MVTec AD bottle sample in ../shared (its 3 good images join the
splits); ``synthetic``: the generator's data with ``--good-images`` defect-free images per
category. Prepared twice through the library at 64 px (``split.val_fraction`` 0 and 0.2,
``prepare.good_images: all``); each network is trained with the recipe's training settings
(profiles/user-data.yaml: 3600 steps of batch 4, focal + Dice, cosine, flips + rot90,
width 8, one thread) on each preparation's training split, on the CPU, without DVC or
MLflow. Rows per (network, seed):

- ``old``: trained without a validation split, threshold 0.5 (the recipe before);
- ``val@0.5``: trained on the smaller training split, threshold 0.5;
- ``auto``: the same network at the ``auto=0.05`` threshold chosen on the validation split;
- ``max_far``: the same network at ``max_false_alarm_rate=0.05`` (the budget alone).

Each row: the threshold, the mean test IOU (good images left out, as the pipeline),
false alarms (good test parts flagged) and misses (defective test parts with no predicted
defect), with counts. ``--json`` appends one line per row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from mr2unet.config.params import MODEL_NAMES
from mr2unet.data.extract import extract
from mr2unet.data.layouts import DataLayout, member_filter
from mr2unet.data.prepare import PrepareConfig, prepare
from mr2unet.data.prepared import load_split
from mr2unet.data.synthetic import generate
from mr2unet.evaluation import threshold as thresholds
from mr2unet.evaluation.evaluate import (
    evaluate,
    good_images,
    part_decisions,
    predict_maps,
    summarise,
)
from mr2unet.training.loop import TrainConfig, train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BOTTLE = SHARED / "mvtec_ad_bottle_test.tar.xz"
RULES = {"auto": "auto=0.05", "max_far": "max_false_alarm_rate=0.05"}


def raw_data(work: Path, name: str, good: int) -> Path:
    """The extracted bottle sample, or the generated set with ``good`` good images."""
    raw = work / f"{name}_{good}" / "raw"
    if not raw.is_dir():
        if name == "bottle":
            extract(BOTTLE, raw, keep=member_filter(DataLayout()), what="image files")
        else:
            generate(raw, seed=0, good_images=good)
    return raw


def scores(model: torch.nn.Module, data: Path, threshold: float) -> dict[str, object]:
    test = load_split(data / "test.npz")
    good = good_images(test, data / "manifest.csv")
    result = evaluate(model, test, torch.device("cpu"), threshold=threshold, progress=False)
    primary, _ = summarise(result.counts, test.categories, good=good)
    (alarms, n_good), misses = part_decisions(result.predictions, test.masks, good)
    return {"threshold": threshold, "iou": round(primary["mean"]["iou"], 4),
            "false_alarms": alarms, "good": n_good, "misses": misses["count"],
            "defective": misses["total"]}


def chosen(model: torch.nn.Module, data: Path, rule: str) -> dict[str, object]:
    val = load_split(data / "val.npz")
    _, probs = predict_maps(model, val.images, torch.device("cpu"), progress=False)
    return thresholds.choose(thresholds.parse_rule(rule), probs, val.masks, val.categories,
                             good_images(val, data / "manifest.csv"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=("bottle", "synthetic"), default="bottle")
    ap.add_argument("--good-images", type=int, default=30,
                    help="synthetic: defect-free images per category")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "threshold_recipe")
    ap.add_argument("--models", nargs="+", default=["unet"], choices=MODEL_NAMES)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=3600)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)

    raw = raw_data(args.work, args.set, args.good_images)
    folders = {}
    for val in (0.0, 0.2):
        out = raw.parent / f"prepared_val{val}"
        if not (out / "test.npz").is_file():
            prepare(raw, out, PrepareConfig(image_size=64, resize="pad", good_images="all",
                                            val_fraction=val), check=False)
        folders[val] = out
    for val, out in folders.items():
        sizes = {s: len(load_split(out / f"{s}.npz")) for s in ("train", "val", "test")}
        goods = {s: int(good_images(load_split(out / f"{s}.npz"), out / "manifest.csv").sum())
                 for s in sizes}
        print(f"val_fraction {val}: images {sizes}, good {goods}", flush=True)

    rows: list[dict[str, object]] = []
    for seed in args.seeds:
        for arch in args.models:
            trained = {}
            for val, out in folders.items():
                cfg = TrainConfig(arch=arch, steps=args.steps, batch_size=4, lr=3e-3,
                                  lr_schedule="cosine", loss="focal_dice", augment="flips_rot90",
                                  seed=seed, base_width=8, device="cpu", cpu_threads=1,
                                  checkpoint_every=10**6,
                                  model_options={"recurrent_steps": 3}
                                  if arch == "mr2unet" else {})
                t0 = time.perf_counter()
                trained[val] = train(cfg, load_split(out / "train.npz"), progress=False).model
                print(f"seed {seed} {arch} val_fraction {val}: trained in "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)
            found = {"old": scores(trained[0.0], folders[0.0], 0.5),
                     "val@0.5": scores(trained[0.2], folders[0.2], 0.5)}
            for name, rule in RULES.items():
                how = chosen(trained[0.2], folders[0.2], rule)
                found[name] = {**scores(trained[0.2], folders[0.2], how["value"]),
                               "resolved": how.get("resolved", rule),
                               "val_good": how["val_good_images"]}
            for name, row in found.items():
                row = {"set": args.set, "arch": arch, "seed": seed, "variant": name, **row}
                rows.append(row)
                print(f"  {name:8s} t={row['threshold']:<5g} IOU {row['iou']:.4f} "
                      f"false alarms {row['false_alarms']}/{row['good']} "
                      f"misses {row['misses']}/{row['defective']}"
                      + (f" ({row['resolved']})" if "resolved" in row else ""), flush=True)
                if args.json:
                    with args.json.open("a") as fh:
                        fh.write(json.dumps(row) + "\n")
    print("\n| model | variant | threshold (seeds) | mean IOU | false alarms | misses |\n"
          "|---|---|---|---:|---:|---:|")
    for arch in args.models:
        for name in ("old", "val@0.5", *RULES):
            sel = [r for r in rows if r["arch"] == arch and r["variant"] == name]
            ts = ", ".join(f"{r['threshold']:g}" for r in sel)

            def total(key: str, rows: list[dict[str, object]] = sel) -> int:
                return sum(int(r[key]) for r in rows)

            print(f"| {arch} | {name} | {ts} | "
                  f"{statistics.mean(float(r['iou']) for r in sel):.4f} | "
                  f"{total('false_alarms')}/{total('good')} | "
                  f"{total('misses')}/{total('defective')} |")


if __name__ == "__main__":
    sys.exit(main())
