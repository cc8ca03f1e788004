"""mr2unet export: a trained network as an ONNX file for callers outside Python.

The file holds one graph with a dynamic batch axis and the model's square input size S
(the ``prepare.image_size`` it was trained at):

  input   input               float32 [batch, 3, S, S]  RGB, NCHW, value = pixel / 255
                                                         (no mean subtraction, no std)
  output  logits              float32 [batch, 2, S, S]  class 0 = good, 1 = defect
  output  defect_probability  float32 [batch, S, S]     softmax(logits)[:, 1]

Defect mask: defect_probability > t, with t the model's threshold (``mask.default_threshold``
in the metadata: the one stored in the model file, chosen on validation images by
``evaluate.threshold``, what ``mr2unet predict`` uses; 0.5, exactly logits[:,1] >
logits[:,0], for a model without one). Resize an image to S x S first as ``prepare`` does (bilinear,
antialiased), and the mask back to the image's size with nearest neighbour. The same
contract is written into the file's metadata (``metadata_props``: input.layout,
input.scale, ...), read it with ``onnx.load(path).metadata_props`` or ONNX Runtime's
``InferenceSession.get_modelmeta().custom_metadata_map``; docs/deploy.md has C++/C# notes.

Opset 17 with torch.onnx's TorchScript exporter (the default here: 1-7 s a network on
2 CPU cores), opset 18 with ``--exporter dynamo`` (torch.export based, needs onnxscript;
5-10x slower to export, same graph semantics). The file is checked with ONNX Runtime
against PyTorch on random images before the command returns.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import mr2unet
from mr2unet.config.provenance import file_sha256
from mr2unet.data.transforms import to_input
from mr2unet.deploy.predict import URI
from mr2unet.errors import UserError
from mr2unet.models.checkpoint import load_model, resize_mode, stored_threshold, threshold_record
from mr2unet.models.inference import DEFAULT_THRESHOLD, defect_mask, defect_probability
from mr2unet.tracking.registry import download_checkpoint, find_checkpoint
from mr2unet.tracking.runs import resolve_tracking_uri

EXPORTERS = ("torchscript", "dynamo")
DEFAULT_OPSET = {"torchscript": 17, "dynamo": 18}
INPUT_NAME = "input"
OUTPUT_NAMES = ("logits", "defect_probability")
BATCH_AXIS = "batch"


class OnnxHead(nn.Module):
    """The network plus the softmax: ``x -> (logits, defect probability)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        return logits, defect_probability(logits)


@dataclass(frozen=True)
class ExportResult:
    path: Path
    arch: str
    image_size: int
    opset: int
    exporter: str
    seconds: float  # torch.onnx.export plus writing the metadata
    metadata: dict[str, str]


@dataclass(frozen=True)
class Parity:
    """ONNX Runtime against PyTorch on the same float32 inputs."""

    images: int
    max_abs_logit_diff: float
    mask_agreement: float  # fraction of pixels where the two masks (t=0.5) agree
    max_abs_probability_diff: float

    def summary(self) -> str:
        return (f"max |logit diff| {self.max_abs_logit_diff:.2e}, masks identical on "
                f"{100 * self.mask_agreement:.4f} % of pixels ({self.images} images)")


# -------------------------------------------------------------------------- model


@contextlib.contextmanager
def checkpoint_file(model_ref: str, tracking_uri: str | None = None) -> Iterator[Path]:
    """The ``.pt`` of a path, a downloaded model folder or an MLflow URI (downloaded to
    a temporary folder that lives as long as the ``with`` block)."""
    if URI.match(model_ref) and not Path(model_ref).exists():
        uri = tracking_uri or resolve_tracking_uri({}, Path.cwd())
        with tempfile.TemporaryDirectory(prefix="mr2unet-export-") as tmp:
            yield download_checkpoint(model_ref, Path(tmp), uri)
    else:
        yield find_checkpoint(Path(model_ref))


# How a caller makes a frame the network's S x S input, per ``prepare.resize`` (the model
# file's ``resize``; mr2unet.models.frames does the same for predict and the pyfunc).
_RESIZE_TEXT = {
    "squash": "resize the whole image to {s}x{s} (bilinear, antialiased as PIL with "
              "reducing_gap=3); no crop, no padding",
    "pad": "scale the long side to {s} keeping the aspect ratio (short side rounded, at least "
           "1 px; bilinear, antialiased as PIL with reducing_gap=3), then centre it on a "
           "{s}x{s} square with its edge pixels replicated (the odd pixel of padding right / "
           "below); crop the padding off the mask before resizing it to the image size",
}


