"""Choosing the `bottle-sample` recipe by measurement: test IOU per network over seeds.

    python benchmarks/bottle_recipe.py --size 64 --epochs 60 --loss ce_dice --seeds 0 1 2

Prepares the real MVTec AD bottle sample once per image size (extract + prepare through
the library, the profile's split: 50 train / 13 test), then trains and evaluates each
network with the given settings for each seed (``mr2unet.training.loop.train``,
``mr2unet.evaluation.evaluate.evaluate``), on the CPU, without DVC or MLflow.  Prints one line per
run and a table: mean test IOU ± sample standard deviation over the seeds, the mean
training seconds and whether a run collapsed.  ``--json`` appends the runs to a file.
Timings depend on the load of the machine: run it with nothing else running (the CPU
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
from mr2unet.data.prepare import PrepareConfig, prepare
from mr2unet.data.prepared import load_split
from mr2unet.evaluation.evaluate import evaluate, summarise
from mr2unet.training.loop import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "mvtec_ad_bottle_test.tar.xz"


def prepared(work: Path, archive: Path, size: int) -> Path:
    """``work/prepared_<size>`` (train.npz, test.npz), made once."""
    raw, out = work / "raw", work / f"prepared_{size}"
    if not (raw / "bottle").is_dir():
        extract(archive, raw)
    if not (out / "test.npz").is_file():
        prepare(raw, out, PrepareConfig(image_size=size), check=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archive", type=Path, default=ARCHIVE)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bottle_recipe"))
    ap.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--schedule", default="constant", choices=("constant", "cosine"))
    ap.add_argument("--loss", default="ce_dice", choices=LOSSES)
    ap.add_argument("--dice-weight", type=float, default=1.0)
    ap.add_argument("--augment", default="flips_rot90")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="append one JSON line per run to this file")
    args = ap.parse_args()

    data = prepared(args.work, args.archive, args.size)
    train_split, test_split = load_split(data / "train.npz"), load_split(data / "test.npz")
    recipe = {k: getattr(args, k) for k in ("size", "width", "epochs", "batch", "lr",
                                            "schedule", "loss", "dice_weight", "augment",
                                            "threads")}
    print(f"recipe {recipe}; {len(train_split)} train / {len(test_split)} test images",
          flush=True)
    results: dict[str, list[tuple[float, float, bool]]] = {m: [] for m in args.models}
    for seed in args.seeds:
        for arch in args.models:
            cfg = TrainConfig(
                arch=arch, epochs=args.epochs, batch_size=args.batch, lr=args.lr,
                lr_schedule=args.schedule, loss=args.loss, dice_weight=args.dice_weight,
                augment=args.augment, seed=seed, base_width=args.width, device="cpu",
                cpu_threads=args.threads, checkpoint_every=10**6,
                model_options={"recurrent_steps": 3} if arch == "mr2unet" else {})
            t0, c0 = time.perf_counter(), time.process_time()
            result = train(cfg, train_split, progress=False)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            ev = evaluate(result.model, test_split, torch.device("cpu"), progress=False)
            primary, pooled = summarise(ev.counts, test_split.categories)
            iou = primary["mean"]["iou"]
            collapsed = bool(pooled["collapsed"] or result.collapsed)
            results[arch].append((iou, seconds, collapsed))
            print(f"seed {seed} {arch:15s} IOU {iou:.4f} Dice {primary['mean']['dice']:.4f} "
                  f"train {seconds:6.1f}s ({cpu:6.1f} CPU s) "
                  f"final loss {result.history[-1]['loss']:.4f}"
                  f"{' COLLAPSED' if collapsed else ''}", flush=True)
            if args.json:
                with args.json.open("a") as fh:
                    fh.write(json.dumps({**recipe, "arch": arch, "seed": seed, "iou": iou,
                                         "dice": primary["mean"]["dice"],
                                         "seconds": round(seconds, 1),
                                         "cpu_seconds": round(cpu, 1),
                                         "collapsed": collapsed}) + "\n")
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
