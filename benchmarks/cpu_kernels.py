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
  network stepped alternately so that a load that comes and goes hits both.
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


def stepper(arch: str, size: int, routed: bool) -> Callable[[], float]:
    torch.manual_seed(0)
    model = build_model(arch, base_width=8).to(memory_format=CL)
    narrow_norms_in_nchw(model, routed)
    onednn_1x1_convs(model, routed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(8, 3, size, size).contiguous(memory_format=CL)
    y = (torch.rand(8, size, size) > 0.9).long()

    def step() -> float:
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    return step


def steps(size: int, repeats: int, models: list[str]) -> None:
    print(f"training step, batch 8, {size} px, base_width 8, channels-last: "
          f"routes off vs on (alternating)")
    for arch in models:
        off, on = stepper(arch, size, False), stepper(arch, size, True)
        for _ in range(2):
            off(), on()
        pairs = [(off(), on()) for _ in range(repeats)]
        ratio = statistics.median(b / a for a, b in pairs)
        print(f"  {arch:15s} off {statistics.median(a for a, _ in pairs) * 1000:7.1f} ms  "
              f"on {statistics.median(b for _, b in pairs) * 1000:7.1f} ms  ratio {ratio:.3f}",
              flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=("norms", "convs", "step"),
                        default=["norms", "convs", "step"])
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


if __name__ == "__main__":
    main()
