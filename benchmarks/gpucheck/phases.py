"""The phases (a: correctness, b: throughput, c: protocol time, d: bottle, e: protocol run)."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from train_throughput import (
    PAPER_EPOCHS,
    plain_images_per_second,
    random_split,
    write_pngs,
)

from gpucheck.projections import (
    plan_bottle_epochs,
    protocol_time,
    run_seconds,
    sequential_run,
    steady_epoch_seconds,
)
from gpucheck.report import Report
from gpucheck.runner import Job, run_jobs
from gpucheck.settings import COMPILE_MODE, COST, MODES, PAPER_BOTTLE, Sizes, config, mean_std
from gpucheck.workers import timed_train
from mr2unet.data.prepared import load_split


def phase_correctness(ctx: Context) -> None:
    allowance = ctx.allowance(0.15, minimum=30)
    jobs = [Job(f"a_{arch}", {"kind": "correctness", "arch": arch, **ctx.common},
                time.time() + allowance) for arch in ctx.sizes.models]

    def done(job: Job, result: dict[str, Any]) -> None:
        ctx.report.data["correctness"][job.spec["arch"]] = result
        ctx.report.save()

    ctx.run(jobs, parallel=len(jobs), on_done=done)


def phase_throughput(ctx: Context) -> None:
    total = ctx.allowance(ctx.args.throughput_share)
    # Timing needs the GPU to itself: one network after another (the smoke test has no
    # timing to protect and runs them at once).
    parallel = len(ctx.sizes.models) if ctx.args.smoke else 1
    wanted = {"ours", "plain", *MODES, *(("compile",) if ctx.args.try_compile else ())}
    measured = {a: dict(ctx.report.data["throughput"].get(a, {}).get("modes") or {})
                for a in ctx.sizes.models}
    jobs = [Job(f"b_{arch}", {"kind": "throughput", "arch": arch, "measured": measured[arch],
                              "try_compile": ctx.args.try_compile, **ctx.common}, 0.0)
            for arch in ctx.sizes.models if not wanted <= set(measured[arch])]
    weight = {job.spec["arch"]: COST.get(job.spec["arch"], 1.0) for job in jobs}

    def done(job: Job, result: dict[str, Any]) -> None:
        modes = {**measured[job.spec["arch"]], **result.get("modes", {})}
        fast = {m: v for m, v in modes.items() if m not in ("plain",)}
        best = max(fast, key=fast.get) if fast else None
        ctx.report.data["throughput"][job.spec["arch"]] = {
            "ours": modes.get("ours"), "fastest": fast.get(best), "fastest_mode": best,
            "plain": modes.get("plain"),
            "ours_vs_plain": modes["ours"] / modes["plain"] if {"ours", "plain"} <= set(modes)
            else None,
            "fastest_vs_plain": fast[best] / modes["plain"] if best and "plain" in modes
            else None,
            "modes": modes, "errors": result.get("errors", {}),
            **({"error": result["error"]} if "error" in result else {})}
        ctx.report.save()

    for i in range(0, len(jobs), parallel):  # kill times count from each job's own start
        wave = jobs[i:i + parallel]
        for job in wave:
            job.kill_at = time.time() + total * (
                weight[job.spec["arch"]] / sum(weight.values()) if parallel == 1 else 1.0)
        ctx.run(wave, parallel=parallel, on_done=done)


def fastest_mode(ctx: Context, arch: str) -> tuple[str, dict[str, Any]]:
    name = ctx.report.data["throughput"].get(arch, {}).get("fastest_mode") or "ours"
    return name, {**MODES, "compile": COMPILE_MODE}[name]


def alone_speeds(ctx: Context) -> dict[str, float]:
    return {a: ctx.report.data["throughput"].get(a, {}).get("fastest") or 0.0
            for a in ctx.sizes.models}


def phase_protocol(ctx: Context) -> None:
    window = ctx.allowance(ctx.args.protocol_share, minimum=1)
    launched = time.time()
    jobs = []
    for arch in ctx.sizes.models:
        name, mode = fastest_mode(ctx, arch)
        jobs.append(Job(f"c_{arch}", {"kind": "protocol", "arch": arch, "mode": mode,
                                      "mode_name": name, "deadline": launched + window,
                                      **ctx.common},
                        launched + window + max(30.0, 0.5 * window)))
    runs = ctx.run(jobs, parallel=len(jobs))
    runs = {job.spec["arch"]: runs[job.name] for job in jobs}
    sizes = ctx.sizes
    result = protocol_time(runs, launched, sizes.protocol_epochs, alone_speeds(ctx),
                           sizes.protocol_images)
    alone = alone_speeds(ctx)
    rates = {a: sizes.protocol_images / steady_epoch_seconds(r["epoch_seconds"])
             for a, r in runs.items() if r.get("epoch_seconds")}
    gain = (sum(rates[a] / alone[a] for a in rates if alone.get(a)) if rates else None)
    enough = all(len(r.get("epoch_seconds", [])) - 1 >= sizes.min_steady_epochs
                 for r in runs.values())
    ctx.report.data.update(
        full_protocol_minutes=result["seconds"] / 60 if result["seconds"] else None,
        full_protocol_measured=result["measured"],
        full_protocol={**result, "window_s": window, "concurrency_gain": gain,
                       "concurrent_images_per_second": rates, "enough_steady_epochs": enough,
                       "runs": {a: {k: v for k, v in r.items() if k != "epoch_ends"}
                                for a, r in runs.items()}})
    ctx.report.save()


def phase_bottle(ctx: Context) -> None:
    sizes, seeds = ctx.sizes, ctx.args.seeds
    margin = max(3.0, 0.05 * ctx.args.budget_s)
    seconds = ctx.remaining() - margin - sizes.startup_s
    gain = ctx.report.data["full_protocol"].get("concurrency_gain")
    n_train = len(load_split(ctx.common["train"]))
    # Networks with every seed from an earlier call (--previous) are kept, not trained again.
    complete = [a for a in sizes.models
                if ctx.report.data["bottle"].get(a, {}).get("seeds") == sorted(seeds)]
    todo = {a: v for a, v in alone_speeds(ctx).items() if a not in complete}
    epochs = ctx.args.bottle_epochs or plan_bottle_epochs(
        todo, gain, len(seeds), n_train, seconds, sizes.bottle_epochs)
    deadline = time.time() + max(seconds, 1.0)
    ctx.report.data["bottle_epochs"] = epochs
    ctx.report.log(f"d: {len(todo)} networks x {len(seeds)} seeds x {epochs} epochs "
                   f"(planned for {seconds:.0f} s)")
    if complete:
        ctx.report.log(f"d: kept from the earlier call: {', '.join(complete)}")
    jobs = []
    for arch in todo:
        name, mode = fastest_mode(ctx, arch)
        for seed in seeds:
            jobs.append(Job(f"d_{arch}_{seed}", {
                "kind": "bottle", "arch": arch, "seed": seed, "epochs": epochs, "mode": mode,
                "mode_name": name, "deadline": deadline, "agreement": seed == seeds[0],
                **ctx.common}, deadline + margin * 0.7))
    per_seed: dict[str, list[dict[str, Any]]] = {a: [] for a in sizes.models}

    def done(job: Job, result: dict[str, Any]) -> None:
        arch = job.spec["arch"]
        per_seed[arch].append(result)
        scored = [r for r in per_seed[arch] if "iou" in r]
        iou_mean, iou_std = mean_std([r["iou"] for r in scored])
        dice_mean, dice_std = mean_std([r["dice"] for r in scored])
        agree = [r["cuda_cpu_agreement"] for r in scored if "cuda_cpu_agreement" in r]
        ctx.report.data["bottle"][arch] = {
            "iou_mean": iou_mean, "iou_std": iou_std, "dice_mean": dice_mean,
            "dice_std": dice_std, "seeds": sorted(r["seed"] for r in scored),
            "epochs": epochs, "protocol_complete": epochs == PAPER_EPOCHS and all(
                r.get("finished") for r in per_seed[arch]),
            "mode": job.spec["mode_name"], "paper_iou": PAPER_BOTTLE[arch][0],
            "paper_dice": PAPER_BOTTLE[arch][1],
            "cuda_cpu_agreement": agree[0] if agree else None,
            "per_seed": sorted(per_seed[arch], key=lambda r: r.get("seed", 0))}
        ctx.report.save()

    ctx.run(jobs, parallel=len(jobs), on_done=done)


# The settings phase e reports (those of params.yaml that decide its speed).
PROTOCOL_SETTINGS = ("batch_size", "base_width", "precision", "channels_last", "deterministic",
                     "compile", "adam_impl", "cuda_graphs", "loss", "augment", "lr_schedule")


def plain_speeds(ctx: Context) -> dict[str, dict[str, Any]]:
    """The plain loop's images/s per network: phase b's of this call, else measured here
    (train_throughput.plain_images_per_second, phase b's images and epochs)."""
    sizes, speeds = ctx.sizes, {}
    pngs = ctx.work / "e_plain_pngs"
    for arch in sizes.models:
        known = None if ctx.args.previous else (
            ctx.report.data["throughput"].get(arch, {}).get("plain"))
        if known:
            speeds[arch] = {"images_per_second": known, "source": "phase b"}
            continue
        if not pngs.is_dir():
            pngs.mkdir()
            write_pngs(random_split(sizes.bench_images, sizes.image_size), pngs)
        try:
            speed = plain_images_per_second(config(arch, sizes), pngs, sizes.bench_images,
                                            sizes.bench_epochs)
            speeds[arch] = {"images_per_second": speed, "source": "phase e"}
        except Exception as exc:  # noqa: BLE001 - the ratio is then unknown, the run goes on
            speeds[arch] = {"images_per_second": None, "error": f"{type(exc).__name__}: {exc}"}
    return speeds


def phase_protocol_run(ctx: Context) -> None:
    """e: the paper's protocol as a user runs it on one GPU: the committed settings (what
    ``dvc repro`` runs as params.yaml holds them), the networks one after another in this
    process.  Each network gets an equal share of the time left when it starts (what an
    earlier one leaves over passes on); one that does not finish by then is projected from
    its epochs done (projections.run_seconds)."""
    threads = torch.get_num_threads()
    if ctx.args.smoke:  # tiny networks: one thread, as the smoke run's workers have
        torch.set_num_threads(1)
    try:
        _protocol_run(ctx)
    finally:
        torch.set_num_threads(threads)


def _protocol_run(ctx: Context) -> None:
    sizes, data = ctx.sizes, ctx.report.data
    deadline = ctx.deadline - max(3.0, 0.03 * ctx.args.budget_s)
    split = random_split(sizes.protocol_images, sizes.image_size)
    plain = plain_speeds(ctx)
    settings = config(sizes.models[0], sizes)
    networks: dict[str, dict[str, Any]] = {}
    for arch in sizes.models:
        speed = plain[arch].get("images_per_second")
        networks[arch] = {"started": False, "finished": False, "measured": False,
                          "epochs_done": 0, "seconds": None, "plain_protocol_s":
                          sizes.protocol_epochs * len(split) / speed if speed else None}
    section: dict[str, Any] = {
        "mode": "ours", "epochs": sizes.protocol_epochs, "images": len(split),
        "settings": {k: getattr(settings, k) for k in PROTOCOL_SETTINGS}, "plain": plain,
        "networks": networks, **sequential_run(networks, 0.0)}
    data["protocol_run"] = section
    ctx.report.save()
    start = time.time()
    for i, arch in enumerate(sizes.models):
        row = networks[arch]
        share = (deadline - time.time()) / (len(sizes.models) - i)
        if share < 1.0:  # not started: projected from phase b's speed of the same mode
            ours = data["throughput"].get(arch, {}).get("ours")
            row.update(seconds=sizes.protocol_epochs * len(split) / ours if ours else None,
                       projected_from="phase b" if ours else None)
        else:
            cfg = dataclasses.replace(config(arch, sizes), epochs=sizes.protocol_epochs)
            began = time.time()
            try:
                result, rows = timed_train(cfg, split, began + share, 1, lookahead=True)
            except Exception as exc:  # noqa: BLE001 - record it, run the next network
                result, rows = None, []
                row["error"] = f"{type(exc).__name__}: {exc}"[:500]
                ctx.report.log(f"e_{arch}: {row['error']}")
            wall = time.time() - began
            epoch_seconds = [r["seconds"] for r in rows]
            row.update(started=True, epochs_done=len(rows), finished=result is not None,
                       measured=result is not None, wall_s=wall, epoch_seconds=epoch_seconds,
                       seconds=run_seconds(wall, epoch_seconds, cfg.epochs) if rows else None)
            del result
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            ctx.report.log(f"e_{arch}: {len(rows)} of {cfg.epochs} epochs in {wall:.1f} s")
        row["vs_plain"] = (row["plain_protocol_s"] / row["seconds"]
                           if row["plain_protocol_s"] and row["seconds"] else None)
        section.update(sequential_run(networks, time.time() - start))
        ctx.report.save()
    section["elapsed_s"] = time.time() - start
    if section["full_protocol_measured"]:
        data["full_protocol_measured"] = True
    data["full_protocol_wall_s"] = section["full_protocol_wall_s"]
    ctx.report.save()


@dataclasses.dataclass
class Context:
    args: argparse.Namespace
    sizes: Sizes
    report: Report
    work: Path
    common: dict[str, Any]
    deadline: float  # the whole script's

    def remaining(self) -> float:
        return self.deadline - time.time()

    def allowance(self, share: float, minimum: float = 5.0) -> float:
        """``share`` of the budget, at most what is left."""
        return max(minimum, min(share * self.args.budget_s, self.remaining()))

    def run(self, jobs: list[Job], parallel: int,
            on_done: Callable[[Job, dict[str, Any]], None] | None = None
            ) -> dict[str, dict[str, Any]]:
        threads = max(1, (os.cpu_count() or 1) // parallel) if not self.args.smoke else 1
        results = run_jobs(jobs, self.work, parallel, threads, on_done)
        for name, result in results.items():
            if "error" in result:
                self.report.log(f"{name}: {result['error']}\n{result['log_tail']}")
        return results


PHASES = {"a": phase_correctness, "b": phase_throughput, "c": phase_protocol,
          "d": phase_bottle, "e": phase_protocol_run}


