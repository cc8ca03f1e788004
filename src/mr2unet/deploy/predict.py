"""mr2unet predict: segment images with a trained model, at their original size.

For each image, <stem>_mask.png (0 = background, 255 = defect) and <stem>_overlay.png
(defect pixels tinted red on the input) are written at the image's own size. With
--probabilities, also <stem>_prob.png (the defect probability, 8-bit: value = round(255
p)) and <stem>_heatmap.png (the probability in the "jet" colour map, blended 50/50 with
the input). A pixel is a defect where its probability exceeds --threshold (default: the
threshold stored in the model file, chosen on validation images by `evaluate.threshold`;
0.5, exactly the argmax of the two classes, for a model without one). The image is
converted to RGB and resized to the model's input size exactly like `prepare` resizes
(PIL bilinear with reducing_gap=3, i.e. antialiased), squashed or padded to a square as
the model was trained (``prepare.resize``, recorded in the model file; older files:
squash); the predicted mask is cropped to the image's part of the square (pad) and
resized back to the image's own size and aspect with nearest neighbour, the probability
bilinearly: the path of the served model too (mr2unet.models.frames), which answers the
same image with the same mask. Images found inside a directory keep their sub-folders
under --out.
Unreadable files are reported and skipped; the others are still written; the exit code
is 1 if any file failed.
"""

from __future__ import annotations

import argparse
import logging
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from mr2unet.data.images import IMAGE_SUFFIXES, png_bytes, read_rgb
from mr2unet.errors import UserError
from mr2unet.evaluation.probabilities import quantise
from mr2unet.models.checkpoint import load_model
from mr2unet.models.frames import FrameMaps, LoadedModel, frame_maps, loaded_model
from mr2unet.models.inference import check_threshold
from mr2unet.reporting.pictures import overlay
from mr2unet.tracking.registry import download_checkpoint, find_checkpoint
from mr2unet.tracking.runs import resolve_tracking_uri
from mr2unet.training.options import resolve_device

log = logging.getLogger(__name__)
SUFFIXES = IMAGE_SUFFIXES
URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")  # models:/, runs:/, s3://, http://
HEATMAP_COLOURS = "jet"  # matplotlib colour map of <stem>_heatmap.png (anomalib's choice)
HEATMAP_ALPHA = 0.5  # weight of the colour map over the image


@dataclass(frozen=True)
class ImageJob:
    """One input image and the output path prefix (``<prefix>_mask.png``)."""

    path: Path
    out_stem: Path


@dataclass
class PredictResult:
    written: list[Path] = field(default_factory=list)  # inputs whose outputs were written
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (input, reason)


# -------------------------------------------------------------------------- model


def load_predictor(model_ref: str, device: torch.device | str = "cpu",
                   tracking_uri: str | None = None) -> LoadedModel:
    """A model from a ``.pt`` file, a downloaded model folder or an MLflow URI."""
    if URI.match(model_ref) and not Path(model_ref).exists():
        uri = tracking_uri or resolve_tracking_uri({}, Path.cwd())
        with tempfile.TemporaryDirectory(prefix="mr2unet-model-") as tmp:
            module, payload = load_model(download_checkpoint(model_ref, Path(tmp), uri), device)
    else:
        module, payload = load_model(find_checkpoint(Path(model_ref)), device)
    return loaded_model(module, payload, model_ref)


# ------------------------------------------------------------------------- images


def find_images(inputs: Sequence[Path], out_dir: Path) -> list[ImageJob]:
    """Files as given, plus the images inside directories (recursively, sorted).

    A file given directly is written as ``out_dir/<stem>``; one found in a directory
    keeps its sub-folders.  Names that would collide get ``-2``, ``-3``, ... appended.
    """
    jobs: list[ImageJob] = []
    taken: set[Path] = set()
    for given in inputs:
        if given.is_dir():
            found = sorted(p for p in given.rglob("*")
                           if p.suffix.lower() in SUFFIXES and p.is_file())
            pairs = [(p, p.relative_to(given).with_suffix("")) for p in found]
        else:
            pairs = [(given, Path(given.stem))]
        for path, rel in pairs:
            stem, n = out_dir / rel, 1
            while stem in taken:
                n += 1
                stem = out_dir / rel.parent / f"{rel.name}-{n}"
            taken.add(stem)
            jobs.append(ImageJob(path, stem))
    return jobs


def colour_map(levels: np.ndarray, name: str = HEATMAP_COLOURS) -> np.ndarray:
    """uint8 levels ``(H, W)`` -> uint8 RGB ``(H, W, 3)`` through a matplotlib colour map."""
    import matplotlib

    lut = matplotlib.colormaps[name](np.arange(256))[:, :3]
    return np.round(lut * 255).astype(np.uint8)[levels]


def heatmap(rgb: np.ndarray, levels: np.ndarray, alpha: float = HEATMAP_ALPHA) -> np.ndarray:
    """The colour-mapped probability ``levels`` blended over the RGB image."""
    out = (1 - alpha) * rgb.astype(np.float32) + alpha * colour_map(levels).astype(np.float32)
    return np.round(out).astype(np.uint8)


