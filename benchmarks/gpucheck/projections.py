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


def run_seconds(wall_s: float, epoch_seconds: list[float], epochs: int) -> float:
    """Phase e: one network's protocol seconds, from a run stopped after
    ``len(epoch_seconds)`` of ``epochs`` epochs (``wall_s`` so far, set-up included): the
    epochs not reached at its steady-state epoch time are added (none when it finished)."""
    left = epochs - len(epoch_seconds)
    return wall_s + (left * steady_epoch_seconds(epoch_seconds) if left > 0 else 0.0)


def sequential_run(networks: dict[str, dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """Phase e's totals from its per-network rows (``seconds``: measured or projected, None
    when unknown; ``measured``; ``plain_protocol_s``: the plain loop's time for the same
    work, None when unmeasured).

    Measured when every network finished: the wall time of the whole phase run.  Else the
    projection is the sum over networks.  ``vs_plain`` is the plain loop's time over ours
    (> 1: ours is faster), where both are known for every network.
    """
    seconds = [row.get("seconds") for row in networks.values()]
    plain = [row.get("plain_protocol_s") for row in networks.values()]
    measured = bool(networks) and all(row.get("measured") for row in networks.values())
    known = bool(networks) and None not in seconds
    total = wall_s if measured else (sum(seconds) if known else None)
    return {"full_protocol_measured": measured,
            "full_protocol_wall_s": wall_s if measured else None,
            "projected_s": None if measured else total,
            "per_network_s": {a: row.get("seconds") for a, row in networks.items()},
            "vs_plain": sum(plain) / total if total and None not in plain else None}
