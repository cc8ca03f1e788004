"""Training throughput: our loop against a plain PyTorch baseline, per model and size.

    python benchmarks/train_throughput.py                  # CPU here, CUDA when present
    python benchmarks/train_throughput.py --models unet --sizes demo --images 64
    python benchmarks/train_throughput.py --quick          # make bench QUICK=1: the check

Training images/s per model and size (``full``: base_width 64; ``demo``: 8) of ``ours``
(:func:`mr2unet.training.loop.train`: the split on the device, on-device batching, bf16 +
channels_last on CUDA) and of a plain loop (:class:`PlainLoop`: PNGs decoded by a
``DataLoader`` every epoch, fp32; gpu_check.py's ``plain`` too), on the same model, data and
batch size, side by side: an epoch of each in turn (:func:`paired_speeds`), so that a load
that comes and goes hits both.  The first epoch of each is warm-up; the ratio is the median
of the per-epoch ratios.  The full size also projects the paper's protocol (4 models x 200
epochs x 1006 images).  ``--quick``: the demo size with the settings of the committed
ratios (:data:`RESULTS`, written by ``--save``), each beside its committed one; exit 1 when
a network is more than the tolerance (10 %) below it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mr2unet.data.prepared import PreparedSplit
from mr2unet.models import build_model
from mr2unet.training.config import TrainConfig
from mr2unet.training.loop import train
from mr2unet.training.options import RunOptions, resolve_device

PAPER_TRAIN_IMAGES = 1006  # 80 % of the paper's 1258 defective images
PAPER_EPOCHS = 200
WIDTHS = {"full": 64, "demo": 8}
MODELS = ("unet", "resunet", "attention_unet", "mr2unet")
RESULTS = Path(__file__).resolve().parent / "results" / "cpu_ratios.json"
TOLERANCE = 0.10  # --quick flags a ratio more than this share below its committed value
# The measurement settings --save records and --quick takes from the committed file.
QUICK_SETTINGS = ("images", "image_size", "batch_size", "epochs", "threads")


def random_split(n: int, size: int, seed: int = 0) -> PreparedSplit:
    """Noise images with rectangular defects; content does not matter for speed."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        y, x = rng.integers(0, size // 2, 2)
        masks[i, y:y + size // 4, x:x + size // 4] = 1
    names = np.array([f"{i:03d}.png" for i in range(n)])
    return PreparedSplit(images, masks, np.array(["bench"] * n), np.array(["d"] * n), names)


class PngDataset(Dataset):
    """The baseline's data path: decode an image and a mask PNG per sample."""

    def __init__(self, root: Path, n: int) -> None:
        self.root, self.n = root, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = np.array(Image.open(self.root / f"{i:03d}.png").convert("RGB"))  # writable
        mask = np.asarray(Image.open(self.root / f"{i:03d}_mask.png")) > 0
        return (torch.from_numpy(image).permute(2, 0, 1).float() / 255,
                torch.from_numpy(mask).long())


def write_pngs(split: PreparedSplit, root: Path) -> None:
    for i in range(len(split)):
        Image.fromarray(split.images[i]).save(root / f"{i:03d}.png")
        Image.fromarray(split.masks[i] * 255).save(root / f"{i:03d}_mask.png")


class PlainLoop:
    """A plain fp32 loop over a DataLoader of PNGs (:func:`write_pngs`), one epoch a call.

    Only the model, batch size, lr and seed of ``cfg`` are used, on ``device``.  Each epoch
    runs with PyTorch's default kernels, whatever the process set before (and sets that back).
    """

    def __init__(self, cfg: TrainConfig, device: torch.device, root: Path, n: int) -> None:
        self.device = device
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.arch, **cfg.model_kwargs()).to(self.device).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.loader = DataLoader(PngDataset(root, n), batch_size=cfg.batch_size, shuffle=True)

    def epoch(self) -> float:
        """Train one epoch; its wall-clock seconds."""
        saved = (torch.are_deterministic_algorithms_enabled(),
                 torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = torch.backends.cudnn.benchmark = False
        try:
            start = time.perf_counter()
            for x, y in self.loader:
                x, y = x.to(self.device), y.to(self.device)
                loss = torch.nn.functional.cross_entropy(self.model(x), y)
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start
        finally:
            torch.use_deterministic_algorithms(saved[0])
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1:]


