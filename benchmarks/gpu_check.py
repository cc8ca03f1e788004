"""The paper's protocol run as a user runs it on one GPU (the device call's step 2).

    PYTHONPATH=src python3 benchmarks/gpu_check.py --budget-s 400 --out "$OUT"   # on the GPU
    python benchmarks/gpu_check.py --smoke --protocol-epochs 2 --protocol-images 8  # CPU

The networks train one after another in this process with params.yaml's ``train`` and
``run`` settings (what ``dvc repro`` runs) at full width, 128 px, on ``--protocol-images``
generated images for ``--protocol-epochs`` epochs (the paper's 1006 and 200).  Each gets an
equal share of the budget left when it starts; one that does not finish is projected from
its epochs done.  ``$OUT/gpu_check.json`` (rewritten after every network): wall seconds per
network and in all, and ``vs_plain``, the plain loop's time for the same work over ours.
Phases a-d of the first GPU check (results/gpu_check-h100*.json) were the package
gpucheck/, removed after commit 63e852b (``git show 63e852b:benchmarks/gpucheck/phases.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "src")]  # train_throughput; mr2unet

import torch  # noqa: E402
import yaml  # noqa: E402
from train_throughput import (  # noqa: E402
    PAPER_EPOCHS,
    PAPER_TRAIN_IMAGES,
    plain_images_per_second,
    random_split,
    write_pngs,
)

from mr2unet.training.config import TrainConfig  # noqa: E402
from mr2unet.training.loop import train  # noqa: E402
from mr2unet.training.options import RunOptions, resolve_device  # noqa: E402

MODELS = ("unet", "resunet", "attention_unet", "mr2unet")
# The settings reported (those of params.yaml that decide the speed), where the config has them.
SETTINGS = ("batch_size", "base_width", "precision", "channels_last", "deterministic",
            "compile", "loss", "augment", "lr_schedule")


@dataclasses.dataclass(frozen=True)
class Sizes:
    base_width: int = 64
    image_size: int = 128
    device: str = "cuda"
    plain_images: int = 192  # the plain loop: a warm-up epoch, then plain_epochs timed
    plain_epochs: int = 2


SMOKE = Sizes(base_width=4, image_size=32, device="cpu", plain_images=8, plain_epochs=1)


class _Stop(Exception):  # noqa: N818 - a signal, not an error
    pass


def config(arch: str, sizes: Sizes, epochs: int) -> tuple[TrainConfig, RunOptions]:
    """params.yaml's committed ``train`` and ``run`` settings for ``arch``, at ``sizes``."""
    params = yaml.safe_load((HERE.parent / "params.yaml").read_text())
    cfg = TrainConfig.from_params({"train": params["train"]}, arch)
    options = dataclasses.replace(RunOptions.from_params(params), device=sizes.device,
                                  cpu_threads=None)
    return dataclasses.replace(cfg, base_width=sizes.base_width, epochs=epochs), options


def run_seconds(wall_s: float, epoch_seconds: list[float], epochs: int) -> float:
    """One network's protocol seconds from a run stopped after ``len(epoch_seconds)`` of
    ``epochs`` epochs: the epochs left at the median of those after the first."""
    left = epochs - len(epoch_seconds)
    steady = statistics.median(epoch_seconds[1:] or epoch_seconds)
    return wall_s + (left * steady if left > 0 else 0.0)


