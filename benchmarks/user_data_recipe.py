"""Choosing a real-data recipe by measurement: test IOU per network over seeds, on the real
MVTec AD bottle sample, the real NEU-Seg sample or the real DeepCrack sample (../shared), as
they are published.

    python benchmarks/user_data_recipe.py --set bottle --size 64 --epochs 100 --seeds 0 1 2
    python benchmarks/user_data_recipe.py --set neu --mode tiles --size 64 --epochs 20
    python benchmarks/user_data_recipe.py --set deepcrack --mode auto --steps 3600 \
        --resize pad --good-images all --tile-predict both --models unet resunet

Prepares the set once per preparation (extract + prepare through the library: the
MVTec layout for the bottle sample, the folder layout for NEU-Seg and DeepCrack, with the
profiles' splits: DeepCrack keeps its own), then trains and evaluates each network with the
given settings for each seed (``mr2unet.training.loop.train``,
``mr2unet.evaluation.evaluate.evaluate``; tiles mode trains on crops), on the CPU, without
DVC or MLflow. ``--mode auto`` lets ``prepare`` choose (its decision is printed); a tiles
model is evaluated as ``--tile-predict`` says (``both``: whole image and windows, the IOU
and ms per test image of each). Prints one line per run and a table: mean test IOU ±
sample standard deviation over the seeds, mean training seconds, whether a run collapsed.
``--json`` appends the runs to a file; ``--save DIR`` keeps each network's weights.
Timings depend on the machine's load: run it with nothing else running (the CPU
seconds of the process are printed too; with ``--threads 1`` they are close to the wall
time the run would take alone on one core).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from mr2unet.config.params import LOSSES, MODEL_NAMES
from mr2unet.data.extract import extract
from mr2unet.data.folder import FolderLayout
from mr2unet.data.layouts import DataLayout, member_filter
from mr2unet.data.prepare import PrepareConfig, prepare
from mr2unet.data.prepared import load_split
from mr2unet.evaluation.evaluate import evaluate, good_images, summarise
from mr2unet.models.tiling import Tiling
from mr2unet.training.loop import TrainConfig, train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS: dict[str, tuple[Path, DataLayout]] = {
    "bottle": (SHARED / "mvtec_ad_bottle_test.tar.xz", DataLayout()),
    "neu": (SHARED / "neu_seg_test.tar.xz",
            DataLayout("folder", FolderLayout(images="neu_seg/img_dir/test",
                                              masks="neu_seg/ann_dir/test",
                                              category="neu_seg"))),
    "deepcrack": (SHARED / "deepcrack_sample.tar.xz",
                  DataLayout("folder", FolderLayout(
                      images="deepcrack/*_img/*.jpg", masks="deepcrack/*_lab/*.png",
                      category="deepcrack", split_lists={"train": "deepcrack/train_img",
                                                         "test": "deepcrack/test_img"}))),
}


def prepared(work: Path, name: str, cfg: PrepareConfig) -> Path:
    """``work/<set>/<preparation>`` (train.npz, test.npz), made once."""
    archive, layout = SETS[name]
    raw = work / name / "raw"
    if not raw.is_dir():
        extract(archive, raw, keep=member_filter(layout), what="image files")
    out = work / name / (f"{cfg.mode}_{cfg.image_size}_{cfg.tile_source_size}_"
                         f"{cfg.resize}_{cfg.good_images}")
    if not (out / "test.npz").is_file():
        prepare(raw, out, cfg, check=False, layout=layout)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=sorted(SETS), default="bottle")
    ap.add_argument("--work", type=Path, default=Path("/tmp/user_data_recipe"))
    ap.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--size", type=int, default=64, help="image size, or crop size (tiles)")
    ap.add_argument("--mode", default="resize", choices=("resize", "tiles", "auto"))
    ap.add_argument("--tile-predict", default="whole", choices=("whole", "windows", "both"))
    ap.add_argument("--save", type=Path, help="save each network's state dict here")
    ap.add_argument("--resize", default="squash", choices=("squash", "pad"))
    ap.add_argument("--tile-source-size", type=int, default=None)
    ap.add_argument("--defect-crop-fraction", type=float, default=0.5)
    ap.add_argument("--good-images", default="0",
                    help="prepare.good_images: 0, a number per category, or all")
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--steps", type=int, default=None,
                    help="a budget of optimiser steps instead of --epochs (train.steps)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--schedule", default="cosine", choices=("constant", "cosine"))
    ap.add_argument("--loss", default="focal_dice", choices=LOSSES)
    ap.add_argument("--dice-weight", type=float, default=1.0)
    ap.add_argument("--augment", default="flips_rot90")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, help="append one JSON line per run to this file")
    args = ap.parse_args()

    good = args.good_images if args.good_images == "all" else int(args.good_images)
    prep = PrepareConfig(image_size=args.size, mode=args.mode, resize=args.resize,
                         tile_source_size=args.tile_source_size, good_images=good)
    data = prepared(args.work, args.set, prep)
    summary = json.loads((data / "summary.json").read_text())
    mode = summary.get("mode", "resize")
    if "auto" in summary:
        print(f"prepare.mode auto -> {mode}: {summary['auto']['reason']}")
    train_split, test_split = load_split(data / "train.npz"), load_split(data / "test.npz")
    good_test = good_images(test_split, data / "manifest.csv")  # left out of IOU
    tilings = {}
    if mode == "tiles":
        ways = ("whole", "windows") if args.tile_predict == "both" else (args.tile_predict,)
        tilings = {way: Tiling(args.size, args.size // 2, args.tile_source_size, way)
                   for way in ways}
    recipe = {k: getattr(args, k) for k in ("set", "mode", "size", "tile_source_size",
                                            "good_images", "defect_crop_fraction", "width",
                                            "epochs", "steps",
                                            "batch", "lr", "schedule", "loss", "dice_weight",
                                            "augment", "threads")}
    print(f"recipe {recipe}; {len(train_split)} train / {len(test_split)} test images of "
          f"{train_split.images.shape[1]} px", flush=True)
    results: dict[str, list[tuple[float, float, bool]]] = {m: [] for m in args.models}
    for seed in args.seeds:
        for arch in args.models:
            cfg = TrainConfig(
                arch=arch, epochs=args.epochs, steps=args.steps, batch_size=args.batch, lr=args.lr,
                lr_schedule=args.schedule, loss=args.loss, dice_weight=args.dice_weight,
                augment=args.augment, seed=seed, base_width=args.width, device="cpu",
                cpu_threads=args.threads, checkpoint_every=10**6,
                crop_size=args.size if tilings else None,
                defect_crop_fraction=args.defect_crop_fraction,
                model_options={"recurrent_steps": 3} if arch == "mr2unet" else {})
            t0, c0 = time.perf_counter(), time.process_time()
            result = train(cfg, train_split, progress=False)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            if args.save:
                args.save.mkdir(parents=True, exist_ok=True)
                torch.save(result.model.state_dict(), args.save / f"{arch}_{seed}.pt")
            scored = {}
            for way, tiling in (tilings or {"resize": None}).items():
                t1 = time.perf_counter()
                ev = evaluate(result.model, test_split, torch.device("cpu"), progress=False,
                              tiling=tiling, batch_size=16)
                ms = 1000 * (time.perf_counter() - t1) / len(test_split)
                primary, pooled = summarise(ev.counts, test_split.categories, good=good_test)
                scored[way] = (primary, pooled, ms)
            primary, pooled, _ = next(iter(scored.values()))
            iou = primary["mean"]["iou"]
            collapsed = bool(pooled["collapsed"] or result.collapsed)
            ways = {way: {"iou": round(p["mean"]["iou"], 4), "ms_per_image": round(ms, 1)}
                    for way, (p, _, ms) in scored.items()}
            results[arch].append((iou, seconds, collapsed))
            print(f"seed {seed} {arch:15s} IOU {iou:.4f} Dice {primary['mean']['dice']:.4f} "
                  f"train {seconds:6.1f}s ({cpu:6.1f} CPU s) "
                  f"final loss {result.history[-1]['loss']:.4f}"
                  f"{' COLLAPSED' if collapsed else ''} {ways}", flush=True)
            if args.json:
                with args.json.open("a") as fh:
                    fh.write(json.dumps({**recipe, "arch": arch, "seed": seed, "iou": iou,
                                         "dice": primary["mean"]["dice"],
                                         "seconds": round(seconds, 1),
                                         "cpu_seconds": round(cpu, 1),
                                         "collapsed": collapsed, "predict": ways}) + "\n")
    print("\n| model | mean test IOU ± std | train s (mean) |\n|---|---:|---:|")
    for arch, runs in results.items():
        ious = [r[0] for r in runs]
        std = statistics.stdev(ious) if len(ious) > 1 else 0.0
        print(f"| {arch} | {statistics.mean(ious):.4f} ± {std:.4f} | "
              f"{statistics.mean(r[1] for r in runs):.1f} |")
    per_seed = sum(statistics.mean(r[1] for r in runs) for runs in results.values())
    print(f"\ntraining time of all networks per seed: {per_seed:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