def plain_images_per_second(cfg: TrainConfig, device: torch.device, root: Path, n: int,
                            epochs: int) -> float:
    """The plain loop's images/s: a warm-up epoch, then ``epochs`` timed ones."""
    loop = PlainLoop(cfg, device, root, n)
    loop.epoch()
    return n * epochs / sum(loop.epoch() for _ in range(epochs))


def steady_images_per_second(history: list[dict[str, float]], n: int, warmup: int = 1) -> float:
    """Training images/s of the epochs after the first ``warmup`` ones (their history)."""
    seconds = sum(row["seconds"] for row in history[warmup:])
    return n * (len(history) - warmup) / seconds


@dataclasses.dataclass(frozen=True)
class Paired:
    """Ours and the plain loop measured side by side: median images/s, median ratio."""

    ours: float
    plain: float
    ratio: float


def paired_speeds(cfg: TrainConfig, options: RunOptions, split: PreparedSplit, root: Path,
                  epochs: int) -> Paired:
    """Our loop and the plain loop (PNGs of ``split`` under ``root``), epoch by epoch.

    Each of our epochs is followed by one plain epoch (run from ``on_epoch_end``, after our
    epoch's time is taken); the first of each is warm-up, then ``epochs`` timed pairs.
    """
    plain = PlainLoop(cfg, resolve_device(options.device), root, len(split))
    plain_seconds: list[float] = []
    result = train(dataclasses.replace(cfg, epochs=epochs + 1), split, progress=False,
                   options=options, on_epoch_end=lambda _row: plain_seconds.append(plain.epoch()))
    ours_seconds = [row["seconds"] for row in result.history][1:]
    plain_seconds = plain_seconds[1:]
    n = len(split)
    return Paired(ours=n / statistics.median(ours_seconds),
                  plain=n / statistics.median(plain_seconds),
                  ratio=statistics.median(p / o for p, o in zip(plain_seconds, ours_seconds,
                                                                 strict=True)))


