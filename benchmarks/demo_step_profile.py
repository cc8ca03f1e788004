"""Where a demo training step's CPU time goes, per network, and what the demo's knobs cost.

    python benchmarks/demo_step_profile.py                 # the demo's settings, all networks
    python benchmarks/demo_step_profile.py --profile mr2unet  # + torch.profiler's top ops

Times one forward + backward + Adam step at the demo's size (64 px, base_width 8, batch 8,
2 threads, channels_last) for each network and counts its ATen operator calls, then
MR2U-Net under variations of what the demo feeds it (threads, memory layout, batch size,
image size), as milliseconds per image
and as a ratio to U-Net at the demo's settings measured in the same run.  The ratios are
what carries over between machines; the milliseconds do not (docs/performance.md).

    python benchmarks/demo_step_profile.py --versus-plain   # ours against the plain loop

profiles a training epoch of our loop (:func:`mr2unet.training.loop.train`, 2 steps, its
set-up included) and one of the plain loop (``train_throughput.PlainLoop``) per network,
at the throughput benchmark's settings (128 px, ``ce``, no augmentation, PyTorch's thread
count; ``--threads N`` to change it) and at the demo's (48 px, ``ce_dice``, flips and
rotations, fused Adam, deterministic, 1 thread).  It prints each loop's self CPU time per
step, the operators where the two differ most, and a step's NCHW/NHWC time ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from mr2unet.config.params import MODEL_NAMES
from mr2unet.models import build_model
from mr2unet.training.loop import TrainConfig, train

DEFAULT_THREADS = torch.get_num_threads()  # PyTorch's, before a run pins another count
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

    ms = median_ms(step, repeats)
    if profile:
        print(profile_table(step))
    return ms / batch


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in milliseconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def profile_table(step: Callable[[], None], steps: int = 3) -> str:
    """torch.profiler's top ops (self CPU time) over ``steps`` training steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)


def aten_calls_per_step(arch: str) -> float:
    """How many ATen operator calls one demo training step makes (the overhead count)."""

    torch.set_num_threads(1)
    model = build_model(arch, base_width=DEMO["width"])
    x = torch.rand(DEMO["batch"], 3, DEMO["size"], DEMO["size"])
    y = (torch.rand(DEMO["batch"], DEMO["size"], DEMO["size"]) > 0.9).long()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return float(op_counts(step)["aten_ops"])


def op_counts(step: Callable[[], None]) -> dict[str, int]:
    """One ``step`` under torch.profiler: its ATen operator calls, convolutions among them,
    and (on CUDA) the GPU kernels it launched."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    events = prof.key_averages()
    # every ATen call the profiler records (an op's internal calls included)
    return {"aten_ops": sum(e.count for e in events if e.key.startswith("aten::")),
            "convolutions": sum(e.count for e in events if e.key == "aten::convolution"),
            "kernels": sum(e.count for e in prof.events()
                           if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA)}


# Our loop's settings in the two profiles of --versus-plain (the plain loop has none).
VERSUS = {
    "benchmark": (128, TrainConfig(arch="unet", batch_size=8, lr=1e-4, base_width=8,
                                   device="cpu", deterministic=False)),
    "demo": (48, TrainConfig(arch="unet", batch_size=8, lr=3e-3, base_width=8, device="cpu",
                             lr_schedule="cosine", loss="ce_dice", augment="flips_rot90",
                             adam_impl="fused", cpu_threads=1)),
}


def self_ms_per_step(run: Callable[[], None], steps: int) -> dict[str, float]:
    """Self CPU milliseconds per op and per step of ``run`` (after one unprofiled run)."""
    from torch.profiler import ProfilerActivity, profile

    run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    return {e.key: e.self_cpu_time_total / 1000 / steps for e in prof.key_averages()}


def versus_plain(arch: str, profile_name: str, threads: int | None = None, images: int = 16,
                 rows: int = 6) -> str:
    """One network's per-step self time, ours against the plain loop, and the top differences
    (``threads``: instead of the profile's own count)."""
    from train_throughput import PlainLoop, random_split, write_pngs

    size, cfg = VERSUS[profile_name]
    threads = threads or cfg.cpu_threads or DEFAULT_THREADS
    cfg = dataclasses.replace(cfg, arch=arch, epochs=1, cpu_threads=threads)
    split = random_split(images, size)
    steps = -(-images // cfg.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        write_pngs(split, Path(tmp))
        ours = self_ms_per_step(lambda: train(cfg, split, progress=False), steps)
        plain_loop = PlainLoop(cfg, Path(tmp), images)
        plain = self_ms_per_step(plain_loop.epoch, steps)
    total_o, total_p = sum(ours.values()), sum(plain.values())
    # The layout rule (train.channels_last: auto, NHWC on the CPU), measured again here.
    layouts = [step_ms_per_image(arch, size, cfg.base_width, cfg.batch_size, threads, cl,
                                 repeats=6) for cl in (True, False)]
    lines = [f"{arch} at {profile_name} ({size} px, {threads} threads): ours {total_o:.1f} ms, "
             f"plain {total_p:.1f} ms self CPU per step (plain/ours {total_p / total_o:.2f}); "
             f"a step in NCHW takes {layouts[1] / layouts[0]:.2f}x its NHWC time"]
    for key in sorted(set(ours) | set(plain),
                      key=lambda k: -abs(ours.get(k, 0.0) - plain.get(k, 0.0)))[:rows]:
        o, p = ours.get(key, 0.0), plain.get(key, 0.0)
        lines.append(f"    {key[:38]:38s} ours {o:8.2f}  plain {p:8.2f}  diff {o - p:+8.2f} ms")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=MODEL_NAMES, default=None,
                        help="also print torch.profiler's top ops for this network")
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--versus-plain", nargs="*", choices=list(VERSUS), default=None,
                        help="profile ours against the plain loop per network, at these "
                             "settings (default: both) instead")
    parser.add_argument("--threads", type=int, default=None,
                        help="with --versus-plain: CPU threads instead of each profile's own")
    args = parser.parse_args()
    if args.versus_plain is not None:
        for name in args.versus_plain or list(VERSUS):
            for arch in MODEL_NAMES:
                print(versus_plain(arch, name, args.threads), flush=True)
        return

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
