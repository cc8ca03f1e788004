"""Size and cost of the four networks, written into docs/models.md.

    python benchmarks/model_summary.py            # parameters + FLOPs (full size), rewrites docs
    python benchmarks/model_summary.py --timing   # also CPU fwd+bwd time at the demo width

The size table: parameters and forward FLOPs of the full-size networks (``base_width``
64, 3 -> 2 channels) for one 3x128x128 image, beside the counts of public reference
implementations.  FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``
(convolutions and matrix products; a multiply-add is 2 FLOPs, so MACs = FLOPs / 2;
BN, ReLU, pooling and up-sampling are not counted), with the functions of
``mr2unet.evaluation.cost`` that `evaluate` uses for the report's cost table.

The timing table (``--timing``): one training step (forward, cross-entropy, backward) on
a batch of 8 images of 128x128 at ``base_width`` 8, the best of ``--repeats`` timed steps
after two warm-up steps, on ``--threads`` CPU threads (default 1), in the default (NCHW)
and channels-last memory formats.  It reports the process's CPU time per step beside the
wall time: with one thread the CPU time is close to the step's cost on an idle core even
when other jobs share the machine, while the wall time is not.

Each table is printed and replaced between its markers in docs/models.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mr2unet.evaluation.cost import count_parameters, forward_flops
from mr2unet.models import MODEL_NAMES, build_model

DOC = Path(__file__).resolve().parents[1] / "docs" / "models.md"
SIZE_MARKERS = ("<!-- model-table:start -->", "<!-- model-table:end -->")
TIMING_MARKERS = ("<!-- model-timing:start -->", "<!-- model-timing:end -->")

# Parameter counts of public implementations with 3 input and 2 output channels (derived
# from their layer definitions), and why ours differ.  docs/models.md has the details.
REFERENCE = {
    "unet": ("34,527,106 (LeeJunHyun/Image_Segmentation `U_Net`)",
             "same layers; theirs has a bias on every convolution before BN (+6,848)"),
    "resunet": ("13,043,074 (rishikksh20/ResUnet); Zhang et al. report 7.8 M",
                "Zhang's decoder (plain up-sampling) and 1x1 shortcuts; the reference "
                "uses transposed-conv up-sampling and 3x3 shortcuts"),
    "attention_unet": ("34,878,638 (LeeJunHyun/Image_Segmentation `AttU_Net`)",
                       "same layers; biases before BN, as for U-Net (+7,812)"),
    "mr2unet": ("about 7.3 M (MultiResUNet, Ibtehaz & Rahman: 7.26 M)",
                "U-Net's widths 64-1024 instead of 1.67 x 32-512, and a recurrent 3x3 "
                "kernel per unit (6.1 M of ours)"),
}


def size_table(size: int = 128) -> str:
    lines = [f"| model | parameters | reference implementation | why ours differs | "
             f"GFLOPs (forward, 1×3×{size}×{size}) | GMACs |",
             "|---|---:|---|---|---:|---:|"]
    for name in MODEL_NAMES:
        torch.manual_seed(0)
        model = build_model(name)
        params, flops = count_parameters(model), forward_flops(model, size)
        reference, reason = REFERENCE[name]
        lines.append(f"| {name} | {params:,} | {reference} | {reason} | "
                     f"{flops / 1e9:.2f} | {flops / 2e9:.2f} |")
    return "\n".join(lines)


def step_time(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
              repeats: int) -> tuple[float, float]:
    """Best wall and best CPU time of ``repeats`` training steps (forward, loss, backward),
    in seconds."""
    def step() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    step()
    step()  # warm-up: allocator, oneDNN primitive caches
    wall = cpu = float("inf")
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        step()
        wall = min(wall, time.perf_counter() - start_wall)
        cpu = min(cpu, time.process_time() - start_cpu)
    return wall, cpu


def timing_table(threads: int, repeats: int, batch: int = 8, size: int = 128,
                 base_width: int = 8) -> str:
    load = os.getloadavg()[0]
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=gen)
    y = (torch.rand(batch, size, size, generator=gen) > 0.9).long()
    rows, baseline = [], None
    for name in MODEL_NAMES:
        torch.manual_seed(0)
        model = build_model(name, base_width=base_width).train()
        wall, cpu = step_time(model, x, y, repeats)
        model = model.to(memory_format=torch.channels_last)
        cl_wall, cl_cpu = step_time(model, x.contiguous(memory_format=torch.channels_last), y,
                                    repeats)
        baseline = baseline or cpu
        rows.append(f"| {name} | {count_parameters(model):,} | {cpu * 1e3:.0f} | "
                    f"{cpu / baseline:.1f}× | {wall * 1e3:.0f} | {cl_cpu * 1e3:.0f} | "
                    f"{cl_wall * 1e3:.0f} |")
    header = [f"Training step (forward + backward), batch {batch}×3×{size}×{size}, "
              f"`base_width` {base_width}, {threads} thread(s), best of {repeats}; "
              f"torch {torch.__version__}, {platform.machine()}, "
              f"{os.cpu_count()} CPUs, load average {load:.1f} at the start.",
              "",
              "| model | parameters | CPU ms (NCHW) | vs U-Net | wall ms (NCHW) | "
              "CPU ms (channels-last) | wall ms (channels-last) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    return "\n".join(header + rows)


def replace_between(text: str, markers: tuple[str, str], body: str) -> str:
    start, end = markers
    pattern = re.compile(f"{re.escape(start)}.*?{re.escape(end)}", flags=re.S)
    if not pattern.search(text):
        raise SystemExit(f"{DOC} has no {start} ... {end} markers")
    return pattern.sub(lambda _: f"{start}\n{body}\n{end}", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timing", action="store_true", help="also time a training step")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    text = DOC.read_text()
    table = size_table()
    print(table)
    text = replace_between(text, SIZE_MARKERS, table)
    if args.timing:
        timing = timing_table(args.threads, args.repeats)
        print()
        print(timing)
        text = replace_between(text, TIMING_MARKERS, timing)
    if not args.no_write:
        DOC.write_text(text)
        print(f"updated {DOC}")


if __name__ == "__main__":
    main()