def totals(networks: dict[str, dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """Measured (the phase's wall time) when every network finished, else the sum of the
    networks' seconds; ``vs_plain`` = the plain loop's time / ours (> 1: ours is faster)."""
    seconds = [row.get("seconds") for row in networks.values()]
    plain = [row.get("plain_protocol_s") for row in networks.values()]
    measured = bool(networks) and all(row.get("measured") for row in networks.values())
    total = wall_s if measured else (sum(seconds) if networks and None not in seconds else None)
    return {"full_protocol_measured": measured,
            "full_protocol_wall_s": wall_s if measured else None,
            "projected_s": None if measured else total,
            "per_network_s": {a: row.get("seconds") for a, row in networks.items()},
            "vs_plain": sum(plain) / total if total and None not in plain else None}


def plain_seconds(cfg: TrainConfig, sizes: Sizes, images: int, pngs: Path) -> float | None:
    """The plain loop's seconds for ``cfg.epochs`` epochs of ``images`` images."""
    if not any(pngs.iterdir()):
        write_pngs(random_split(sizes.plain_images, sizes.image_size), pngs)
    speed = plain_images_per_second(cfg, resolve_device(sizes.device), pngs,
                                    sizes.plain_images, sizes.plain_epochs)
    return cfg.epochs * images / speed if speed else None


def train_until(cfg: TrainConfig, options: RunOptions, split: Any, deadline: float
                ) -> tuple[bool, list[float]]:
    """Train; stop after the epoch past which another as long would end past ``deadline``.
    (finished, seconds per epoch)."""
    seconds: list[float] = []

    def on_epoch_end(row: dict[str, float]) -> None:
        seconds.append(row["seconds"])
        if time.time() + row["seconds"] > deadline and row["epoch"] < cfg.epochs:
            raise _Stop

    try:
        train(cfg, split, on_epoch_end=on_epoch_end, progress=False, options=options)
        return True, seconds
    except _Stop:
        return False, seconds


def protocol_run(args: argparse.Namespace, sizes: Sizes, data: dict[str, Any], save: Any,
                 deadline: float) -> None:
    split = random_split(args.protocol_images, sizes.image_size)
    networks: dict[str, dict[str, Any]] = {}
    section = {"mode": "ours", "epochs": args.protocol_epochs, "images": len(split),
               "settings": {k: v for part in config(args.models[0], sizes, 1)
                            for k, v in dataclasses.asdict(part).items() if k in SETTINGS},
               "networks": networks, **totals(networks, 0.0)}
    data["protocol_run"] = section
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as pngs:
        for arch in args.models:  # first, so that the protocol's wall time is its own
            networks[arch] = {"finished": False, "measured": False, "epochs_done": 0,
                              "seconds": None, "plain_protocol_s": None}
            try:
                networks[arch]["plain_protocol_s"] = plain_seconds(
                    config(arch, sizes, args.protocol_epochs)[0], sizes, len(split), Path(pngs))
            except Exception as exc:  # noqa: BLE001 - the ratio is then unknown
                networks[arch]["plain_error"] = f"{type(exc).__name__}: {exc}"[:500]
    start = time.time()
    for i, (arch, row) in enumerate(networks.items()):
        cfg, options = config(arch, sizes, args.protocol_epochs)
        share = (deadline - time.time()) / (len(networks) - i)
        began = time.time()
        try:
            finished, epochs = train_until(cfg, options, split, began + share)
            wall = time.time() - began
            row.update(finished=finished, measured=finished, epochs_done=len(epochs),
                       wall_s=wall, epoch_seconds=epochs,
                       seconds=run_seconds(wall, epochs, cfg.epochs) if epochs else None)
        except Exception as exc:  # noqa: BLE001 - record it, run the next network
            row["error"] = f"{type(exc).__name__}: {exc}"[:500]
        row["vs_plain"] = (row["plain_protocol_s"] / row["seconds"]
                           if row["plain_protocol_s"] and row["seconds"] else None)
        print(f"{arch}: {row['epochs_done']} of {cfg.epochs} epochs in "
              f"{row.get('wall_s', 0):.1f} s{' (' + row['error'] + ')' if 'error' in row else ''}",
              flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        section.update(totals(networks, time.time() - start))
        save()
    section["elapsed_s"] = time.time() - start
    data.update(full_protocol_measured=section["full_protocol_measured"],
                full_protocol_wall_s=section["full_protocol_wall_s"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="default: $OUT, else ./gpu_check_out")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="wall-clock seconds for all networks (default 420; 60 with --smoke)")
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--protocol-epochs", type=int, default=PAPER_EPOCHS)
    ap.add_argument("--protocol-images", type=int, default=PAPER_TRAIN_IMAGES)
    ap.add_argument("--smoke", action="store_true", help="tiny networks on the CPU")
    args = ap.parse_args(argv)
    sizes = SMOKE if args.smoke else Sizes()
    budget = args.budget_s or (60.0 if args.smoke else 420.0)
    if sizes.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device; use --smoke for the CPU", file=sys.stderr)
        return 2
    if args.smoke:
        torch.set_num_threads(1)
    out = args.out or Path(os.environ.get("OUT") or "gpu_check_out")
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    data: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if sizes.device == "cuda"
        else f"CPU ({os.cpu_count()} cores)", "torch": torch.__version__,
        "cuda": torch.version.cuda, "smoke": args.smoke, "budget_s": budget,
        "sizes": dataclasses.asdict(sizes), "models": args.models, "phases_done": []}

    def save() -> None:
        data["elapsed_s"] = round(time.time() - start, 1)
        (out / "gpu_check.json").write_text(json.dumps(data, indent=1, default=str) + "\n")

    protocol_run(args, sizes, data, save, start + budget - max(3.0, 0.03 * budget))
    data["phases_done"] = ["e"]
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
