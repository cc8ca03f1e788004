"""Whole-image prediction against sliding windows for a model trained on crops: ms per image.

    python benchmarks/tile_predict_speed.py                      # 480x320 and 1024x1024
    python benchmarks/tile_predict_speed.py --sizes 544x384 --threads 1 --width 8
    python benchmarks/tile_predict_speed.py --json benchmarks/results/tile_predict_speed.json
    python benchmarks/tile_predict_speed.py --agreement MODELS_DIR deepcrack/test_img

For each network (``train.base_width`` ``--width``, MR2U-Net with t = 3, weights as
initialised: the time does not depend on them) and each image size, the median wall time of
defect probabilities for one image (batch 1) predicted

``windows``  by ``--tile`` px windows every ``--tile / 2`` px, mean-blended, ``--windows-per-
             call`` windows a forward pass (evaluate's batch size): the prediction before
             ``prepare.tile_predict``;
``whole``    in one NCHW pass over the image padded to a multiple of 16 (``prepare.
             tile_predict: whole``);
``blocks``   in channels-last blocks of at most 512 px with a 32 px margin
             (``prepare.tile_predict: blocks``, the default; one block up to 512 px a side),

through :func:`mr2unet.models.tiling.tile_logits`, the function evaluate, ``mr2unet predict``
and the pyfunc call. The three ways take turns within each repeat (a load that comes and
goes on a shared machine hits them alike). Prints one row per network and size with the
times, the ratios to the windows and the minor page faults per image (the cost of fresh
large allocations that makes the one pass slow on big images, see tiling.py), and the
largest logit difference between blocks and the one pass.
Run it alone on the machine (`flock /tmp/mr2unet-cpu.lock ...` on a shared one).

``--agreement MODELS IMAGES`` instead compares the masks of trained networks (state dicts
``MODELS/<network>_0.pt`` of width ``--width``, e.g. the DeepCrack recipe's) by blocks and
by the one pass: the first 16 images of ``IMAGES`` (``*.jpg`` with ``*.png`` labels in the
sibling ``*_lab`` folder, DeepCrack's layout) as four 2 x 2 mosaics (768 x 1088 for
DeepCrack: 2 x 3 blocks), the mask IOU between the two ways and each way's IOU against
the labels.

``--strides MODEL... --split TEST_NPZ`` instead scores trained networks' windows at
several steps (``--steps``, default 32 48 64: half a crop, the default three quarters, no
overlap) and by blocks: the prepared split's mean IOU at 0.5 (as evaluate scores it,
padding left out) and the seconds to predict it, through
:func:`mr2unet.evaluation.inference.predict_maps`. A MODEL is a pipeline model file
(``data/models/<network>.pt``) or a state dict named ``<network>_<seed>.pt`` of width
``--width`` (the recipe benchmark's ``--save``).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mr2unet.data.prepared import load_split
from mr2unet.data.transforms import to_input
from mr2unet.evaluation import threshold as thresholds
from mr2unet.evaluation.inference import predict_maps
from mr2unet.models import MODEL_NAMES, build_model
from mr2unet.models.checkpoint import load_model
from mr2unet.models.inference import defect_probability
from mr2unet.models.tiling import (
    BLOCKS,
    WHOLE,
    WINDOWS,
    Tiling,
    default_stride,
    tile_logits,
    window_starts,
)

WAYS = (WINDOWS, WHOLE, BLOCKS)


def size_arg(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def cpu_name() -> str:
    """The CPU's model name (what `lscpu | grep 'Model name'` shows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@torch.inference_mode()
def measure(model: torch.nn.Module, x: torch.Tensor, tilings: dict[str, Tiling], per_call: int,
            repeats: int) -> dict[str, dict[str, float]]:
    """Median ms and mean minor page faults per image of each way, taking turns."""
    times: dict[str, list[float]] = {way: [] for way in tilings}
    faults = dict.fromkeys(tilings, 0)
    for tiling in tilings.values():  # warm-up
        defect_probability(tile_logits(model, x, tiling, per_call))
    for _ in range(repeats):
        for way, tiling in tilings.items():
            before, start = minor_faults(), time.perf_counter()
            defect_probability(tile_logits(model, x, tiling, per_call))
            times[way].append(time.perf_counter() - start)
            faults[way] += minor_faults() - before
    return {way: {"ms": statistics.median(times[way]) * 1e3, "faults": faults[way] / repeats}
            for way in tilings}


@torch.inference_mode()
def blocks_deviation(model: torch.nn.Module, x: torch.Tensor, tilings: dict[str, Tiling]
                     ) -> float:
    """The largest |logit| difference between blocks and the one pass."""
    return float((tile_logits(model, x, tilings[BLOCKS])
                  - tile_logits(model, x, tilings[WHOLE])).abs().max())


