"""The command line: ``python benchmarks/gpu_check.py ...`` (see the package doc)."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from train_throughput import (
    random_split,
)

import gpucheck
from gpucheck.phases import PHASES, Context
from gpucheck.report import Report, table
from gpucheck.settings import (
    ARCHIVE,
    BOTTLE_NOTE,
    COMPILE_MODE,
    DEFAULT_DATA,
    MODELS,
    MODES,
    PAPER_BOTTLE,
    REPO,
    SMOKE,
    Sizes,
)
from gpucheck.workers import run_worker


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
               "full_protocol", "bottle", "bottle_epochs", "full_protocol_wall_s",
               "protocol_run")


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
    ap = argparse.ArgumentParser(description=gpucheck.__doc__,
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
    ap.add_argument("--phases", default="abcd",
                    help="any of a b c d e, e.g. 'bc' (e, the protocol run, only when named)")
    ap.add_argument("--models", nargs="+", choices=MODELS, default=None)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--protocol-share", type=float, default=None,
                    help="share of the budget for phase c's window (default 0.13; 1 with "
                         "--phases c measures the protocol directly where it fits)")
    ap.add_argument("--protocol-epochs", type=int, default=None,
                    help="the protocol's epochs in phases c and e (default 200, the paper's)")
    ap.add_argument("--protocol-images", type=int, default=None,
                    help="the protocol's training images in phases c and e (default 1006; "
                         "with --protocol-epochs, a rehearsal of phase e in seconds)")
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

    if set(args.phases) - set(PHASES):
        ap.error(f"--phases: {args.phases!r}; expected letters of {''.join(PHASES)}")
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
    for name in ("protocol_epochs", "protocol_images"):
        if getattr(args, name) is not None:
            sizes = dataclasses.replace(sizes, **{name: getattr(args, name)})
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
        "full_protocol_wall_s": None, "protocol_run": {},
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
