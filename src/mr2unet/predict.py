"""``mr2unet predict``: segment images with a trained model, at their original size.

For each image, ``<stem>_mask.png`` (0/255) and ``<stem>_overlay.png`` (defects tinted
red) are written at the image's own size: the image is resized to the model's input size
like ``prepare`` does (bilinear, antialiased), and the predicted mask back with nearest
neighbour. Unreadable files are reported and skipped; the exit code is 1 if any failed.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from mr2unet.checkpoint import load_model
from mr2unet.data.prepare import resize_image
from mr2unet.errors import UserError
from mr2unet.evaluate import predict_masks
from mr2unet.report import overlay
from mr2unet.train import resolve_device

log = logging.getLogger(__name__)
SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


@dataclass
class PredictResult:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def find_images(inputs: list[Path]) -> list[Path]:
    """Files as given, plus the images inside given directories (recursively, sorted)."""
    found: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES)
        else:
            found.append(path)
    return found


def predict_images(model: torch.nn.Module, image_size: int, paths: list[Path], out_dir: Path,
                   device: torch.device, batch_size: int = 16) -> PredictResult:
    """Segment ``paths`` in batches; write mask and overlay PNGs to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result = PredictResult()
    for start in tqdm(range(0, len(paths), batch_size), desc="predict", unit="batch",
                      disable=len(paths) <= batch_size):
        batch: list[tuple[Path, np.ndarray]] = []
        for path in paths[start:start + batch_size]:
            try:
                with Image.open(path) as img:
                    batch.append((path, np.asarray(img.convert("RGB"))))
            except (OSError, UnidentifiedImageError, SyntaxError) as exc:
                log.error("skipping %s: %s", path, exc)
                result.failed.append((path, str(exc)))
        if not batch:
            continue
        small = np.stack([resize_image(Image.fromarray(rgb), image_size) for _, rgb in batch])
        masks = predict_masks(model, small, device, batch_size, progress=False)
        for (path, rgb), mask in zip(batch, masks, strict=True):
            full = np.asarray(Image.fromarray(mask * 255).resize(
                (rgb.shape[1], rgb.shape[0]), Image.Resampling.NEAREST))
            stem = out_dir / path.stem
            Image.fromarray(full).save(f"{stem}_mask.png")
            Image.fromarray(overlay(rgb, full > 0)).save(f"{stem}_overlay.png")
            result.written.append(path)
    return result


def load_any(model_ref: str, device: torch.device) -> tuple[torch.nn.Module, int]:
    """A model from a ``.pt`` path or an MLflow ``models:/`` / ``runs:/`` URI."""
    if "://" in model_ref or model_ref.startswith(("models:/", "runs:/")):
        from mr2unet.registry import checkpoint_from_uri

        path = checkpoint_from_uri(model_ref)
    else:
        path = Path(model_ref)
    model, payload = load_model(path, device)
    return model, int(payload["image_size"])


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    model, size = load_any(args.model, device)
    paths = find_images([Path(p) for p in args.inputs])
    if not paths:
        raise UserError(f"no images found in {args.inputs} (looked for {sorted(SUFFIXES)}).")
    result = predict_images(model, size, paths, Path(args.out), device, args.batch_size)
    print(f"wrote masks and overlays for {len(result.written)} images to {args.out}"
          + (f"; {len(result.failed)} failed" if result.failed else ""))
    for path, reason in result.failed:
        print(f"  failed: {path}: {reason}")
    return 1 if result.failed else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="segment images with a trained model",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  mr2unet predict --model models:/mr2unet-best@champion img.png "
               "--out masks/\n  mr2unet predict --model data/models/mr2unet.pt images/ "
               "--out masks/")
    p.add_argument("--model", required=True,
                   help="a .pt file (data/models/<arch>.pt) or an MLflow URI such as "
                        "models:/mr2unet-best@champion (uses $MLFLOW_TRACKING_URI, default "
                        "sqlite:///mlflow.db)")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda")
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=run)
