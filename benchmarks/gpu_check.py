"""The GPU check of issue #11: correctness, speed, the paper's protocol time, bottle accuracy.

    python benchmarks/gpu_check.py --prepare-only --out device_data/bottle   # CPU, once
    PYTHONPATH=src python3 benchmarks/gpu_check.py --budget-s 420           # on the GPU
    python benchmarks/gpu_check.py --smoke                                  # CPU, tiny, ~1 min

One command, one device call; it writes ``$OUT/gpu_check.json`` after every phase (so a
run killed at its time limit still returns what it measured) and ``$OUT/gpu_check.log``,
and prints a short table last.  Phases (``--phases``, all by default):

a. correctness: each network trains 2 epochs with the committed settings (bf16,
   channels_last, deterministic) on the real bottle sample: finite, falling loss; two
   uninterrupted runs and a run killed after epoch 1 and resumed are compared bit for
   bit (the non-deterministic kernels PyTorch warned about are named); evaluate and
   ``predict`` run on the device; the masks of device and CPU inference of the same
   weights are compared pixel by pixel.
b. throughput at full width, 128 px, batch 8, one network at a time: ``ours`` (the loop
   as committed), each speed lever (``MODES``; ``--try-compile`` adds torch.compile) and
   the ``plain`` loop (train_throughput.plain_images_per_second: PNG DataLoader, fp32).
   ``fastest`` is the best lever set per network.
c. the paper's protocol time (4 networks x 200 epochs x 1006 images): the four networks
   train at once, one process each, in their fastest mode, until a time window closes;
   measured when all finish 200 epochs in it, else projected from the steady-state
   epochs (at least 5 per network; the first epoch is warm-up).
d. the real bottle sample (50 train / 13 test) with the paper's protocol (params.yaml's
   base values: full width, Adam, lr 1e-4, 200 epochs, batch 8, cross-entropy, no
   augmentation), ``--seeds`` per network, all runs at once (one process each): test
   IOU/Dice mean and sample std per network beside the paper's bottle row.  When the
   measured speed says 200 epochs do not fit the time left, the epochs are scaled down
   and the result says so (``protocol_complete: false``).

``--previous gpu_check.json`` starts from an earlier call's results on the same GPU model
and fills only what it lacks (phase b's unmeasured modes, phase d's unfinished networks).

The budget (``--budget-s``) is split between the phases by measured speed; every worker
process is killed at its phase's limit, so the script ends within the budget plus a few
seconds.  ``--smoke`` runs every phase with tiny networks on the CPU (tests/test_gpu_check.py).
The worker processes are this script (``--worker spec.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import (  # noqa: E402 - the benchmarks folder is not a package
    PAPER_EPOCHS,
    PAPER_TRAIN_IMAGES,
    plain_images_per_second,
    random_split,
    steady_images_per_second,
    write_pngs,
)

from mr2unet.data.prepared import PreparedSplit, load_split  # noqa: E402
from mr2unet.training.loop import TrainConfig, train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "mvtec_ad_bottle_test.tar.xz"
DEFAULT_DATA = REPO / "device_data" / "bottle"
MODELS = ("unet", "resunet", "attention_unet", "mr2unet")
# The paper's Table 1, bottle row: (IOU, Dice).
PAPER_BOTTLE = {"unet": (0.5976, 0.7298), "resunet": (0.7052, 0.8117),
                "attention_unet": (0.6476, 0.7532), "mr2unet": (0.6547, 0.7608)}
# Lever sets measured in phase b, each on top of the committed settings; cumulative, so
# the table shows what each lever adds.
MODES: dict[str, dict[str, Any]] = {
    "ours": {},
    "fused_adam": {"adam_impl": "fused"},
    "no_determinism": {"adam_impl": "fused", "deterministic": False},
    "cuda_graphs": {"adam_impl": "fused", "deterministic": False, "cuda_graphs": True},
}
COMPILE_MODE = {"adam_impl": "fused", "deterministic": False, "compile": "reduce-overhead"}
AGREEMENT_TARGET = 0.999
# Relative cost of a phase-b worker (MR2U-Net's many narrow convolutions are the slowest):
# its share of the phase's time.
COST = {"unet": 1.0, "resunet": 0.9, "attention_unet": 1.1, "mr2unet": 2.0}
BOTTLE_NOTE = ("The paper trained each network once on all 15 MVTec AD categories "
               "(1006 training images) and reports the bottle row of that model; these "
               "networks trained on the 50 bottle images alone, so the rows compare the "
               "protocol, not the training data.")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What a run trains: full size on the GPU, tiny for the CPU smoke test."""

    base_width: int = 64
    image_size: int = 128
    device: str = "cuda"
    models: tuple[str, ...] = MODELS
    bench_images: int = 192  # phase b: images per epoch (1 warm-up + bench_epochs timed)
    bench_epochs: int = 2
    protocol_images: int = PAPER_TRAIN_IMAGES
    protocol_epochs: int = PAPER_EPOCHS
    min_steady_epochs: int = 5
    bottle_epochs: int = PAPER_EPOCHS
    correctness_epochs: int = 2
    startup_s: float = 20.0  # a phase-d worker's start, capture and evaluation


