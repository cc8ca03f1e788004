"""Choosing a real-data recipe by measurement: test IOU per network over seeds, on the real
samples in ../shared as published (MVTec AD bottle, NEU-Seg, DeepCrack) or on generated
data with good images (``synthetic``), on the CPU, without DVC or MLflow.

    python benchmarks/user_data_recipe.py --set bottle --size 64 --epochs 100 --seeds 0 1 2
    python benchmarks/user_data_recipe.py --set deepcrack --mode auto --steps 3600 \
        --resize pad --good-images all --tile-predict both --models unet resunet
    python benchmarks/user_data_recipe.py --set bottle --resize pad --good-images all \
        --steps 3600 --models unet --val-fraction 0.2 --thresholds auto=0.05

Prepares the set once per preparation through the library (extract + prepare: the MVTec
layout for the bottle sample, the folder layout for NEU-Seg and DeepCrack, whose own
split is kept), then trains (``mr2unet.training.loop.train``) and evaluates each network
per seed.  ``--mode auto`` lets ``prepare`` choose (its reason is printed); a tiles model
is evaluated as ``--tile-predict`` says (``both``: whole image and windows, IOU and ms per
test image of each).  ``--thresholds`` (with ``--val-fraction`` > 0): besides 0.5, each
``evaluate.threshold`` rule's threshold chosen on the validation split, with the test
images' false alarms (good parts flagged) and misses (defective parts with nothing
found); ``--val-fraction 0`` gives the recipe without a validation split.  Prints a line
per run and a table of mean test IOU ± sample std over the seeds; ``--json`` appends the
runs to a file.  Run it with nothing else running: timings depend on the machine's load
(the process's CPU seconds are printed too).

Until commit 63e852b, ``threshold_recipe.py`` measured the threshold rows and
``mr2unet_ablation.py`` the MR2U-Net variants (benchmarks/results/mr2unet_ablation.md):
``git show 63e852b:benchmarks/mr2unet_ablation.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mr2unet.config.params import LOSSES
from mr2unet.data.extract import extract
from mr2unet.data.folder import FolderLayout
from mr2unet.data.layouts import DataLayout, member_filter
from mr2unet.data.prepare import PrepareConfig, prepare
from mr2unet.data.prepared import PreparedSplit, load_split
from mr2unet.data.synthetic import generate
from mr2unet.evaluation import threshold as thresholds
from mr2unet.evaluation import validation
from mr2unet.evaluation.evaluate import good_images
from mr2unet.evaluation.inference import evaluate
from mr2unet.evaluation.summaries import part_decisions, summarise
from mr2unet.models import MODEL_NAMES, build_model
from mr2unet.models.tiling import Tiling, default_stride
from mr2unet.training.config import TrainConfig
from mr2unet.training.loop import train
from mr2unet.training.options import RunOptions

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS: dict[str, tuple[Path | None, DataLayout]] = {
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
    "synthetic": (None, DataLayout()),  # the generator's, with --generated-good good images
}
CPU = torch.device("cpu")


def prepared(work: Path, name: str, cfg: PrepareConfig, generated_good: int = 30) -> Path:
    """``work/<set>/<preparation>`` (train.npz, test.npz, val.npz), made once."""
    archive, layout = SETS[name]
    raw = work / (name if archive else f"{name}_{generated_good}") / "raw"
    if not raw.is_dir():
        if archive:
            extract(archive, raw, keep=member_filter(layout), what="image files")
        else:
            generate(raw, seed=0, good_images=generated_good)
    out = raw.parent / (f"{cfg.mode}_{cfg.image_size}_{cfg.resize}_{cfg.good_images}_"
                        f"val{cfg.val_fraction}")
    if not (out / "test.npz").is_file():
        prepare(raw, out, cfg, check=False, layout=layout)
    return out


def scores(model: torch.nn.Module, test: PreparedSplit, good: Any, tiling: Tiling | None,
           threshold: float) -> dict[str, Any]:
    """Test IOU and Dice (good images left out, as the pipeline), ms per image, false
    alarms and misses of ``model`` at ``threshold``."""
    start = time.perf_counter()
    result = evaluate(model, test, CPU, threshold=threshold, tiling=tiling, progress=False,
                      batch_size=16)
    ms = 1000 * (time.perf_counter() - start) / len(test)
    primary, pooled = summarise(result.counts, test.categories, good=good)
    (alarms, n_good), misses = part_decisions(result.predictions, test.masks, good)
    return {"threshold": threshold, "iou": primary["mean"]["iou"],
            "dice": primary["mean"]["dice"], "ms_per_image": round(ms, 1),
            "collapsed": bool(pooled["collapsed"]), "false_alarms": f"{alarms}/{n_good}",
            "misses": f"{misses['count']}/{misses['total']}"}


def recipe_rows(model: torch.nn.Module, data: Path, rules: list[str], tiling: Tiling | None,
                predict: str, test: PreparedSplit, good_test: Any) -> dict[str, Any]:
    """Per ``evaluate.threshold`` rule: what the train stage decides on the validation
    split (:func:`mr2unet.evaluation.validation.decide`: the threshold, and for a tiles
    model with ``predict`` auto the way), and the test scores with it."""
    val = load_split(data / "val.npz")
    good_val = good_images(val, data / "manifest.csv")
    rows = {}
    for rule in rules:
        meta = validation.decide(model, val, good_val, thresholds.parse_rule(rule), CPU,
                                 tiling, predict)
        chosen = Tiling.from_dict(meta.get("tiling"))
        name = f"{rule} ({chosen.predict})" if chosen else rule
        rows[name] = {**scores(model, test, good_test, chosen, meta["threshold"]["value"]),
                      **({"choice": meta["tile_predict_choice"]}
                         if "tile_predict_choice" in meta else {})}
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=sorted(SETS), default="bottle")
    ap.add_argument("--work", type=Path, default=Path("/tmp/user_data_recipe"))
    ap.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--size", type=int, default=64, help="image size, or crop size (tiles)")
    ap.add_argument("--mode", default="resize", choices=("resize", "tiles", "auto"))
    ap.add_argument("--tile-predict", default="blocks",
                    choices=("blocks", "whole", "windows", "both", "auto"),
                    help="how a tiles model predicts a test image (both: blocks and windows; "
                         "auto: prepare.tile_predict auto, chosen per --thresholds rule on "
                         "the validation split)")
    ap.add_argument("--defect-crop-fraction", type=float, default=0.5,
                    help="tiles: prepare.defect_crop_fraction")
    ap.add_argument("--mr2unet-options", type=json.loads, default={"recurrent_steps": 3},
                    help="MR2U-Net's train.model_options.mr2unet as JSON "
                         "(default: {\"recurrent_steps\": 3})")
    ap.add_argument("--resize", default="squash", choices=("squash", "pad"))
    ap.add_argument("--good-images", default="0",
                    help="prepare.good_images: 0, a number per category, or all")
    ap.add_argument("--generated-good", type=int, default=30,
                    help="synthetic: defect-free images generated per category")
    ap.add_argument("--val-fraction", type=float, default=0.0, help="split.val_fraction")
    ap.add_argument("--thresholds", nargs="*", default=[],
                    help="evaluate.threshold rules chosen on the validation split, e.g. "
                         "auto=0.05 max_false_alarm_rate=0.05 (besides 0.5)")
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--steps", type=int, default=None,
                    help="a budget of optimiser steps instead of --epochs (train.steps)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--schedule", default="cosine", choices=("constant", "cosine"))
    ap.add_argument("--loss", default="focal_dice", choices=LOSSES)
    ap.add_argument("--augment", default="flips_rot90")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, help="append one JSON line per run to this file "
                                              "(with the loss per epoch)")
    ap.add_argument("--save", type=Path,
                    help="save each trained network's state dict here as <arch>_<seed>.pt")
    ap.add_argument("--load", type=Path,
                    help="score the networks --save wrote here (<arch>_<seed>.pt) instead of "
                         "training them: the recipe's prediction and threshold as they are now")
    args = ap.parse_args(argv)
    if args.thresholds and not args.val_fraction:
        ap.error("--thresholds needs a validation split: --val-fraction 0.2")
    if args.tile_predict == "auto" and not args.thresholds:
        ap.error("--tile-predict auto chooses per threshold rule: --thresholds 0.5 (or a rule)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    good = args.good_images if args.good_images == "all" else int(args.good_images)
    prep = PrepareConfig(image_size=args.size, mode=args.mode, resize=args.resize,
                         good_images=good, val_fraction=args.val_fraction)
    data = prepared(args.work, args.set, prep, args.generated_good)
    summary = json.loads((data / "summary.json").read_text())
    mode = summary.get("mode", "resize")
    if "auto" in summary:
        print(f"prepare.mode auto -> {mode}: {summary['auto']['reason']}")
    train_split, test = load_split(data / "train.npz"), load_split(data / "test.npz")
    good_test = good_images(test, data / "manifest.csv")
    ways = {"both": ("blocks", "windows"), "auto": ("blocks",)}.get(args.tile_predict,
                                                                  (args.tile_predict,))
    tilings = ({way: Tiling(args.size, default_stride(args.size), None, way) for way in ways}
               if mode == "tiles" else {"resize": None})
    recipe = {k: v for k, v in vars(args).items() if k not in ("models", "seeds", "json",
                                                               "work", "save", "load")}
    print(f"recipe {recipe}; {len(train_split)} train / {len(test)} test images of "
          f"{train_split.images.shape[1]} px", flush=True)
    options = RunOptions(device="cpu", cpu_threads=args.threads, checkpoint_every=10**6)
    ious: dict[str, list[float]] = {m: [] for m in args.models}
    seconds: dict[str, list[float]] = {m: [] for m in args.models}
    for seed in args.seeds:
        for arch in args.models:
            cfg = TrainConfig(
                arch=arch, epochs=args.epochs, steps=args.steps, batch_size=args.batch,
                lr=args.lr, lr_schedule=args.schedule, loss=args.loss, augment=args.augment,
                seed=seed, base_width=args.width, crop_size=args.size if mode == "tiles" else None,
                defect_crop_fraction=args.defect_crop_fraction,
                model_options=dict(args.mr2unet_options) if arch == "mr2unet" else {})
            t0, c0 = time.perf_counter(), time.process_time()
            if args.load:
                model = build_model(arch, base_width=args.width, **cfg.model_options)
                model.load_state_dict(torch.load(args.load / f"{arch}_{seed}.pt",
                                                 map_location="cpu"))
                history, trained_collapsed = [], None
            else:
                result = train(cfg, train_split, progress=False, options=options)
                model, history, trained_collapsed = result.model, result.history, result.collapsed
            took, cpu = time.perf_counter() - t0, time.process_time() - c0
            rows = {way: scores(model, test, good_test, tiling, 0.5)
                    for way, tiling in tilings.items()}
            if args.thresholds:  # the recipe's row (the first rule's) heads the table
                rows = {**recipe_rows(model, data, args.thresholds,
                                      next(iter(tilings.values())), args.tile_predict, test,
                                      good_test), **rows}
            first = next(iter(rows.values()))
            ious[arch].append(first["iou"])
            seconds[arch].append(took)
            collapsed = first["collapsed"] or bool(trained_collapsed)
            loss = (f"final loss {history[-1]['loss']:.4f}" if history
                    else f"loaded from {args.load}")
            print(f"seed {seed} {arch:15s} IOU {first['iou']:.4f} Dice {first['dice']:.4f} "
                  f"train {took:6.1f}s ({cpu:6.1f} CPU s) {loss}"
                  f"{' COLLAPSED' if collapsed else ''}", flush=True)
            for name, row in rows.items():
                print(f"    {name:28s} t={row['threshold']:<6.3g} IOU {row['iou']:.4f} "
                      f"{row['ms_per_image']:7.1f} ms/image, false alarms "
                      f"{row['false_alarms']}, misses {row['misses']}", flush=True)
            if args.save:
                args.save.mkdir(parents=True, exist_ok=True)
                torch.save(model.state_dict(), args.save / f"{arch}_{seed}.pt")
            if args.json:
                with args.json.open("a") as fh:
                    fh.write(json.dumps({**recipe, "arch": arch, "seed": seed,
                                         "iou": first["iou"], "dice": first["dice"],
                                         "seconds": round(took, 1),
                                         "cpu_seconds": round(cpu, 1), "collapsed": collapsed,
                                         "predict": rows,
                                         "loss": [round(h["loss"], 5) for h in history]})
                             + "\n")
    print("\n| model | mean test IOU ± std | train s (mean) |\n|---|---:|---:|")
    for arch in args.models:
        std = statistics.stdev(ious[arch]) if len(ious[arch]) > 1 else 0.0
        print(f"| {arch} | {statistics.mean(ious[arch]):.4f} ± {std:.4f} | "
              f"{statistics.mean(seconds[arch]):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
