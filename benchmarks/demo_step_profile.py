"""Where a demo training step's CPU time goes, per network, and what the demo's knobs cost.

    python benchmarks/demo_step_profile.py                 # the demo's settings, all networks
    python benchmarks/demo_step_profile.py --profile mr2unet  # + torch.profiler's top ops

Times one forward + backward + Adam step at the demo's size (64 px, base_width 8, batch 8,
2 threads, channels_last) for each network and counts its ATen operator calls, then
MR2U-Net under variations of what the demo feeds it (threads, memory layout, batch size,
image size), as milliseconds per image
and as a ratio to U-Net at the demo's settings measured in the same run.  The ratios are
what carries over between machines; the milliseconds do not (docs/performance.md).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mr2unet.config.params import MODEL_NAMES
from mr2unet.models import build_model

DEMO = {"size": 64, "width": 8, "batch": 8, "threads": 2, "channels_last": True}


def step_ms_per_image(arch: str, size: int, width: int, batch: int, threads: int,
                      channels_last: bool, repeats: int = 12, profile: bool = False) -> float:
    """Median wall time of one training step, divided by the batch size."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(arch, base_width=width)
    x = torch.rand(batch, 3, size, size)
    y = (torch.rand(batch, size, size) > 0.9).long()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    if profile:
        print(profile_table(step))
    return 1000 * statistics.median(times) / batch


def profile_table(step: Callable[[], None], steps: int = 3) -> str:
    """torch.profiler's top ops (self CPU time) over ``steps`` training steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)


def aten_calls_per_step(arch: str) -> float:
    """How many ATen operator calls one demo training step makes (the overhead count)."""
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    model = build_model(arch, base_width=DEMO["width"])
    x = torch.rand(DEMO["batch"], 3, DEMO["size"], DEMO["size"])
    y = (torch.rand(DEMO["batch"], DEMO["size"], DEMO["size"]) > 0.9).long()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    # top-level ATen calls only (an op's internal calls are not extra dispatch overhead)
    return float(sum(e.count for e in prof.key_averages() if e.key.startswith("aten::")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=MODEL_NAMES, default=None,
                        help="also print torch.profiler's top ops for this network")
    parser.add_argument("--repeats", type=int, default=12)
    args = parser.parse_args()

    base = step_ms_per_image("unet", **DEMO, repeats=args.repeats)
    print(f"demo settings {DEMO}; ratio = ms/image over U-Net's at the demo settings "
          f"({base:.2f} ms/image)")
    for arch in MODEL_NAMES:
        ms = step_ms_per_image(arch, **DEMO, repeats=args.repeats,
                               profile=arch == args.profile)
        print(f"  {arch:15s} {ms:7.2f} ms/image  x{ms / base:.2f}  "
              f"{aten_calls_per_step(arch):6.0f} ATen calls per step")
    variations = {
        "1 thread": {"threads": 1},
        "batch 4 (as before)": {"batch": 4},
        "contiguous (NCHW)": {"channels_last": False},
        "batch 16": {"batch": 16},
        "48 px": {"size": 48},
        "32 px": {"size": 32},
    }
    print("MR2U-Net, one knob changed from the demo's settings:")
    for label, change in variations.items():
        ms = step_ms_per_image("mr2unet", **{**DEMO, **change}, repeats=args.repeats)
        print(f"  {label:20s} {ms:7.2f} ms/image  x{ms / base:.2f}")


if __name__ == "__main__":
    main()