SMOKE = Sizes(base_width=4, image_size=32, device="cpu", models=("unet",),
              bench_images=8, bench_epochs=1, protocol_images=8, min_steady_epochs=2,
              bottle_epochs=2, startup_s=3.0)


# --------------------------------------------------------------------------- settings


def committed_train_params(path: Path = REPO / "params.yaml") -> dict[str, Any]:
    """The base ``train`` values of params.yaml: the paper's protocol as committed."""
    return dict(yaml.safe_load(path.read_text())["train"])


def config(arch: str, sizes: Sizes, **overrides: Any) -> TrainConfig:
    """The committed config of ``arch`` at ``sizes``, with ``overrides`` (a MODES entry...)."""
    cfg = TrainConfig.from_params({"train": committed_train_params()}, arch)
    return dataclasses.replace(cfg, base_width=sizes.base_width, device=sizes.device,
                               cpu_threads=None, **overrides)


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> tuple[bool, float]:
    """(bit-identical, largest absolute difference) of two networks' state dicts."""
    sa, sb = a.state_dict(), b.state_dict()
    diff = max((float((sa[k].double() - sb[k].double()).abs().max()) if sa[k].numel() else 0.0)
               for k in sa)
    return all(torch.equal(sa[k], sb[k]) for k in sa), diff


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None where undefined)."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


# ---------------------------------------------------------------------------- workers


class _Stop(Exception):  # noqa: N818 - a signal, not an error
    """Raised from ``on_epoch_end`` to end a run at its deadline."""


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)


def _timed_train(cfg: TrainConfig, split: PreparedSplit, deadline: float, min_epochs: int,
                 checkpoint_dir: Path | None = None) -> tuple[Any, list[dict[str, float]]]:
    """Train, stopping after the epoch that ends past ``deadline`` (once ``min_epochs``
    are done); (result or None when stopped, history rows with wall-clock ``end``)."""
    rows: list[dict[str, float]] = []

    def on_epoch_end(row: dict[str, float]) -> None:
        rows.append({**row, "end": time.time()})
        if len(rows) >= min_epochs and time.time() > deadline and row["epoch"] < cfg.epochs:
            raise _Stop

    try:
        return train(cfg, split, checkpoint_dir=checkpoint_dir, on_epoch_end=on_epoch_end,
                     progress=False), rows
    except _Stop:
        return None, rows


def _kill_at_last(row: dict[str, float]) -> None:
    """Stop a run before the end of its last epoch is saved (a kill after epoch N - 1)."""
    if row["epoch"] >= 2:
        raise _Stop


