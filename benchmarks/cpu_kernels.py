"""The CPU kernel routes of ``mr2unet.models.kernels`` against PyTorch's own choices.

    python benchmarks/cpu_kernels.py              # all three parts, 1 thread
    python benchmarks/cpu_kernels.py --parts step --sizes 48

Three measurements, each as the routed time over PyTorch's own in the same run (the
ratios carry over between machines of a kind; the milliseconds do not):

* ``norms``: one BatchNorm forward + backward on a channels-last batch of 8, per channel
  count, directly and as an NCHW copy (:class:`~mr2unet.models.kernels.BatchNorm2d`'s
  route, forced here for every count) at ``--threads``; the counts under 1.0 are
  :data:`~mr2unet.models.kernels.NARROW_NORM_CHANNELS` for that thread count;
* ``convs``: a 1×1 convolution's forward + backward on channels-last input, PyTorch's
  choice (im2col on one thread) against oneDNN (the dilated route);
* ``step``: a whole training step (forward, cross-entropy, backward, Adam) of each
  network at base_width 8, channels-last, the routes on against off, two copies of the
  network stepped alternately so that a load that comes and goes hits both;
* ``adam``: Adam's step alone after each network's training step (``--batch``, routes
  on), PyTorch's per-tensor loop on the CPU against ``foreach`` (``run.adam_impl: auto``),
  two copies stepped alternately on the same batch; the weights of the two are compared
  bit for bit at the end;
* ``bf16``: the whole training step (``--batch``, routes on) in fp32 against bf16
  autocast (``run.precision: bf16``), alternately.

    python benchmarks/cpu_kernels.py --parts adam bf16 --sizes 64 --batch 4
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mr2unet.models import MODEL_NAMES, build_model
from mr2unet.models.kernels import narrow_norms_in_nchw, onednn_1x1_convs


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

CL = torch.channels_last


def norm_ms(channels: int, size: int, repeats: int, via_nchw: bool) -> float:
    """One BatchNorm forward + backward on a channels-last batch of 8, directly or as the
    NCHW copy that BatchNorm2d's route takes (forced here for every channel count)."""
    norm = nn.BatchNorm2d(channels)
    x = torch.rand(8, channels, size, size).contiguous(memory_format=CL).requires_grad_()
    grad = torch.rand(8, channels, size, size).contiguous(memory_format=CL)

    def once() -> None:
        y = norm(x.contiguous()).contiguous(memory_format=CL) if via_nchw else norm(x)
        y.backward(grad)

    return median_ms(once, repeats)


def norms(size: int, repeats: int) -> None:
    print(f"BatchNorm fwd+bwd, batch 8, {size} px, channels-last: direct vs NCHW copy")
    for channels in (1, 2, 3, 4, 5, 6, 8, 11, 16, 32):
        direct = norm_ms(channels, size, repeats, via_nchw=False)
        routed = norm_ms(channels, size, repeats, via_nchw=True)
        print(f"  {channels:3d} channels  direct {direct:7.2f} ms  via NCHW {routed:7.2f} ms  "
              f"ratio {routed / direct:.2f}")


def conv_ms(cin: int, cout: int, size: int, repeats: int, onednn: bool) -> float:
    """A 1x1 convolution's forward + backward on a channels-last batch of 8."""
    conv = nn.Conv2d(cin, cout, 1, bias=False).to(memory_format=CL)
    onednn_1x1_convs(conv, onednn)
    x = torch.rand(8, cin, size, size).contiguous(memory_format=CL).requires_grad_()
    return median_ms(lambda: conv(x).sum().backward(), repeats)


def convs(size: int, repeats: int) -> None:
    print(f"1x1 convolution fwd+bwd, batch 8, {size} px, channels-last: "
          f"PyTorch's choice vs oneDNN")
    for cin, cout in ((3, 8), (8, 8), (24, 8), (8, 2), (16, 16), (48, 16)):
        own = conv_ms(cin, cout, size, repeats, onednn=False)
        routed = conv_ms(cin, cout, size, repeats, onednn=True)
        print(f"  {cin:3d} -> {cout:3d}  PyTorch {own:7.2f} ms  oneDNN {routed:7.2f} ms  "
              f"ratio {routed / own:.2f}")