def bench_options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(device=args.device, compile=args.compile, deterministic=False,
                      cpu_threads=args.threads)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def measure(args: argparse.Namespace, sizes: list[str]) -> dict[str, dict[str, Paired]]:
    """Paired speeds per size and model, printed as a table while they come."""
    device = resolve_device(args.device)
    name = device_name(device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"device: {name} ({device}), torch {torch.__version__}, {torch.get_num_threads()} "
          f"CPU threads, {args.images} images of {args.image_size}px, batch {args.batch_size}, "
          f"{args.epochs} timed epoch pairs")
    split = random_split(args.images, args.image_size)
    header = f"{'model':<15} {'size':<5} {'ours img/s':>11} {'baseline img/s':>15} {'ratio':>6}"
    print(header + ("  committed" if args.quick else ""))
    print("-" * len(header))
    results: dict[str, dict[str, Paired]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_pngs(split, Path(tmp))
        for size in sizes:
            for model in args.models:
                cfg = TrainConfig(arch=model, batch_size=args.batch_size, lr=1e-4,
                                  base_width=WIDTHS[size])
                speed = paired_speeds(cfg, bench_options(args), split, Path(tmp), args.epochs)
                results.setdefault(size, {})[model] = speed
                line = (f"{model:<15} {size:<5} {speed.ours:>11.1f} {speed.plain:>15.1f} "
                        f"{speed.ratio:>5.2f}x")
                print(line + (committed_note(args.committed, model, speed.ratio)
                              if args.quick else ""), flush=True)
    return results


def committed_note(committed: dict[str, Any], model: str, ratio: float) -> str:
    """`` 1.45x`` beside a ratio, with ``REGRESSION`` when it is more than 10 % below."""
    expected = committed["ratios"].get(model)
    if expected is None:
        return "  (none)"
    flag = "  REGRESSION" if is_regression(ratio, expected, committed["tolerance"]) else ""
    return f"  {expected:>8.2f}x{flag}"


def is_regression(ratio: float, committed: float, tolerance: float = TOLERANCE) -> bool:
    """Whether ``ratio`` is more than ``tolerance`` (a share) below the ``committed`` one."""
    return ratio < committed * (1 - tolerance)


def machine() -> str:
    """The CPU's model name (``/proc/cpuinfo``) and core count, or the platform's words."""
    cpuinfo = Path("/proc/cpuinfo")
    model = platform.processor() or platform.machine()
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def save_results(path: Path, args: argparse.Namespace, speeds: dict[str, Paired]) -> None:
    """The demo-size ratios with the settings they were measured at (read by ``--quick``)."""
    payload = {
        "what": "ours/plain training images/s per network, demo size, benchmarks/"
                "train_throughput.py; --quick compares a new measurement with these",
        "command": "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:]),
        "date": date.today().isoformat(),
        "machine": machine(),
        "load_average_1min": round(os.getloadavg()[0], 2),  # other work on the machine
        "torch": torch.__version__,
        "settings": {k: getattr(args, k) for k in QUICK_SETTINGS},
        "tolerance": TOLERANCE,
        "ratios": {m: round(s.ratio, 3) for m, s in speeds.items()},
        "images_per_second": {m: {"ours": round(s.ours, 1), "plain": round(s.plain, 1)}
                              for m, s in speeds.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--sizes", nargs="+", default=["full", "demo"], choices=list(WIDTHS))
    parser.add_argument("--images", type=int, default=None,
                        help="training images (default: 256 on CUDA, 16 on CPU)")
    parser.add_argument("--epochs", type=int, default=2,
                        help="timed epoch pairs after one warm-up pair")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: PyTorch's, one per core)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile our loop")
    parser.add_argument("--quick", action="store_true",
                        help="demo size, with the committed file's settings: each ratio beside "
                             "the committed one, exit 1 on a regression")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="the committed ratios (default benchmarks/results/cpu_ratios.json)")
    parser.add_argument("--save", action="store_true",
                        help="write the demo-size ratios measured to --results")
    args = parser.parse_args()
    sizes = args.sizes
    if args.quick:
        if not args.results.is_file():
            parser.error(f"--quick: no committed ratios at {args.results} (write them with "
                         f"--sizes demo --save)")
        args.committed = json.loads(args.results.read_text())
        vars(args).update(args.committed["settings"])
        sizes = ["demo"]
    if args.images is None:
        args.images = 256 if resolve_device(args.device).type == "cuda" else 16
    results = measure(args, sizes)
    if "full" in results:
        name = device_name(resolve_device(args.device))
        seconds = sum(PAPER_EPOCHS * PAPER_TRAIN_IMAGES / s.ours for s in results["full"].values())
        print(f"projected paper protocol (4 models x {PAPER_EPOCHS} epochs x "
              f"{PAPER_TRAIN_IMAGES} images, full size) on {name}: "
              f"{seconds / 60:.1f} min ({seconds / 3600:.2f} h)")
    if args.save and "demo" in results:
        save_results(args.results, args, results["demo"])
        print(f"wrote {args.results}")
    if args.quick:
        committed, tolerance = args.committed["ratios"], args.committed["tolerance"]
        slow = [m for m, s in results["demo"].items()
                if m in committed and is_regression(s.ratio, committed[m], tolerance)]
        if slow:
            print(f"REGRESSION: {', '.join(slow)} more than "
                  f"{args.committed['tolerance']:.0%} below the committed ratio ({args.results})")
            sys.exit(1)
        print(f"no network more than {args.committed['tolerance']:.0%} below its committed ratio")


if __name__ == "__main__":
    main()
