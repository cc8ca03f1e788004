"""The paper's protocol time, measured or projected, and phase d's epoch plan."""

from __future__ import annotations

import statistics
from typing import Any


def steady_epoch_seconds(epoch_seconds: list[float]) -> float:
    """Median of the epochs after the first (warm-up: allocation, autotuning, capture)."""
    return statistics.median(epoch_seconds[1:] or epoch_seconds)


def protocol_time(runs: dict[str, dict[str, Any]], launched: float, epochs: int,
                  alone: dict[str, float], images: int) -> dict[str, Any]:
    """The paper protocol's wall time from phase c's concurrent runs (one per network).

    Measured when every run finished ``epochs``: the last end minus the launch.  Else
    projected two ways and the shorter kept: ``concurrent`` = max over networks of (its
    first epoch's end, launch and warm-up included, + the remaining epochs at its
    steady-state epoch time while all ran at once; conservative, since the others'
    ending speeds up the last), and ``sequential`` = sum over networks of
    ``epochs * images / images-per-second alone`` (phase b, fastest mode).
    """
    done = {a: r for a, r in runs.items() if r.get("epoch_seconds")}
    if done and len(done) == len(runs) and all(r.get("finished") for r in done.values()):
        seconds = max(r["epoch_ends"][-1] for r in done.values()) - launched
        return {"measured": True, "seconds": seconds, "strategy": "concurrent"}
    concurrent = {a: (r["epoch_ends"][0] - launched)
                  + (epochs - 1) * steady_epoch_seconds(r["epoch_seconds"])
                  for a, r in done.items()}
    sequential = {a: epochs * images / speed for a, speed in alone.items() if speed}
    options = {}
    if concurrent and len(concurrent) == len(runs):
        options["concurrent"] = max(concurrent.values())
    if sequential and len(sequential) == len(runs):
        options["sequential"] = sum(sequential.values())
    best = min(options, key=options.get) if options else None
    return {"measured": False, "seconds": options.get(best), "strategy": best,
            "concurrent_projection_s": options.get("concurrent"),
            "sequential_projection_s": options.get("sequential"),
            "per_network_concurrent_s": concurrent,
            "steady_epochs": {a: len(r["epoch_seconds"]) - 1 for a, r in done.items()}}


def plan_bottle_epochs(alone: dict[str, float], gain: float | None, runs_per_net: int,
                       train_images: int, seconds: float, full: int,
                       minimum: int = 1) -> int:
    """Epochs per bottle run that fit ``seconds`` at the measured speeds (``full`` if so).

    GPU work = sum over networks of runs * epochs * images / alone-speed; running them
    all at once divides it by ``gain`` (phase c: sum over networks of concurrent-speed /
    alone-speed; 1 when unknown).
    """
    if not alone or any(not v for v in alone.values()):
        return full
    per_epoch = sum(runs_per_net * train_images / v for v in alone.values()) / (gain or 1.0)
    return max(minimum, min(full, int(seconds / per_epoch)))


