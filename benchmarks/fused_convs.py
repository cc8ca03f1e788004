"""MR2U-Net's fused formulation (``train.fused_convs``) against the reference, per step.

    python benchmarks/fused_convs.py                      # CPU, the demo's and two wider sizes
    python benchmarks/fused_convs.py --device cuda --sizes 128:64:8

For each ``size:width:batch`` it builds MR2U-Net, runs one forward + backward + Adam step
under torch.profiler with the reference formulation and with
:func:`mr2unet.models.mr2unet.fuse_convolutions` (ATen calls, convolutions, CUDA kernels),
then times the two alternately (``--repeats`` rounds of a few steps each, median) and
prints fused / reference as a ratio measured in the same run: the ratio carries over
between machines, the milliseconds do not.  Channels-last, fp32 (bf16 autocast on CUDA),
``--threads`` CPU threads.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from demo_step_profile import op_counts

from mr2unet.models import build_model
from mr2unet.models.mr2unet import fuse_convolutions


def make_step(size: int, width: int, batch: int, device: torch.device, fused: bool
              ) -> Callable[[], None]:
    torch.manual_seed(0)
    model = build_model("mr2unet", base_width=width).to(device)
    model = model.to(memory_format=torch.channels_last)
    fuse_convolutions(model, fused)
    x = torch.rand(batch, 3, size, size, device=device).contiguous(
        memory_format=torch.channels_last)
    y = (torch.rand(batch, size, size, device=device) > 0.9).long()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    amp = torch.bfloat16 if device.type == "cuda" else None

    def step() -> None:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def timed(step: Callable[[], None], steps: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["48:8:8", "64:16:4", "128:8:8"],
                    help="size:width:batch of each measurement")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="steps per timed round")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"MR2U-Net, {device}, {args.threads} thread(s); per training step")
    print("| size:width:batch | ATen ops ref / fused | convolutions ref / fused | "
          "CUDA kernels ref / fused | ms ref | ms fused | fused / ref |")
    print("|---|---|---|---|---:|---:|---:|")
    for spec in args.sizes:
        size, width, batch = (int(v) for v in spec.split(":"))
        steps = {f: make_step(size, width, batch, device, f) for f in (False, True)}
        for step in steps.values():
            step()  # warm-up (allocator, oneDNN/cuDNN primitives)
        counts = {f: op_counts(step) for f, step in steps.items()}
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):  # alternate, so that load changes hit both alike
            for fused, step in steps.items():
                times[fused].append(timed(step, args.steps, device))
        ref, fus = (1000 * statistics.median(times[f]) for f in (False, True))
        print(f"| {spec} | {counts[False]['aten_ops']} / {counts[True]['aten_ops']} | "
              f"{counts[False]['convolutions']} / {counts[True]['convolutions']} | "
              f"{counts[False]['kernels']} / {counts[True]['kernels']} | "
              f"{ref:.1f} | {fus:.1f} | {fus / ref:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
