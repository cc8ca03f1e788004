"""Whole-image prediction against sliding windows for a model trained on crops: ms per image.

    python benchmarks/tile_predict_speed.py                      # 480x320 and 1024x1024
    python benchmarks/tile_predict_speed.py --sizes 544x384 --threads 1 --width 8

For each network (``train.base_width`` ``--width``, MR2U-Net with t = 3, weights as
initialised: the time does not depend on them) and each image size, the median wall time of
defect probabilities for one image (batch 1) predicted

``windows``  by ``--tile`` px windows every ``--tile / 2`` px, mean-blended, ``--windows-per-
             call`` windows a forward pass (evaluate's batch size): the prediction before
             ``prepare.tile_predict``;
``whole``    in one pass over the image padded to a multiple of 16 (``prepare.tile_predict:
             whole``, the default),

through :func:`mr2unet.models.tiling.tile_logits`, the function evaluate, ``mr2unet predict``
and the pyfunc call. Prints one row per network and size with both times and their ratio.
Run it alone on the machine (`flock /tmp/mr2unet-cpu.lock ...` on a shared one).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from mr2unet.config.params import MODEL_NAMES
from mr2unet.models import build_model
from mr2unet.models.inference import defect_probability
from mr2unet.models.tiling import WHOLE, WINDOWS, Tiling, tile_logits, window_starts


def size_arg(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


@torch.inference_mode()
def median_ms(model: torch.nn.Module, x: torch.Tensor, tiling: Tiling, per_call: int,
              repeats: int) -> float:
    defect_probability(tile_logits(model, x, tiling, per_call))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        defect_probability(tile_logits(model, x, tiling, per_call))
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, {args.threads} thread(s), torch "
          f"{torch.__version__}; width {args.width}, {args.tile} px tiles, stride "
          f"{args.tile // 2}; median of {args.repeats}")
    print("| network | image | windows | ms windows | ms whole | windows / whole |")
    print("|---|---|---:|---:|---:|---:|")
    for arch in args.models:
        torch.manual_seed(0)
        options = {"recurrent_steps": 3} if arch == "mr2unet" else {}
        model = build_model(arch, base_width=args.width, **options).eval()
        for width, height in args.sizes:
            x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
            count = (len(window_starts(height, args.tile, args.tile // 2))
                     * len(window_starts(width, args.tile, args.tile // 2)))
            ms = {way: median_ms(model, x, Tiling(args.tile, args.tile // 2, None, way),
                                 args.windows_per_call, args.repeats)
                  for way in (WINDOWS, WHOLE)}
            print(f"| {arch} | {width}x{height} | {count} | {ms[WINDOWS]:.0f} | "
                  f"{ms[WHOLE]:.0f} | {ms[WINDOWS] / ms[WHOLE]:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
