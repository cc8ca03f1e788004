"""Which reading of the MR2U-Net paper decides its rank? (issue #25)

    python benchmarks/mr2unet_ablation.py --jobs 2 --json /tmp/ablation.jsonl \
        --out docs/ablation_table.md
    python benchmarks/mr2unet_ablation.py --table-only --json /tmp/ablation.jsonl

Trains U-Net and each MR2U-Net variant of :data:`VARIANTS` (options of
``train.model_options.mr2unet``) on the real MVTec AD bottle sample and on NEU-Seg
(``../shared``, read as published; ``user_data_recipe.py`` prepares them), for each seed,
with the user-data recipe (``profiles/user-data.yaml``: 64 px, pad, every good image, focal
+ Dice, cosine, Adam 3e-3, batch 4, flips and rotations) at ``--width`` 16 (no MR2U-Net
unit under 3 channels; at the demo's 8 the first unit has 1) and a budget of ``--steps``.
Each training runs in its own process on one thread, ``--jobs`` at a time; the runs are
appended to ``--json`` as they finish, and a rerun skips the runs already there.

The table: per set and variant, parameters and forward GFLOPs (at 64 px, the cost table's
functions), mean test IOU ± sample std over seeds, and the paired comparisons that
``mr2unet spread`` makes (each network's per-image IOU averaged over the seeds, then the
paired bootstrap interval and Wilcoxon test of ``mr2unet.evaluation.stats``) of every
variant against U-Net and of every other variant against the default MR2U-Net, Holm-
adjusted over that family within each set.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from user_data_recipe import prepared

from mr2unet.data.prepare import PrepareConfig
from mr2unet.data.prepared import load_split
from mr2unet.evaluation import stats
from mr2unet.evaluation.cost import model_cost
from mr2unet.evaluation.evaluate import evaluate, good_images, summarise
from mr2unet.metrics.segmentation import iou_from_counts
from mr2unet.models import build_model
from mr2unet.training.loop import TrainConfig, train

# name -> (network, model options, what it reads of the paper or its sources)
VARIANTS: dict[str, tuple[str, dict[str, Any], str]] = {
    "unet": ("unet", {}, "U-Net, the baseline"),
    "mr2unet": ("mr2unet", {}, "MR2U-Net as committed (docs/models.md)"),
    "multiresunet_widths": ("mr2unet", {"width_multiplier": 1.67},
                            "MultiResUNet's 1.67 x widths"),
    "tied_kernels": ("mr2unet", {"recurrent_kernels": "tied"},
                     "one kernel on x + h (R2U-Net's code)"),
    "r2unet_code": ("mr2unet", {"recurrent_kernels": "tied", "step_norms": "shared",
                                "recurrent_steps": 2},
                    "R2U-Net's code: tied kernel, one BN, t = 2"),
    "no_residual_paths": ("mr2unet", {"respath_lengths": [0, 0, 0, 0]},
                          "plain skips instead of residual paths"),
    "shared_norms": ("mr2unet", {"step_norms": "shared"}, "one BN for all steps"),
    "equal_split": ("mr2unet", {"unit_split": [1, 1, 1]}, "units of W/3 each"),
}
DEFAULT_VARIANTS = ("unet", "mr2unet", "multiresunet_widths", "tied_kernels", "r2unet_code",
                    "no_residual_paths")
RECIPE = {"size": 64, "resize": "pad", "good_images": "all", "batch": 4, "lr": 3e-3,
          "schedule": "cosine", "loss": "focal_dice", "augment": "flips_rot90"}


def one_run(work: Path, data_set: str, variant: str, seed: int, width: int, steps: int
            ) -> dict[str, Any]:
    """Train and evaluate one variant on one set for one seed, on one CPU thread."""
    torch.set_num_threads(1)
    arch, options, _ = VARIANTS[variant]
    prep = PrepareConfig(image_size=RECIPE["size"], resize=RECIPE["resize"],
                         good_images=RECIPE["good_images"])
    data = prepared(work, data_set, prep)
    train_split, test_split = load_split(data / "train.npz"), load_split(data / "test.npz")
    cfg = TrainConfig(arch=arch, steps=steps, batch_size=RECIPE["batch"], lr=RECIPE["lr"],
                      lr_schedule=RECIPE["schedule"], loss=RECIPE["loss"],
                      augment=RECIPE["augment"], seed=seed, base_width=width, device="cpu",
                      cpu_threads=1, checkpoint_every=10**6, model_options=dict(options))
    t0, c0 = time.perf_counter(), time.process_time()
    result = train(cfg, train_split, progress=False)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    ev = evaluate(result.model, test_split, torch.device("cpu"), progress=False)
    good = good_images(test_split, data / "manifest.csv")
    primary, pooled = summarise(ev.counts, test_split.categories, good=good)
    keep = ~good if good is not None else np.ones(len(test_split), bool)
    cost = model_cost(build_model(arch, base_width=width, **options), RECIPE["size"])
    return {"set": data_set, "variant": variant, "seed": seed, "width": width,
            "steps": steps, "iou": primary["mean"]["iou"], "dice": primary["mean"]["dice"],
            "collapsed": bool(pooled["collapsed"] or result.collapsed),
            "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
            "parameters": cost["parameters"], "gflops": cost["gflops"],
            "sources": test_split.sources[keep].tolist(),
            "per_image_iou": np.round(iou_from_counts(ev.counts[keep]), 6).tolist()}


def read_runs(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def seed_averaged_iou(runs: Sequence[dict[str, Any]], variant: str, seeds: Sequence[int]
                      ) -> np.ndarray:
    """The variant's per-image IOU averaged over ``seeds`` (same images in the same order)."""
    chosen = sorted((r for r in runs if r["variant"] == variant and r["seed"] in seeds),
                    key=lambda r: r["seed"])
    reference = chosen[0]["sources"]
    if any(r["sources"] != reference for r in chosen):
        raise SystemExit(f"{variant}: the test images differ between seeds")
    return np.mean([r["per_image_iou"] for r in chosen], axis=0)


