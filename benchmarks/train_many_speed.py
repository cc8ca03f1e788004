"""Several networks trained together in one process against one after another (issue #22).

    PYTHONPATH=src python3 benchmarks/train_many_speed.py --epochs 2          # on the GPU
    python benchmarks/train_many_speed.py --smoke                             # CPU rehearsal

Trains the four networks with params.yaml's committed settings (full width, 128 px,
batch 8) on ``--images`` random images for ``--epochs`` epochs twice in this process:
one after another with :func:`mr2unet.training.loop.train` (what ``dvc repro`` does), and
together with :func:`mr2unet.training.many.train_many` (each on its own CUDA stream;
``mr2unet repro --together``).  Prints the wall times, their ratio, whether the weights
are bit-identical between the two ways, and the paper's protocol (200 epochs of 1006
images) projected from each; ``--json`` writes them.  One untimed epoch of each network
comes first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
from gpucheck.settings import MODELS, PAPER_EPOCHS, PAPER_TRAIN_IMAGES, SMOKE, Sizes, config
from gpucheck.settings import states_equal as compare_states
from train_throughput import random_split

from mr2unet.training.loop import train
from mr2unet.training.many import TrainJob, train_many


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--images", type=int, default=PAPER_TRAIN_IMAGES)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--smoke", action="store_true", help="tiny networks on the CPU")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    sizes = SMOKE if args.smoke else Sizes()
    images = 8 if args.smoke else args.images
    split = random_split(images, sizes.image_size)
    cfgs = [dataclasses.replace(config(arch, sizes), epochs=args.epochs)
            for arch in args.models]
    seconds: dict[str, float] = {}
    for cfg in cfgs:  # warm-up, untimed: kernels, cuDNN/oneDNN plans, the allocator
        train(dataclasses.replace(cfg, epochs=1), split, progress=False)
    _sync()
    t0 = time.perf_counter()
    alone = [train(cfg, split, progress=False) for cfg in cfgs]
    _sync()
    seconds["one_after_another"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    together = train_many([TrainJob(cfg, split) for cfg in cfgs])
    seconds["together"] = time.perf_counter() - t0
    same = {cfg.arch: compare_states(a.model, t.model)[0]
            for cfg, a, t in zip(cfgs, alone, together, strict=True)}
    scale = PAPER_EPOCHS * PAPER_TRAIN_IMAGES / (args.epochs * images)
    report = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__, "models": args.models, "epochs": args.epochs,
        "images": images, "image_size": sizes.image_size, "base_width": sizes.base_width,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "together_speedup": round(seconds["one_after_another"] / seconds["together"], 3),
        "bit_identical": same,
        "projected_protocol_min": {k: round(v * scale / 60, 2) for k, v in seconds.items()},
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
