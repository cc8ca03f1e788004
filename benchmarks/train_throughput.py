"""Training throughput: our loop against a plain PyTorch baseline, per model and size.

    python benchmarks/train_throughput.py                  # CPU here, CUDA when present
    python benchmarks/train_throughput.py --models unet --sizes demo --images 64

For every model and size (``full`` = base_width 64, the papers' networks; ``demo`` =
base_width 8) it measures training images/s of

* ``ours``: :func:`mr2unet.training.loop.train` - the split as one uint8 tensor on the device,
  on-device batching, bf16 autocast + channels_last on CUDA (and ``--compile``);
* ``baseline``: a plain loop (:func:`plain_images_per_second`) - PNG files decoded by a
  ``DataLoader`` every epoch, fp32, no channels_last, no compile - on the same model, data
  and batch size (``benchmarks/gpu_check.py`` reuses it as its ``plain`` loop),

and prints the ratio.  From our full-size epoch time it projects the paper's protocol:
4 models x 200 epochs x 1006 training images.  Needs only torch, numpy and pillow.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mr2unet.data.prepared import PreparedSplit
from mr2unet.models import build_model
from mr2unet.training.loop import TrainConfig, resolve_device, train

PAPER_TRAIN_IMAGES = 1006  # 80 % of the paper's 1258 defective images
PAPER_EPOCHS = 200
WIDTHS = {"full": 64, "demo": 8}


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


def plain_images_per_second(cfg: TrainConfig, root: Path, n: int, epochs: int) -> float:
    """A plain fp32 loop over a DataLoader of PNGs (:func:`write_pngs`); the first epoch is
    warm-up, then ``epochs`` timed ones.  Only the model, batch size, lr and seed of ``cfg``
    are used."""
    device = resolve_device(cfg.device)
    # PyTorch's defaults, whatever an earlier run in this process switched on.
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = torch.backends.cudnn.benchmark = False
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, **cfg.model_kwargs()).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loader = DataLoader(PngDataset(root, n), batch_size=cfg.batch_size, shuffle=True)
    timed = 0.0
    for epoch in range(epochs + 1):
        start = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if epoch > 0:
            timed += time.perf_counter() - start
    return n * epochs / timed


def steady_images_per_second(history: list[dict[str, float]], n: int, warmup: int = 1) -> float:
    """Training images/s of the epochs after the first ``warmup`` ones (their history)."""
    seconds = sum(row["seconds"] for row in history[warmup:])
    return n * (len(history) - warmup) / seconds


def ours_images_per_second(cfg: TrainConfig, split: PreparedSplit, epochs: int) -> float:
    """Our loop; per-epoch times come from its history (first epoch is warm-up)."""
    result = train(dataclasses.replace(cfg, epochs=epochs + 1), split, progress=False)
    return steady_images_per_second(result.history, len(split))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+",
                        default=["unet", "resunet", "attention_unet", "mr2unet"])
    parser.add_argument("--sizes", nargs="+", default=["full", "demo"], choices=list(WIDTHS))
    parser.add_argument("--images", type=int, default=None,
                        help="training images (default: 256 on CUDA, 16 on CPU)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile our loop")
    args = parser.parse_args()

    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    n = args.images or (256 if device.type == "cuda" else 16)
    threads = torch.get_num_threads()
    print(f"device: {name} ({device}), torch {torch.__version__}, {threads} CPU threads, "
          f"{n} images of {args.image_size}px, batch {args.batch_size}, "
          f"{args.epochs} timed epochs")
    split = random_split(n, args.image_size)
    header = f"{'model':<15} {'size':<5} {'ours img/s':>11} {'baseline img/s':>15} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    full_projection = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        write_pngs(split, Path(tmp))
        for size in args.sizes:
            for model in args.models:
                cfg = TrainConfig(arch=model, batch_size=args.batch_size, lr=1e-4,
                                  base_width=WIDTHS[size], device=args.device,
                                  compile=args.compile, deterministic=False)
                ours = ours_images_per_second(cfg, split, args.epochs)
                base = plain_images_per_second(cfg, Path(tmp), n, args.epochs)
                print(f"{model:<15} {size:<5} {ours:>11.1f} {base:>15.1f} {ours / base:>5.2f}x",
                      flush=True)
                if size == "full":
                    full_projection += PAPER_EPOCHS * PAPER_TRAIN_IMAGES / ours
    if full_projection:
        print(f"projected paper protocol (4 models x {PAPER_EPOCHS} epochs x "
              f"{PAPER_TRAIN_IMAGES} images, full size) on {name}: "
              f"{full_projection / 60:.1f} min ({full_projection / 3600:.2f} h)")


if __name__ == "__main__":
    main()
