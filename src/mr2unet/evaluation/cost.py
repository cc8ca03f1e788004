"""What a network costs: parameters, forward FLOPs, inference latency.

Parameters and FLOPs are properties of the architecture and the input size: the same
on every run and machine, so `evaluate` writes them to ``metrics/evaluation/<model>.json``.
Latencies are measurements (they vary from run to run): `evaluate` writes them to
``metrics/timing/<model>.json``, which no byte-identity check compares. A model trained on
crops (``prepare.mode: tiles``) also gets the latency per **whole test image**
(:func:`image_latency`), as it predicts them: the per-window figures alone hide that an
image is many windows.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``: convolutions and
matrix products, a multiply-add = 2 FLOPs (so MACs = FLOPs / 2); batch norm, ReLU,
pooling, up-sampling and the softmax are not counted.  ``benchmarks/model_summary.py``
uses the same functions for docs/models.md.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mr2unet.models.inference import defect_probability
from mr2unet.models.tiling import WINDOWS, Tiling, tile_logits, window_starts

# Latency protocol (docs/evaluation.md).  Runs stop at `max_runs` or once `budget_s` of
# timed runs have passed, whichever comes first, but never before one timed run: the
# full-size networks on a GPU get all runs, the demo's CPU networks a few.
LATENCY_PLAN = {1: {"warmup": 2, "max_runs": 10, "budget_s": 0.3},
                32: {"warmup": 1, "max_runs": 5, "budget_s": 0.5}}


def count_parameters(model: nn.Module) -> int:
    """All parameters (trainable or not) of ``model``."""
    return sum(p.numel() for p in model.parameters())


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def forward_flops(model: nn.Module, size: int) -> int:
    """FLOPs of one forward pass of one ``3 x size x size`` image (eval mode), on the
    model's device."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size, device=_device_of(model)))
    return counter.get_total_flops()


def model_cost(model: nn.Module, size: int) -> dict[str, Any]:
    """``{"parameters", "gflops", "input_size"}``: deterministic, byte-stable figures."""
    return {"parameters": count_parameters(model),
            "gflops": round(forward_flops(model, size) / 1e9, 6),
            "input_size": int(size)}


@dataclass(frozen=True)
class Latency:
    """Median wall time of a forward pass, per batch and per image."""

    batch: int
    median_ms: float  # per batch
    per_image_ms: float  # median_ms / batch
    runs: int  # timed runs behind the median
    warmup: int  # untimed runs before them


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_latency(model: nn.Module, size: int, batch: int, warmup: int = 1,
                    max_runs: int = 5, budget_s: float = 1.0) -> Latency:
    """Time forward pass + defect probability of a ``batch x 3 x size x size`` float batch
    that is already on the model's device (fp32, eval mode, ``torch.inference_mode``).

    ``warmup`` untimed runs (allocator, oneDNN / cuDNN kernel choice), then timed runs
    until ``max_runs`` or until ``budget_s`` seconds of timed runs have passed (at least
    one).  CUDA is synchronised before and after every timed run.
    """
    device = _device_of(model)
    model.eval()
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    median, runs = _median_ms(lambda: defect_probability(model(x)), device, warmup, max_runs,
                              budget_s)
    return Latency(batch, round(median, 3), round(median / batch, 3), runs, warmup)


def _median_ms(forward: Callable[[], Any], device: torch.device, warmup: int, max_runs: int,
               budget_s: float) -> tuple[float, int]:
    """(median ms, timed runs) of ``forward``: ``warmup`` untimed runs, then timed ones
    until ``max_runs`` or ``budget_s`` seconds (at least one), CUDA synchronised."""
    for _ in range(warmup):
        forward()
    times: list[float] = []
    while len(times) < max(1, max_runs) and (not times or sum(times) < budget_s):
        _sync(device)
        start = time.perf_counter()
        forward()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, len(times)


@torch.inference_mode()
def image_latency(model: nn.Module, height: int, width: int, tiling: Tiling,
                  windows_per_call: int = 32, warmup: int = 1, max_runs: int = 5,
                  budget_s: float = 1.0) -> dict[str, Any]:
    """A model trained on crops: ms per whole ``height x width`` image (batch 1), predicted
    as ``tiling.predict`` says (:func:`mr2unet.models.tiling.tile_logits`), and for windows
    their count and ms per window. Median wall time of logits + defect probability."""
    device = _device_of(model)
    model.eval()
    x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0)).to(device)
    median, runs = _median_ms(
        lambda: defect_probability(tile_logits(model, x, tiling, windows_per_call)), device,
        warmup, max_runs, budget_s)
    record: dict[str, Any] = {"predict": tiling.predict, "height": int(height),
                              "width": int(width), "per_image_ms": round(median, 3),
                              "runs": runs, "warmup": warmup}
    if tiling.predict == WINDOWS:
        count = (len(window_starts(max(height, tiling.tile), tiling.tile, tiling.stride))
                 * len(window_starts(max(width, tiling.tile), tiling.tile, tiling.stride)))
        record.update(windows=count, per_window_ms=round(median / count, 3))
    return record


def latencies(model: nn.Module, size: int,
              plan: dict[int, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """``{"batch_1": {...}, "batch_32": {...}}`` (see :class:`Latency`) per ``LATENCY_PLAN``."""
    plan = LATENCY_PLAN if plan is None else plan
    return {f"batch_{b}": asdict(measure_latency(model, size, b, **kw)) for b, kw in plan.items()}