def _cell(result: stats.PairedResult) -> str:
    if result.mean_diff is None:
        return "n/a"
    ci = (f" [{result.ci_low:+.3f}, {result.ci_high:+.3f}]"
          if result.ci_low is not None and result.ci_high is not None else "")
    p = "n/a" if result.p_holm is None else f"{result.p_holm:.3g}"
    star = "**" if result.p_holm is not None and result.p_holm < stats.ALPHA else ""
    return f"{star}{result.mean_diff:+.4f}{star}{ci}, p {p}"


def set_table(runs: Sequence[dict[str, Any]], data_set: str) -> list[str]:
    """The markdown table of one data set (seeds: those every variant completed)."""
    runs = [r for r in runs if r["set"] == data_set]
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in runs)]
    seed_sets = [{r["seed"] for r in runs if r["variant"] == v} for v in variants]
    seeds = sorted(set.intersection(*seed_sets)) if seed_sets else []
    if not seeds or "unet" not in variants or "mr2unet" not in variants:
        return [f"{data_set}: U-Net and the default MR2U-Net are needed for every seed."]
    iou = {v: seed_averaged_iou(runs, v, seeds) for v in variants}
    family = [(v, base) for base in ("unet", "mr2unet") for v in variants
              if v not in ("unet", base)]
    adjusted = stats.adjust([stats.compare(iou[v], iou[base]) for v, base in family])
    found = {pair: r for pair, r in zip(family, adjusted, strict=True)}
    lines = [f"**{data_set}** (seeds {', '.join(map(str, seeds))}; "
             f"{len(iou['unet'])} defective test images; Holm over {len(family)} comparisons)",
             "", "| variant | reading | parameters | GFLOPs | mean IOU ± std | per seed | "
             "Δ vs U-Net [95 % CI], Holm p | Δ vs MR2U-Net [95 % CI], Holm p | "
             "train CPU s |", "|---|---|---:|---:|---:|---|---|---|---:|"]
    for v in variants:
        mine = sorted((r for r in runs if r["variant"] == v and r["seed"] in seeds),
                      key=lambda r: r["seed"])
        ious = [r["iou"] for r in mine]
        std = statistics.stdev(ious) if len(ious) > 1 else 0.0
        vs_unet = _cell(found[(v, "unet")]) if (v, "unet") in found else "—"
        vs_default = _cell(found[(v, "mr2unet")]) if (v, "mr2unet") in found else "—"
        collapsed = " (collapsed)" if any(r["collapsed"] for r in mine) else ""
        lines.append(
            f"| {v} | {VARIANTS[v][2]} | {mine[0]['parameters']:,} | {mine[0]['gflops']:.3f} | "
            f"{statistics.mean(ious):.4f} ± {std:.4f}{collapsed} | "
            f"{', '.join(f'{x:.4f}' for x in ious)} | {vs_unet} | {vs_default} | "
            f"{statistics.mean(r['cpu_seconds'] for r in mine):.0f} |")
    return lines


def table(runs: Sequence[dict[str, Any]]) -> str:
    sets = sorted({r["set"] for r in runs})
    out = []
    for s in sets:
        out += [*set_table(runs, s), ""]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=["bottle", "neu"], choices=("bottle", "neu"))
    ap.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--jobs", type=int, default=2, help="trainings at a time, one thread each")
    ap.add_argument("--work", type=Path, default=Path("/tmp/user_data_recipe"))
    ap.add_argument("--json", type=Path, default=Path("/tmp/mr2unet_ablation.jsonl"))
    ap.add_argument("--out", type=Path, help="also write the table to this file")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args(argv)

    done = {(r["set"], r["variant"], r["seed"], r["width"], r["steps"])
            for r in read_runs(args.json)}
    todo = [(s, v, seed) for s in args.sets for seed in args.seeds for v in args.variants
            if (s, v, seed, args.width, args.steps) not in done]
    if todo and not args.table_only:
        for s in args.sets:  # prepare once, before the workers race for it
            prepared(args.work, s, PrepareConfig(image_size=RECIPE["size"],
                                                 resize=RECIPE["resize"],
                                                 good_images=RECIPE["good_images"]))
        print(f"{len(todo)} runs to do, {args.jobs} at a time", flush=True)
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(one_run, args.work, s, v, seed, args.width, args.steps)
                       for s, v, seed in todo]
            for future in as_completed(futures):
                run = future.result()
                with args.json.open("a") as fh:
                    fh.write(json.dumps(run) + "\n")
                print(f"{run['set']:6s} {run['variant']:20s} seed {run['seed']} IOU "
                      f"{run['iou']:.4f} ({run['cpu_seconds']:.0f} CPU s)"
                      f"{' COLLAPSED' if run['collapsed'] else ''}", flush=True)
    runs = [r for r in read_runs(args.json)
            if r["width"] == args.width and r["steps"] == args.steps
            and r["variant"] in args.variants and r["seed"] in args.seeds]
    text = (f"width {args.width}, {args.steps} steps, recipe {RECIPE}\n\n" + table(runs))
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