def _scores(model: torch.nn.Module, split: PreparedSplit, device: torch.device) -> dict[str, Any]:
    from mr2unet.evaluation.evaluate import evaluate
    from mr2unet.metrics.segmentation import mean_scores

    result = evaluate(model, split, device, batch_size=32, progress=False)
    return {**mean_scores(result.counts), "device": str(device)}


def agreement(model: torch.nn.Module, images: np.ndarray, device: torch.device) -> float:
    """Share of pixels whose predicted mask is the same on ``device`` and on the CPU."""
    from mr2unet.evaluation.evaluate import predict_masks

    on_device = predict_masks(copy.deepcopy(model), images, device, progress=False)
    on_cpu = predict_masks(copy.deepcopy(model).float(), images, torch.device("cpu"),
                           progress=False)
    return float((on_device == on_cpu).mean())


def nondeterministic_ops(caught: list[warnings.WarningMessage]) -> list[str]:
    """The kernels PyTorch warned have no deterministic implementation (warn_only mode)."""
    ops = set()
    for w in caught:
        text = str(w.message)
        if "does not have a deterministic implementation" in text:
            ops.add(text.split(" does not have")[0].strip())
    return sorted(ops)


def work_correctness(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    """Phase a for one network (see the module docstring)."""
    from mr2unet.deploy.predict import LoadedModel, predict_images

    sizes, arch = Sizes(**spec["sizes"]), spec["arch"]
    train_split, test_split = load_split(spec["train"]), load_split(spec["test"])
    cfg = dataclasses.replace(config(arch, sizes), epochs=sizes.correctness_epochs,
                              checkpoint_every=1)
    device = torch.device(sizes.device)
    res: dict[str, Any] = {"arch": arch, "settings": {k: getattr(cfg, k) for k in (
        "precision", "channels_last", "deterministic", "compile", "adam_impl", "cuda_graphs")}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = train(cfg, train_split, progress=False)
        losses = [row["loss"] for row in first.history]
        res.update(loss=losses, finite=all(math.isfinite(v) for v in losses),
                   falling=losses[-1] < losses[0])
        _write(out, res)
        second = train(cfg, train_split, progress=False)
        res["repeat_identical"], res["repeat_max_abs_diff"] = states_equal(first.model,
                                                                           second.model)
        with tempfile.TemporaryDirectory() as tmp:
            # Killed during epoch 2's bookkeeping: epoch 1's checkpoint is there.
            with contextlib.suppress(_Stop):
                train(cfg, train_split, checkpoint_dir=Path(tmp), on_epoch_end=_kill_at_last,
                      progress=False)
            resumed = train(cfg, train_split, checkpoint_dir=Path(tmp), progress=False)
        res["resumed_from_epoch"] = resumed.resumed_from_epoch
        res["resume_identical"], res["resume_max_abs_diff"] = states_equal(first.model,
                                                                           resumed.model)
        # The CUDA-graph lever must compute what the eager loop computes (on the CPU it is
        # a no-op, so the smoke run checks only the plumbing).
        graphed = train(dataclasses.replace(cfg, cuda_graphs=True), train_split, progress=False)
        res["graphs_identical"], res["graphs_max_abs_diff"] = states_equal(first.model,
                                                                           graphed.model)
        res["graphs_loss"] = [row["loss"] for row in graphed.history]
    res["nondeterministic_ops"] = nondeterministic_ops(caught)
    _write(out, res)
    res["evaluate"] = _scores(first.model, test_split, device)
    with tempfile.TemporaryDirectory() as tmp:
        pngs = [Path(tmp) / f"{i}.png" for i in range(min(3, len(test_split)))]
        for path, image in zip(pngs, test_split.images, strict=False):
            from PIL import Image

            Image.fromarray(image).save(path)
        written = predict_images(LoadedModel(copy.deepcopy(first.model), sizes.image_size,
                                             "gpu_check"), pngs, Path(tmp) / "out", device)
        res["predict"] = {"device": str(device), "written": len(written.written),
                          "failed": len(written.failed)}
    res["cuda_cpu_agreement"] = agreement(first.model, test_split.images, device)
    res["agreement_ok"] = res["cuda_cpu_agreement"] >= AGREEMENT_TARGET
    return res


def work_throughput(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    """Phase b for one network: images/s of ``ours``, each lever set and the plain loop."""
    sizes, arch = Sizes(**spec["sizes"]), spec["arch"]
    split = random_split(sizes.bench_images, sizes.image_size)
    res: dict[str, Any] = {"arch": arch, "images": len(split), "timed_epochs": sizes.bench_epochs,
                           "modes": {}, "errors": {}}
    modes = dict(MODES, **({"compile": COMPILE_MODE} if spec.get("try_compile") else {}))
    measured = spec.get("measured") or {}  # an earlier call's (--previous): not again
    with tempfile.TemporaryDirectory() as tmp:
        write_pngs(split, Path(tmp))
        # The expected winner first after the two references: a kill keeps what was measured.
        for name in ("ours", "plain", *reversed([m for m in modes if m != "ours"])):
            if name in measured:
                continue
            try:
                if name == "plain":
                    speed = plain_images_per_second(config(arch, sizes), Path(tmp), len(split),
                                                    sizes.bench_epochs)
                else:
                    cfg = dataclasses.replace(config(arch, sizes, **modes[name]),
                                              epochs=sizes.bench_epochs + 1)
                    speed = steady_images_per_second(train(cfg, split, progress=False).history,
                                                     len(split))
                res["modes"][name] = speed
            except Exception as exc:  # noqa: BLE001 - record it, measure the others
                res["errors"][name] = f"{type(exc).__name__}: {exc}"[:500]
            _write(out, res)
    return res


def work_protocol(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    """Phase c for one network: the paper's epochs on 1006 random images, until the deadline."""
    sizes, arch = Sizes(**spec["sizes"]), spec["arch"]
    split = random_split(sizes.protocol_images, sizes.image_size)
    cfg = dataclasses.replace(config(arch, sizes, **spec["mode"]), epochs=sizes.protocol_epochs)
    result, rows = _timed_train(cfg, split, spec["deadline"], sizes.min_steady_epochs + 1)
    return {"arch": arch, "mode": spec["mode_name"], "images": len(split),
            "epochs_done": len(rows), "finished": result is not None,
            "epoch_seconds": [row["seconds"] for row in rows],
            "epoch_ends": [row["end"] for row in rows]}


def work_bottle(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    """Phase d for one network and seed: train with the paper's protocol, test on bottle."""
    sizes, arch = Sizes(**spec["sizes"]), spec["arch"]
    train_split, test_split = load_split(spec["train"]), load_split(spec["test"])
    cfg = dataclasses.replace(config(arch, sizes, **spec["mode"]), epochs=spec["epochs"],
                              seed=spec["seed"])
    device = torch.device(sizes.device)
    result, rows = _timed_train(cfg, train_split, spec["deadline"], 1)
    if result is None:  # stopped at the deadline: no weights to evaluate
        return {"arch": arch, "seed": spec["seed"], "epochs_done": len(rows),
                "finished": False, "final_loss": rows[-1]["loss"] if rows else None}
    res = {"arch": arch, "seed": spec["seed"], "epochs_done": len(rows), "finished": True,
           "final_loss": result.history[-1]["loss"], "seconds": result.seconds,
           **_scores(result.model, test_split, device)}
    if spec.get("agreement"):
        res["cuda_cpu_agreement"] = agreement(result.model, test_split.images, device)
    return res


WORKERS: dict[str, Callable[[dict[str, Any], Path], dict[str, Any]]] = {
    "correctness": work_correctness, "throughput": work_throughput,
    "protocol": work_protocol, "bottle": work_bottle}


def run_worker(spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    out = Path(spec["out"])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    result = WORKERS[spec["kind"]](spec, out)
    _write(out, {**result, "complete": True})


# ----------------------------------------------------------------------------- runner


@dataclasses.dataclass
class Job:
    """One worker process: its spec, files and the time it must be killed at."""

    name: str
    spec: dict[str, Any]
    kill_at: float
    proc: subprocess.Popen | None = None


def run_jobs(jobs: list[Job], work: Path, parallel: int, threads: int,
             on_done: Callable[[Job, dict[str, Any]], None] | None = None
             ) -> dict[str, dict[str, Any]]:
    """Run ``jobs`` as worker processes, ``parallel`` at a time, each with ``threads`` CPU
    threads; a job still running at its ``kill_at`` is killed (its partial result kept).

    Returns each job's result by name: what the worker wrote (``complete`` when it ended
    normally), plus ``error`` and the tail of its log when it failed or was killed.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
        "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "TQDM_DISABLE": "1"}
    pending, running, results = list(jobs), [], {}
    while pending or running:
        while pending and len(running) < parallel:
            job = pending.pop(0)
            spec_file, log_file = work / f"{job.name}.spec.json", work / f"{job.name}.log"
            job.spec.update(out=str(work / f"{job.name}.json"), threads=threads)
            spec_file.write_text(json.dumps(job.spec))
            with log_file.open("w") as log:
                job.proc = subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_file)],
                    stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                    start_new_session=True)
            running.append(job)
        time.sleep(0.1)
        for job in list(running):
            code = job.proc.poll()
            if code is None and time.time() < job.kill_at:
                continue
            if code is None:
                os.killpg(job.proc.pid, signal.SIGKILL)  # the worker's own process group
                job.proc.wait()
            running.remove(job)
            out = work / f"{job.name}.json"
            result = json.loads(out.read_text()) if out.is_file() else {}
            if not result.get("complete"):
                tail = (work / f"{job.name}.log").read_text()[-1500:]
                result.update(error="killed at its time limit" if code is None
                              else f"exit code {code}", log_tail=tail)
            results[job.name] = result
            if on_done:
                on_done(job, result)
    return results


# ------------------------------------------------------------------------ projections


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


# ------------------------------------------------------------------------- the report


class Report:
    """``gpu_check.json`` (rewritten after every step) and the log, under ``out``."""

    def __init__(self, out: Path, data: dict[str, Any]) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.json, self.log_file, self.data = out / "gpu_check.json", out / "gpu_check.log", data
        self.log_file.write_text("")
        self.start = time.time()

    def log(self, message: str) -> None:
        line = f"[{time.time() - self.start:6.1f}s] {message}"
        print(line, flush=True)
        with self.log_file.open("a") as fh:
            fh.write(line + "\n")

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.time() - self.start, 1)
        _write(self.json, self.data)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(data: dict[str, Any]) -> str:
    """The short table printed last."""
    lines = [f"device: {data['device']}  torch {data['torch']}  "
             f"({data['elapsed_s']} s, phases {', '.join(data['phases_done']) or 'none'})",
             "network        | ours img/s | fastest img/s (mode)     | plain | x plain | "
             "loss falls | resume identical | graphs = eager | dev/CPU masks | "
             "bottle IOU (paper)  | "
             "bottle Dice (paper)"]
    for arch in data["models"]:
        t = data["throughput"].get(arch, {})
        c = data["correctness"].get(arch, {})
        b = data["bottle"].get(arch, {})
        ratio = (t["fastest"] / t["plain"]) if t.get("fastest") and t.get("plain") else None
        lines.append(
            f"{arch:<14} | {_fmt(t.get('ours'), 1):>10} | "
            f"{_fmt(t.get('fastest'), 1):>8} ({t.get('fastest_mode') or '-':<14}) | "
            f"{_fmt(t.get('plain'), 1):>5} | {_fmt(ratio, 2):>7} | "
            f"{str(c.get('falling', '-')):>10} | {str(c.get('resume_identical', '-')):>16} | "
            f"{str(c.get('graphs_identical', '-')):>14} | "
            f"{_fmt(c.get('cuda_cpu_agreement'), 5):>13} | "
            f"{_fmt(b.get('iou_mean'))}±{_fmt(b.get('iou_std'), 3)} ({PAPER_BOTTLE[arch][0]}) | "
            f"{_fmt(b.get('dice_mean'))}±{_fmt(b.get('dice_std'), 3)} ({PAPER_BOTTLE[arch][1]})")
    minutes, measured = data["full_protocol_minutes"], data["full_protocol_measured"]
    lines.append(f"paper protocol (4 x {PAPER_EPOCHS} epochs x {PAPER_TRAIN_IMAGES} images): "
                 f"{_fmt(minutes, 2)} min, "
                 f"{'measured' if measured else 'projected'}"
                 f" ({data['full_protocol'].get('strategy') or '-'}); bottle epochs "
                 f"{data['bottle_epochs'] or '-'} of {PAPER_EPOCHS}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ phases


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
          "d": phase_bottle}


# -------------------------------------------------------------------------------- main


def prepare_bottle(out: Path, archive: Path) -> None:
    """The real bottle sample as the committed ``prepare``/``split`` settings make it."""
    from mr2unet.data.extract import extract
    from mr2unet.data.prepare import PrepareConfig, prepare

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    fields = {f.name for f in dataclasses.fields(PrepareConfig)}
    knobs = {**raw["prepare"], **raw["split"]}
    cfg = PrepareConfig(**{k: v for k, v in knobs.items() if k in fields})
    with tempfile.TemporaryDirectory() as tmp:
        extract(archive, Path(tmp))
        summary = prepare(Path(tmp), out, cfg, check=False)
    print(f"{out}: {summary['train']} train / {summary['test']} test images at "
          f"{cfg.image_size} px")


MERGED_KEYS = ("correctness", "throughput", "full_protocol_minutes", "full_protocol_measured",
               "full_protocol", "bottle", "bottle_epochs")


def merge_previous(data: dict[str, Any], previous: dict[str, Any], path: Path) -> None:
    """Start ``data`` from an earlier call's results (``--previous``); same device only."""
    if previous.get("device") != data["device"]:
        raise SystemExit(f"error: {path} was measured on {previous.get('device')!r}, not on "
                         f"{data['device']!r}: its timings cannot be combined with this run's")
    for key in MERGED_KEYS:
        data[key] = copy.deepcopy(previous.get(key, data[key]))
    # Incomplete bottle rows are trained again, not kept.
    data["bottle"] = {a: row for a, row in data["bottle"].items() if row.get("seeds")}
    data["previous_calls"] = [*previous.get("previous_calls", []), {
        k: previous.get(k) for k in ("elapsed_s", "phases_done", "torch", "budget_s")}]


def smoke_data(work: Path, sizes: Sizes) -> tuple[Path, Path]:
    """Tiny random train/test splits for ``--smoke`` (the bottle data's format)."""
    paths = []
    for name, n, seed in (("train", 8, 0), ("test", 3, 1)):
        split = random_split(n, sizes.image_size, seed)
        split = dataclasses.replace(split, categories=np.array(["bottle"] * n))
        split.save(work / f"{name}.npz")
        paths.append(work / f"{name}.npz")
    return paths[0], paths[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--prepare-only", action="store_true",
                    help="prepare the bottle sample into --out and stop (CPU)")
    ap.add_argument("--archive", type=Path, default=ARCHIVE)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help="folder with the prepared bottle train.npz and test.npz")
    ap.add_argument("--out", type=Path, default=None, help="default: $OUT, else ./gpu_check_out")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="wall-clock seconds for everything, shared by the phases "
                         "(default 420; 60 with --smoke)")
    ap.add_argument("--phases", default="abcd", help="any of a b c d, e.g. 'bc'")
    ap.add_argument("--models", nargs="+", choices=MODELS, default=None)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--protocol-share", type=float, default=None,
                    help="share of the budget for phase c's window (default 0.13; 1 with "
                         "--phases c measures the protocol directly where it fits)")
    ap.add_argument("--bottle-epochs", type=int, default=None,
                    help="phase d's epochs (default: planned from phases b and c to fit the "
                         "time left; use it when running d alone with known speeds)")
    ap.add_argument("--previous", type=Path, default=None,
                    help="an earlier call's gpu_check.json on the same device: its results are "
                         "kept and the phases run again fill only what it lacks (phase b's "
                         "unmeasured modes, phase d's incomplete networks)")
    ap.add_argument("--throughput-share", type=float, default=None,
                    help="share of the budget for phase b (default 0.42, 0.55 with "
                         "--try-compile)")
    ap.add_argument("--try-compile", action="store_true",
                    help="also measure torch.compile(mode='reduce-overhead') in phase b")
    ap.add_argument("--smoke", action="store_true", help="tiny networks on the CPU")
    args = ap.parse_args(argv)

    if args.worker:
        run_worker(args.worker)
        return 0
    if args.prepare_only:
        prepare_bottle(args.out or DEFAULT_DATA, args.archive)
        return 0

    sizes = SMOKE if args.smoke else Sizes()
    if args.budget_s is None:
        args.budget_s = 60.0 if args.smoke else 420.0
    if args.throughput_share is None:
        # 0.26 was measured too short on an H100 (3 of 4 workers killed after two modes).
        args.throughput_share = 0.55 if args.try_compile else 0.42
    if args.protocol_share is None:
        args.protocol_share = 0.02 if args.smoke else 0.13
    if args.models:
        sizes = dataclasses.replace(sizes, models=tuple(args.models))
    if args.smoke:
        args.seeds = args.seeds[:2] if args.seeds == [0, 1, 2] else args.seeds
    out = args.out or Path(os.environ.get("OUT") or "gpu_check_out")
    if sizes.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device; use --smoke for the CPU", file=sys.stderr)
        return 2
    device_name = (torch.cuda.get_device_name(0) if sizes.device == "cuda"
                   else f"CPU ({os.cpu_count()} cores)")
    report = Report(out, {
        "device": device_name, "torch": torch.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()
        if sizes.device == "cuda" else None,
        "smoke": args.smoke, "budget_s": args.budget_s, "phases_done": [], "elapsed_s": 0.0,
        "models": list(sizes.models), "sizes": dataclasses.asdict(sizes),
        "modes": {**MODES, **({"compile": COMPILE_MODE} if args.try_compile else {})},
        "correctness": {}, "throughput": {},
        "full_protocol_minutes": None, "full_protocol_measured": False, "full_protocol": {},
        "bottle": {}, "bottle_epochs": None, "bottle_note": BOTTLE_NOTE,
        "paper_bottle": {a: {"iou": v[0], "dice": v[1]} for a, v in PAPER_BOTTLE.items()}})
    if args.previous:
        merge_previous(report.data, json.loads(args.previous.read_text()), args.previous)
    report.save()
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work = Path(tmp)
        if args.smoke:
            train_npz, test_npz = smoke_data(work, sizes)
        else:
            train_npz, test_npz = args.data / "train.npz", args.data / "test.npz"
            if not train_npz.is_file():
                print(f"error: {train_npz} not found: run --prepare-only on the CPU and "
                      f"carry the folder", file=sys.stderr)
                return 2
        ctx = Context(args, sizes, report, work, {
            "sizes": dataclasses.asdict(sizes), "train": str(train_npz),
            "test": str(test_npz)}, report.start + args.budget_s)
        for phase in args.phases:
            if ctx.remaining() < 5:
                report.log(f"phase {phase}: skipped, the budget is spent")
                continue
            report.log(f"phase {phase} ({ctx.remaining():.0f} s left)")
            PHASES[phase](ctx)
            report.data["phases_done"].append(phase)
            report.save()
    report.save()
    print(table(report.data), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