def stepper(arch: str, size: int, routed: bool, batch: int = 8, bf16: bool = False,
            foreach: bool = False) -> tuple[Callable[[], tuple[float, float]], nn.Module]:
    """A training step of a fresh ``arch`` (seed 0, the same batch every call) that returns
    its seconds and those of ``optimizer.step()`` alone; and the network."""
    torch.manual_seed(0)
    model = build_model(arch, base_width=8).to(memory_format=CL)
    narrow_norms_in_nchw(model, routed)
    onednn_1x1_convs(model, routed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=foreach)
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 3, size, size, generator=generator).contiguous(memory_format=CL)
    y = (torch.rand(batch, size, size, generator=generator) > 0.9).long()

    def step() -> tuple[float, float]:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        adam = time.perf_counter()
        optimizer.step()
        end = time.perf_counter()
        return end - start, end - adam

    return step, model


def alternate(a: Callable[[], tuple[float, float]], b: Callable[[], tuple[float, float]],
              repeats: int, part: int) -> tuple[float, float, float]:
    """Medians of ``a``'s and ``b``'s times (``part`` 0: the step, 1: Adam alone), stepped
    alternately after two untimed rounds, and the median of their ratios b / a."""
    for _ in range(2):
        a(), b()
    pairs = [(a()[part], b()[part]) for _ in range(repeats)]
    return (statistics.median(t for t, _ in pairs), statistics.median(t for _, t in pairs),
            statistics.median(t / u for u, t in pairs))


def steps(size: int, repeats: int, models: list[str]) -> None:
    print(f"training step, batch 8, {size} px, base_width 8, channels-last: "
          f"routes off vs on (alternating)")
    for arch in models:
        off, on, ratio = alternate(stepper(arch, size, False)[0], stepper(arch, size, True)[0],
                                   repeats, 0)
        print(f"  {arch:15s} off {off * 1000:7.1f} ms  on {on * 1000:7.1f} ms  "
              f"ratio {ratio:.3f}", flush=True)


def adam(size: int, batch: int, repeats: int, models: list[str]) -> None:
    print(f"Adam's step, batch {batch}, {size} px, base_width 8: per-tensor loop vs foreach "
          f"(alternating; weights compared after {repeats + 2} steps each)")
    for arch in models:
        (loop, loop_net), (listed, listed_net) = (stepper(arch, size, True, batch, foreach=f)
                                                  for f in (False, True))
        a, b, ratio = alternate(loop, listed, repeats, 1)
        same = all(torch.equal(p, q) for p, q in zip(loop_net.state_dict().values(),
                                                      listed_net.state_dict().values(),
                                                      strict=True))
        print(f"  {arch:15s} loop {a * 1000:6.2f} ms  foreach {b * 1000:6.2f} ms  "
              f"ratio {ratio:.3f}  weights {'bit-identical' if same else 'DIFFER'}",
              flush=True)


def bf16(size: int, batch: int, repeats: int, models: list[str]) -> None:
    print(f"training step, batch {batch}, {size} px, base_width 8: fp32 vs bf16 autocast "
          f"(alternating)")
    for arch in models:
        a, b, ratio = alternate(stepper(arch, size, True, batch)[0],
                                stepper(arch, size, True, batch, bf16=True)[0], repeats, 0)
        print(f"  {arch:15s} fp32 {a * 1000:7.1f} ms  bf16 {b * 1000:7.1f} ms  "
              f"ratio {ratio:.3f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=("norms", "convs", "step", "adam", "bf16"),
                        default=["norms", "convs", "step"])
    parser.add_argument("--batch", type=int, default=8, help="the adam and bf16 parts' batch")
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 48])
    parser.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    for size in args.sizes:
        if "norms" in args.parts:
            norms(size, args.repeats)
        if "convs" in args.parts:
            convs(size, args.repeats)
        if "step" in args.parts:
            steps(size, args.repeats, args.models)
        if "adam" in args.parts:
            adam(size, args.batch, args.repeats, args.models)
        if "bf16" in args.parts:
            bf16(size, args.batch, args.repeats, args.models)


if __name__ == "__main__":
    main()