def contract(arch: str, image_size: int, opset: int, exporter: str, source: str = "",
             checkpoint_sha256: str = "", threshold: float = DEFAULT_THRESHOLD,
             threshold_rule: str = "", resize: str = "squash") -> dict[str, str]:
    """The ``metadata_props`` written into the file: what a caller needs to feed it
    (``threshold``: the model's mask threshold, ``threshold_rule`` how it was chosen,
    ``resize`` how ``prepare`` made its images square: ``squash`` or ``pad``)."""
    s = image_size
    meta = {
        "mr2unet.arch": arch,
        "mr2unet.image_size": str(s),
        "input.name": INPUT_NAME,
        "input.dtype": "float32",
        "input.shape": f"[{BATCH_AXIS}, 3, {s}, {s}]",
        "input.layout": "NCHW",
        "input.color": "RGB",
        "input.scale": "1/255",
        "input.mean": "0,0,0",
        "input.std": "1,1,1",
        "input.normalisation": "value = uint8 pixel / 255.0; no mean subtraction, no std "
                               "division",
        "input.resize": _RESIZE_TEXT[resize].format(s=s),
        "input.resize_mode": resize,
        "output.logits": f"float32 [{BATCH_AXIS}, 2, {s}, {s}]: class 0 good, class 1 defect",
        "output.defect_probability": f"float32 [{BATCH_AXIS}, {s}, {s}]: softmax(logits)[:, 1]",
        "mask.rule": "defect where defect_probability > threshold (mask.default_threshold, "
                     "what mr2unet predict uses); threshold 0.5 equals logits[:,1] > "
                     "logits[:,0]; resize the mask to the image size with nearest neighbour",
        "mask.default_threshold": f"{threshold:g}",
        "mask.threshold_rule": threshold_rule,
        "onnx.opset": str(opset),
        "onnx.exporter": f"torch.onnx ({exporter}), torch {torch.__version__}",
        "mr2unet.version": mr2unet.__version__,
    }
    if source:
        meta["mr2unet.source"] = source
    if checkpoint_sha256:
        meta["mr2unet.checkpoint_sha256"] = checkpoint_sha256
    return {k: v for k, v in meta.items() if v}


def export_onnx(model: nn.Module, arch: str, image_size: int, out: str | Path,
                exporter: str = "torchscript", opset: int | None = None, source: str = "",
                checkpoint_sha256: str = "", threshold: float = DEFAULT_THRESHOLD,
                threshold_rule: str = "", resize: str = "squash") -> ExportResult:
    """Write ``model`` (eval mode, CPU) as ONNX to ``out`` with the metadata of :func:`contract`."""
    import onnx

    if exporter not in EXPORTERS:
        raise UserError(f"--exporter {exporter}: use one of {', '.join(EXPORTERS)}.")
    opset = int(opset or DEFAULT_OPSET[exporter])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    head = OnnxHead(model).to("cpu").eval()
    example = torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    tmp = out.with_name(out.name + ".tmp")
    start = time.perf_counter()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo (still in torch 2.13);
        # the tracer notes that the input-size check becomes a constant: S is fixed here.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        with torch.no_grad():
            if exporter == "torchscript":
                torch.onnx.export(
                    head, (example,), str(tmp), dynamo=False, opset_version=opset,
                    input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                    dynamic_axes={n: {0: BATCH_AXIS} for n in (INPUT_NAME, *OUTPUT_NAMES)})
            else:
                _export_dynamo(head, example, tmp, opset)
    proto = onnx.load(str(tmp))
    opset_written = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    meta = contract(arch, image_size, opset_written, exporter, source, checkpoint_sha256,
                    threshold, threshold_rule, resize)
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = (f"mr2unet {arch}: defect segmentation of RGB images resized to "
                        f"{image_size}x{image_size}; inputs and outputs in metadata_props.")
    proto.producer_name = "mr2unet"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    tmp.replace(out)
    return ExportResult(out, arch, image_size, opset_written, exporter,
                        time.perf_counter() - start, meta)


def _export_dynamo(head: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    try:
        import onnxscript  # noqa: F401 - the dynamo exporter needs it
    except ImportError:
        raise UserError("--exporter dynamo needs onnxscript (pip install onnxscript); or use "
                        "the default --exporter torchscript.") from None
    import logging

    # The exporter prints its progress; it and its optimiser log at INFO (and warn about
    # torchvision ops this graph never uses).
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnx_ir", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(None), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                head, (example,), str(path), dynamo=True, opset_version=opset,
                input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                dynamic_shapes=({0: torch.export.Dim(BATCH_AXIS)},), external_data=False,
                verbose=False)
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_checkpoint(checkpoint: str | Path, out: str | Path, exporter: str = "torchscript",
                      opset: int | None = None, source: str = "") -> ExportResult:
    """Export the network stored in ``checkpoint`` (a ``.pt`` written by training)."""
    model, payload = load_model(checkpoint)
    chosen = threshold_record(payload) or {}
    return export_onnx(model, payload["arch"], int(payload["image_size"]), out, exporter, opset,
                       source or str(checkpoint), file_sha256(checkpoint),
                       stored_threshold(payload), str(chosen.get("rule", "")),
                       resize_mode(payload))