def mosaics(images: Path, count: int = 16) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` images of ``images`` and their labels as 2 x 2 mosaics (RGB, bool)."""
    files = sorted(images.glob("*.jpg"))[:count]
    rgb = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    labels = [np.asarray(Image.open(images.parent / images.name.replace("_img", "_lab")
                                    / f"{f.stem}.png").convert("L")) > 127 for f in files]

    def tile(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([np.concatenate(parts[:2], 1), np.concatenate(parts[2:], 1)])
    return [(tile(rgb[i:i + 4]), tile(labels[i:i + 4])) for i in range(0, len(files) - 3, 4)]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def load_network(path: Path, width: int) -> tuple[str, torch.nn.Module]:
    """(name, network in eval mode) of a model file or a ``<network>_<seed>.pt`` state dict."""
    if path.stem in MODEL_NAMES:
        return path.stem, load_model(path)[0].eval()
    arch = path.stem.rsplit("_", 1)[0]
    model = build_model(arch, base_width=width)
    model.load_state_dict(torch.load(path, map_location="cpu"))
    return path.stem, model.eval()


@torch.inference_mode()
def agreement(models: Path, images: Path, archs: list[str], width: int) -> None:
    """Print, per network, the mask IOU blocks vs the one pass and both against labels."""
    pairs = mosaics(images)
    truth = np.stack([label for _, label in pairs])
    print(f"{len(pairs)} mosaics of {pairs[0][0].shape[1]}x{pairs[0][0].shape[0]} from "
          f"{images}\n| network | IOU whole | IOU blocks | blocks vs whole (mask IOU) |\n"
          "|---|---:|---:|---:|")
    for arch in archs:
        model = load_network(models / f"{arch}_0.pt", width)[1]
        masks: dict[str, list[np.ndarray]] = {WHOLE: [], BLOCKS: []}
        for rgb, _ in pairs:
            x = to_input(torch.from_numpy(np.ascontiguousarray(rgb))[None])
            for way in masks:
                logits = tile_logits(model, x, Tiling(64, 32, None, way))
                masks[way].append((logits[0, 1] > logits[0, 0]).numpy())
        whole, blocks = np.stack(masks[WHOLE]), np.stack(masks[BLOCKS])
        print(f"| {arch} | {iou(whole, truth):.4f} | {iou(blocks, truth):.4f} | "
              f"{iou(blocks, whole):.4f} |", flush=True)


def strides(paths: list[Path], split: Path, steps: list[int], tile: int, width: int) -> None:
    """Print, per network, the split's mean IOU and seconds by blocks and by windows."""
    test = load_split(split)
    print(f"{len(test)} images of {split}; {tile} px tiles, IOU at 0.5, seconds to predict\n"
          "| network | way | step | mean IOU | s |\n|---|---|---:|---:|---:|")
    for path in paths:
        name, model = load_network(path, width)
        for way, step in [(BLOCKS, default_stride(tile))] + [(WINDOWS, s) for s in steps]:
            start = time.perf_counter()
            _, maps = predict_maps(model, test.images, torch.device("cpu"), progress=False,
                                   tiling=Tiling(tile, step, None, way), masks=test.masks)
            seconds = time.perf_counter() - start
            score = thresholds.mean_iou(maps, test.masks, test.categories, 0.5)
            print(f"| {name} | {way} | {step if way == WINDOWS else ''} | {score:.4f} | "
                  f"{seconds:.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", type=size_arg, default=[(480, 320), (1024, 1024)],
                    help="WIDTHxHEIGHT (default 480x320 1024x1024)")
    ap.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    ap.add_argument("--width", type=int, default=8, help="base width (the user-data recipe's)")
    ap.add_argument("--tile", type=int, default=64, help="crop size (prepare.image_size)")
    ap.add_argument("--windows-per-call", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--agreement", nargs=2, type=Path, metavar=("MODELS", "IMAGES"),
                    help="compare trained networks' masks by blocks and whole instead")
    ap.add_argument("--strides", nargs="+", type=Path, metavar="MODEL",
                    help="score trained networks' windows at --steps on --split instead")
    ap.add_argument("--split", type=Path, help="--strides: a prepared split (test.npz)")
    ap.add_argument("--steps", nargs="+", type=int, default=[32, 48, 64])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.strides:
        if not args.split:
            ap.error("--strides needs --split (a prepared test.npz)")
        strides(args.strides, args.split, args.steps, args.tile, args.width)
        return
    if args.agreement:
        agreement(*args.agreement, args.models, args.width)
        return
    setup = {"cpu": cpu_name(), "threads": args.threads, "torch": torch.__version__,
             "width": args.width, "tile": args.tile, "stride": args.tile // 2,
             "windows_per_call": args.windows_per_call, "repeats": args.repeats}
    print(f"{setup['cpu']}, {args.threads} thread(s), torch {torch.__version__}; width "
          f"{args.width}, {args.tile} px tiles, stride {args.tile // 2}; median of "
          f"{args.repeats}, the ways taking turns")
    print("| network | image | windows | ms windows | ms whole | ms blocks | windows / whole "
          "| windows / blocks | page faults whole / blocks | max logit diff |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for arch in args.models:
        torch.manual_seed(0)
        options = {"recurrent_steps": 3} if arch == "mr2unet" else {}
        model = build_model(arch, base_width=args.width, **options).eval()
        for width, height in args.sizes:
            x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
            count = (len(window_starts(height, args.tile, args.tile // 2))
                     * len(window_starts(width, args.tile, args.tile // 2)))
            tilings = {way: Tiling(args.tile, args.tile // 2, None, way) for way in WAYS}
            got = measure(model, x, tilings, args.windows_per_call, args.repeats)
            diff = blocks_deviation(model, x, tilings)
            ms = {way: got[way]["ms"] for way in WAYS}
            rows.append({"network": arch, "width": width, "height": height, "windows": count,
                         "ms": ms, "page_faults": {w: got[w]["faults"] for w in WAYS},
                         "windows_over_whole": ms[WINDOWS] / ms[WHOLE],
                         "windows_over_blocks": ms[WINDOWS] / ms[BLOCKS],
                         "blocks_max_logit_diff": diff})
            print(f"| {arch} | {width}x{height} | {count} | {ms[WINDOWS]:.0f} | "
                  f"{ms[WHOLE]:.0f} | {ms[BLOCKS]:.0f} | {ms[WINDOWS] / ms[WHOLE]:.1f}x | "
                  f"{ms[WINDOWS] / ms[BLOCKS]:.1f}x | {got[WHOLE]['faults']:.0f} / "
                  f"{got[BLOCKS]['faults']:.0f} | {diff:.1e} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"setup": setup, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