def write_outputs(job: ImageJob, rgb: np.ndarray, maps: FrameMaps) -> None:
    """Write the PNGs of one image's maps (already at the image's size)."""
    job.out_stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{job.out_stem}_mask.png").write_bytes(png_bytes(maps.mask * np.uint8(255)))
    Image.fromarray(overlay(rgb, maps.mask > 0)).save(f"{job.out_stem}_overlay.png")
    if maps.probability is not None:
        levels = quantise(maps.probability)
        Path(f"{job.out_stem}_prob.png").write_bytes(png_bytes(levels))
        Image.fromarray(heatmap(rgb, levels)).save(f"{job.out_stem}_heatmap.png")


def predict_images(model: LoadedModel, paths: Sequence[Path], out_dir: Path,
                   device: torch.device | str = "cpu", batch_size: int = 16,
                   threshold: float | None = None, probabilities: bool = False
                   ) -> PredictResult:
    """Segment ``paths`` (files or directories) in batches; write PNGs to ``out_dir``.

    Masks are ``probability > threshold`` (None: the model's own, ``model.threshold``;
    0.5 is the argmax); ``probabilities`` also writes ``<stem>_prob.png`` and
    ``<stem>_heatmap.png``.
    """
    device = torch.device(device)
    threshold = check_threshold(model.threshold if threshold is None else threshold)
    jobs = find_images([Path(p) for p in paths], Path(out_dir))
    result = PredictResult()
    with tqdm(total=len(jobs), desc="predict", unit="image", disable=len(jobs) < 10) as bar:
        for start in range(0, len(jobs), batch_size):
            batch: list[tuple[ImageJob, np.ndarray]] = []
            for job in jobs[start:start + batch_size]:
                try:
                    batch.append((job, np.asarray(read_rgb(job.path))))
                except Exception as exc:  # noqa: BLE001 - any reason: report it, go on
                    log.error("skipping %s: %s", job.path, exc)
                    result.failed.append((job.path, str(exc)))
            if batch:
                found = frame_maps(model, [rgb for _, rgb in batch], device, batch_size,
                                   threshold, probabilities)
                for (job, rgb), maps in zip(batch, found, strict=True):
                    try:
                        write_outputs(job, rgb, maps)
                        result.written.append(job.path)
                    except OSError as exc:
                        log.error("cannot write %s: %s", job.out_stem, exc)
                        result.failed.append((job.path, str(exc)))
            bar.update(len(jobs[start:start + batch_size]))
    return result


# ---------------------------------------------------------------------------- CLI


def run(args: argparse.Namespace) -> int:
    """``mr2unet predict``: 0 when every image was written, 1 when any failed."""
    inputs, out_dir = [Path(p) for p in args.inputs], Path(args.out)
    if not find_images(inputs, out_dir):
        raise UserError(f"no images in {args.inputs} (directories are searched for "
                        f"{', '.join(SUFFIXES)}).")
    try:
        device = resolve_device(args.device)
    except (UserError, RuntimeError):  # its message names run.device; an odd name
        raise UserError(f"--device {args.device}: not a usable device here; use auto, cpu "
                        "or cuda (with a visible GPU).") from None
    model = load_predictor(args.model, device, args.tracking_uri)
    result = predict_images(model, inputs, out_dir, device, args.batch_size, args.threshold,
                            args.probabilities)
    what = "masks, overlays, probabilities and heatmaps" if args.probabilities \
        else "masks and overlays"
    used = (f"{args.threshold:g}" if args.threshold is not None
            else f"{model.threshold:g}, the model's")
    print(f"wrote {what} of {len(result.written)} images to {args.out} (threshold {used})"
          + (f"; {len(result.failed)} failed:" if result.failed else ""))
    for path, reason in result.failed:
        print(f"  {path}: {reason}")
    return 1 if result.failed else 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _threshold(text: str) -> float:
    try:
        return check_threshold(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a number strictly between 0 and 1, got {text!r}") from None


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``predict`` on the ``mr2unet`` command's subparsers."""
    p = sub.add_parser(
        "predict", help="segment images with a trained model",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  mr2unet predict --model models:/mr2unet-best@champion photo.png --out masks/\n"
               "  mr2unet predict --model data/models/mr2unet.pt images/ --out masks/\n"
               "  mr2unet predict --model data/models/mr2unet.pt images/ --out maps/ "
               "--probabilities --threshold 0.3\n"
               "exit codes: 0 all written, 1 some images failed, 2 bad arguments or model.")
    p.add_argument("--model", required=True,
                   help="a .pt file (data/models/<arch>.pt), a downloaded MLflow model folder, "
                        "or an MLflow URI such as models:/mr2unet-best@champion or "
                        "runs:/<run_id>/model")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR",
                   help=f"image files, or directories searched for {', '.join(SUFFIXES)}")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1")
    p.add_argument("--batch-size", type=_positive_int, default=16,
                   help="images per forward pass (default 16)")
    p.add_argument("--threshold", type=_threshold, default=None, metavar="T",
                   help="a pixel is a defect where its defect probability exceeds T, "
                        "0 < T < 1 (default: the threshold stored in the model file; 0.5, "
                        "the argmax of the two classes, for a model without one)")
    p.add_argument("--probabilities", action="store_true",
                   help="also write <stem>_prob.png (defect probability x 255, 8-bit, at the "
                        "image's size) and <stem>_heatmap.png (colour map over the image)")
    p.add_argument("--tracking-uri",
                   help="MLflow store for models:/ and runs:/ URIs (default "
                        "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the current folder)")
    p.set_defaults(func=run)
    return p