# ------------------------------------------------------------------------- checks


def onnx_session(path: str | Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an exported file, as ONNX Runtime reports them."""
    return dict(onnx_session(path).get_modelmeta().custom_metadata_map)


def run_onnx(session: Any, images: np.ndarray, batch_size: int = 16
             ) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``(N, S, S, 3)`` -> ONNX Runtime's (logits, defect probability)."""
    logits, probs = [], []
    for start in range(0, len(images), batch_size):
        x = to_input(torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])))
        z, p = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x.numpy()})
        logits.append(z)
        probs.append(p)
    return np.concatenate(logits), np.concatenate(probs)


@torch.inference_mode()
def check_parity(onnx_path: str | Path, model: nn.Module, images: np.ndarray,
                 batch_size: int = 16) -> Parity:
    """Compare ONNX Runtime with ``model`` on uint8 ``(N, S, S, 3)`` images."""
    logits_onnx, probs_onnx = run_onnx(onnx_session(onnx_path), images, batch_size)
    model = model.to("cpu").eval()
    logits_torch = torch.cat([
        model(to_input(torch.from_numpy(np.ascontiguousarray(images[s:s + batch_size]))))
        for s in range(0, len(images), batch_size)])
    z_onnx = torch.from_numpy(logits_onnx)
    same = (defect_mask(z_onnx) == defect_mask(logits_torch)).float().mean().item()
    return Parity(
        images=len(images),
        max_abs_logit_diff=float((z_onnx - logits_torch).abs().max()),
        mask_agreement=float(same),
        max_abs_probability_diff=float(
            (torch.from_numpy(probs_onnx) - defect_probability(logits_torch)).abs().max()))


def random_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------- CLI


def run(args: argparse.Namespace) -> int:
    """``mr2unet export``: write the file, check it with ONNX Runtime, print what it is."""
    if args.format != "onnx":
        raise UserError(f"--format {args.format}: only onnx is supported.")
    with checkpoint_file(args.model, args.tracking_uri) as checkpoint:
        result = export_checkpoint(checkpoint, args.out, args.exporter, args.opset,
                                   source=args.model)
        model, _ = load_model(checkpoint)
    parity = check_parity(result.path, model, random_images(4, result.image_size))
    if parity.max_abs_logit_diff > 1e-3:
        raise UserError(f"{result.path}: ONNX Runtime disagrees with PyTorch "
                        f"({parity.summary()}); try --exporter dynamo.")
    s = result.image_size
    print(f"wrote {result.path} ({result.path.stat().st_size / 1e6:.1f} MB): {result.arch}, "
          f"opset {result.opset}, exported in {result.seconds:.1f}s ({result.exporter})\n"
          f"  input  {INPUT_NAME}: float32 [batch, 3, {s}, {s}], RGB, NCHW, pixel / 255\n"
          f"  output logits: float32 [batch, 2, {s}, {s}]; defect_probability: float32 "
          f"[batch, {s}, {s}]\n"
          f"  ONNX Runtime vs PyTorch on 4 random images: {parity.summary()}")
    if args.print_metadata:
        print(json.dumps(result.metadata, indent=2))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``export`` on the ``mr2unet`` command's subparsers."""
    p = sub.add_parser(
        "export", help="export a trained model to ONNX for C++/C#/... callers",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  mr2unet export --model models:/mr2unet-best@champion --format onnx "
               "--out model.onnx\n"
               "  mr2unet export --model data/models/mr2unet.pt --out mr2unet.onnx\n"
               "exit codes: 0 written and checked, 2 bad arguments, model or failed check.")
    p.add_argument("--model", required=True,
                   help="a .pt file (data/models/<arch>.pt), a downloaded MLflow model folder, "
                        "or an MLflow URI such as models:/mr2unet-best@champion")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="onnx (the default)")
    p.add_argument("--out", required=True, help="the file to write, e.g. model.onnx")
    p.add_argument("--exporter", default="torchscript", choices=EXPORTERS,
                   help="torch.onnx's TorchScript exporter (default, fast, opset 17) or its "
                        "torch.export-based one (dynamo, opset 18)")
    p.add_argument("--opset", type=int, default=None,
                   help="ONNX opset (default 17 for torchscript, 18 for dynamo)")
    p.add_argument("--tracking-uri",
                   help="MLflow store for models:/ and runs:/ URIs (default "
                        "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the current folder)")
    p.add_argument("--print-metadata", action="store_true",
                   help="also print the metadata written into the file, as JSON")
    p.set_defaults(func=run)
    return p
