"""The MLflow flavour of a trained model: a pyfunc logged as code around the ``.pt`` checkpoint.

``mlflow.pyfunc.load_model(uri).predict(frames, params=...)`` and ``mlflow models serve``
take camera frames **of any size** (up to :data:`MAX_FRAME_SIDE` px a side), for every
model (resize or tiles), in either of two forms:

- uint8 RGB frames ``(N, H, W, 3)`` of one size (JSON: ``{"inputs": [[[[r, g, b], ...]]]}``;
  integers 0-255);
- encoded images, base64 strings of PNG, JPEG, BMP or TIFF files (JSON:
  ``{"inputs": {"image": ["<base64>", ...]}}``; frames may differ in size), decoded by the
  reader ``prepare`` and ``mr2unet predict`` use (:func:`mr2unet.data.images.read_rgb`).

Each frame goes through :func:`mr2unet.models.frames.frame_maps`, the path of
``mr2unet predict``: pre-processed as the model file records (``prepare``'s resize, squash
or pad, or sliding windows), predicted, and its map brought back to the frame's own size.
The answer, per frame, at the frame's size:

- ``params={"output": "mask"}`` (default): uint8 masks, 1 = defect, where the defect
  probability exceeds ``threshold`` (default: the threshold stored in the model file,
  :func:`mr2unet.models.checkpoint.stored_threshold`; 0.5, exactly the argmax, for a model
  without one); ``"probabilities"``: float32 defect probabilities;
- ``params={"encoding": "array"}`` (default): an array ``(N, H, W)`` (a list of arrays
  when the frames differ in size); ``"png"``: one base64 PNG string per frame, the bytes
  of ``mr2unet predict``'s ``<stem>_mask.png`` (0/255) or ``<stem>_prob.png``
  (``round(255 p)``).

A bad request (no frames, bytes that are no image, a frame over the limit, a wrong
shape or value, an unknown param) raises an ``MlflowException`` with
INVALID_PARAMETER_VALUE, which ``mlflow models serve`` answers with 400.

**Signature.** MLflow's input schema is either tensors (each required) or columns, so no
schema admits both a uint8 tensor and a column of strings: the signature declares the
params only (``output``, ``threshold`` with the model's own as its default, ``encoding``)
and the model checks its input itself; the two input forms and the limit are written in
the MLmodel's ``metadata`` (:func:`model_metadata`) and docs/deploy.md.

Nothing executable is pickled. The model is logged with MLflow's *models from code*: the
logged model holds :mod:`mr2unet.tracking.model_code` (a few lines that build
:class:`SegmentationModel`), the source of the ``mr2unet`` package (``code/mr2unet``, no
bytecode) and the checkpoint as an artifact, which :func:`mr2unet.models.checkpoint.read_checkpoint`
reads with ``torch.load(weights_only=True)`` (tensors and plain values only). Plain PyTorch
users download the checkpoint and call :func:`mr2unet.models.checkpoint.load_model` (what
``mr2unet predict`` does). We avoid ``mlflow.pytorch.log_model``: MLflow 3 exports ``pt2``
programs that fix the batch size to the input example's.
"""

from __future__ import annotations

import base64
import binascii
import re
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ParamSchema, ParamSpec

import mr2unet
from mr2unet.data.images import ImageTooLarge, png_bytes, read_rgb
from mr2unet.errors import UserError
from mr2unet.evaluation.probabilities import quantise
from mr2unet.models.checkpoint import (
    load_model,
    read_checkpoint,
    resize_mode,
    stored_threshold,
)
from mr2unet.models.frames import FrameMaps, LoadedModel, frame_maps, loaded_model
from mr2unet.models.inference import DEFAULT_THRESHOLD, check_threshold
from mr2unet.models.tiling import tiling_of

MODEL_CODE = Path(__file__).with_name("model_code.py")
MAX_FRAME_SIDE = 8192  # px: the widest or tallest frame the served model takes
IMAGE_KEY = "image"  # {"inputs": {"image": [<base64>, ...]}}
OUTPUTS = ("mask", "probabilities")
ENCODINGS = ("array", "png")
DEFAULT_PARAMS: dict[str, Any] = {"output": "mask", "threshold": DEFAULT_THRESHOLD,
                                  "encoding": "array"}
BATCH_SIZE = 16  # frames (resize mode) or windows (tiles) per forward pass
DATA_URL = re.compile(r"^data:[^,]*;base64,")  # an optional "data:image/png;base64," prefix


def _bad_request(message: str) -> MlflowException:
    # INVALID_PARAMETER_VALUE: `mlflow models serve` answers 400, not 500
    return MlflowException.invalid_parameter_value(message)


class SegmentationModel(mlflow.pyfunc.PythonModel):
    """Frames of any size (uint8 ``(N, H, W, 3)`` or base64 images) -> masks or
    probabilities at each frame's size (arrays or base64 PNGs)."""

    def load_context(self, context: Any) -> None:
        module, payload = load_model(context.artifacts["checkpoint"])
        self.model: LoadedModel = loaded_model(module, payload, "pyfunc")

    # np.ndarray is one of the type hints MLflow 3 accepts without deriving a schema from it
    # (mlflow.types.type_hints): the explicit signature of log_segmentation_model stays the
    # model's, and MLflow no longer warns that predict has no type hints. The input may
    # also be a dict or DataFrame of base64 strings (a list of arrays or strings out).
    def predict(self, context: Any, model_input: np.ndarray,
                params: dict[str, Any] | None = None) -> np.ndarray:
        options = {**default_params(self.model.threshold), **(params or {})}
        for name, allowed in (("output", OUTPUTS), ("encoding", ENCODINGS)):
            if options[name] not in allowed:
                raise _bad_request(f"params.{name} must be one of {', '.join(allowed)}, "
                                   f"got {options[name]!r}")
        try:
            threshold = check_threshold(options["threshold"])
        except (TypeError, ValueError) as exc:
            raise _bad_request(f"params.threshold: {exc}") from None
        try:
            frames = frames_of(model_input)
        except UserError as exc:
            raise _bad_request(str(exc)) from None
        maps = frame_maps(self.model, frames, "cpu", BATCH_SIZE, threshold,
                          probabilities=options["output"] == "probabilities")
        return answer(maps, options["output"], options["encoding"])  # type: ignore[return-value]


# ------------------------------------------------------------------------ the request


def frames_of(model_input: Any, max_side: int = MAX_FRAME_SIDE) -> list[np.ndarray]:
    """The uint8 RGB frames ``(H, W, 3)`` of a request: a uint8/integer array ``(N, H, W,
    3)``, or base64 images as ``{"image": [...]}``, a DataFrame with an ``image`` column or
    a plain list of strings. A UserError says what is wrong with the first bad frame."""
    if isinstance(model_input, pd.DataFrame):
        if list(model_input.columns) != [IMAGE_KEY]:
            raise UserError(f"expected one column {IMAGE_KEY!r} of base64 images, got "
                            f"columns {list(model_input.columns)}")
        return decode_frames(model_input[IMAGE_KEY].tolist(), max_side)
    if isinstance(model_input, dict):
        if list(model_input) != [IMAGE_KEY]:
            raise UserError(f"expected {{{IMAGE_KEY!r}: [<base64 image>, ...]}}, got the "
                            f"keys {list(model_input)}")
        return decode_frames(list(np.asarray(model_input[IMAGE_KEY], dtype=object).ravel()),
                             max_side)
    array = np.asarray(model_input)
    if array.dtype.kind in "USO":
        return decode_frames(list(array.astype(object).ravel()), max_side)
    return tensor_frames(array, max_side)


def tensor_frames(array: np.ndarray, max_side: int = MAX_FRAME_SIDE) -> list[np.ndarray]:
    """The frames of an integer array ``(N, H, W, 3)`` with values 0-255, as uint8."""
    if array.size == 0:
        raise UserError("the request holds no frames: send at least one image")
    if array.ndim != 4 or array.shape[-1] != 3:
        raise UserError(f"expected RGB frames of shape (N, H, W, 3), got shape "
                        f"{array.shape}")
    _check_size(array.shape[2], array.shape[1], max_side, "the frames")
    if array.dtype != np.uint8:
        if array.dtype.kind not in "iu" or array.min() < 0 or array.max() > 255:
            raise UserError(f"pixel values must be integers 0-255, got {array.dtype} "
                            f"values from {array.min()} to {array.max()}")
        array = array.astype(np.uint8)
    return list(array)


def decode_frames(encoded: list[Any], max_side: int = MAX_FRAME_SIDE) -> list[np.ndarray]:
    """Base64 strings (or raw bytes) of encoded images -> uint8 RGB frames."""
    if not encoded:
        raise UserError("the request holds no frames: send at least one image")
    frames = []
    for n, item in enumerate(encoded):
        if isinstance(item, str):
            try:
                data = base64.b64decode(DATA_URL.sub("", item.strip()), validate=True)
            except (binascii.Error, ValueError) as exc:
                raise UserError(f"frame {n}: not base64 ({exc})") from None
        elif isinstance(item, bytes):
            data = item
        else:
            raise UserError(f"frame {n}: expected a base64 string, got {type(item).__name__}")
        try:
            frames.append(np.asarray(read_rgb(data, max_side)))
        except ImageTooLarge as exc:
            raise UserError(f"frame {n}: {exc}") from None
        except ValueError as exc:
            raise UserError(f"frame {n}: {exc}: send the bytes of a PNG, JPEG, BMP or TIFF "
                            "file, base64-encoded") from None
    return frames


def _check_size(width: int, height: int, max_side: int, what: str) -> None:
    if max(width, height) > max_side:
        raise UserError(f"{what} are {width}x{height} px, larger than the limit of "
                        f"{max_side}x{max_side} px")


# ------------------------------------------------------------------------- the answer


def answer(maps: list[FrameMaps], output: str, encoding: str) -> np.ndarray | list[Any]:
    """The frames' masks (or probabilities): one array ``(N, H, W)`` when all frames have
    one size, else a list; with ``encoding="png"`` a list of base64 PNG strings."""
    if output == "mask":
        arrays = [m.mask for m in maps]
    else:
        arrays = [m.probability for m in maps if m.probability is not None]
    if encoding == "png":
        levels = [a * np.uint8(255) if output == "mask" else quantise(a) for a in arrays]
        return [base64.b64encode(png_bytes(level)).decode("ascii") for level in levels]
    if len({a.shape for a in arrays}) == 1:
        return np.stack(arrays)
    return arrays


def _requirements() -> list[str]:
    names = ("torch", "numpy", "pyyaml", "pillow", "mlflow")
    return [f"{n}=={version(n).split('+')[0]}" for n in names]


def _package_source(dest: Path) -> Path:
    """A copy of the ``mr2unet`` package without ``__pycache__``: source only."""
    target = dest / "mr2unet"
    shutil.copytree(Path(mr2unet.__file__).parent, target,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"))
    return target


def default_params(threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """The params a request gets by default: masks at the model's ``threshold``, as arrays."""
    return {**DEFAULT_PARAMS, "threshold": float(threshold)}


def signature(threshold: float = DEFAULT_THRESHOLD) -> Any:
    """The params (default threshold: the model's) and no input or output schema: the
    model takes two input forms and checks them itself (see the module docstring)."""
    defaults = default_params(threshold)
    return ModelSignature(params=ParamSchema([
        ParamSpec("output", "string", defaults["output"]),
        ParamSpec("threshold", "double", defaults["threshold"]),
        ParamSpec("encoding", "string", defaults["encoding"])]))


def model_metadata(payload: dict[str, Any]) -> dict[str, Any]:
    """What the MLmodel file says about the input and output (its ``metadata``)."""
    tiling = tiling_of(payload)
    return {"mr2unet": {
        "inputs": {
            "tensor": "uint8 RGB frames (N, H, W, 3) of one size: "
                      '{"inputs": [[[[r, g, b], ...], ...], ...]}',
            IMAGE_KEY: "base64 PNG/JPEG/BMP/TIFF images of any sizes: "
                       f'{{"inputs": {{"{IMAGE_KEY}": ["<base64>", ...]}}}}'},
        "max_frame_side": MAX_FRAME_SIDE,
        "outputs": "per frame, at its size: uint8 mask 1 = defect (output=mask) or float32 "
                   "probability (output=probabilities); arrays (encoding=array) or base64 "
                   "PNG strings, mask 0/255, probability round(255 p) (encoding=png)",
        "image_size": int(payload["image_size"]),
        "resize": resize_mode(payload),
        "tiling": None if tiling is None else tiling.as_dict()}}


def input_example() -> dict[str, list[str]]:
    """A 4x4 gray PNG in the encoded form: the MLmodel's serving example."""
    return {IMAGE_KEY: [base64.b64encode(png_bytes(np.full((4, 4, 3), 128, np.uint8)))
                        .decode("ascii")]}


def log_segmentation_model(checkpoint: Path) -> Any:
    """Log ``checkpoint`` as a pyfunc model named ``model`` in the active run (as code)."""
    payload = read_checkpoint(checkpoint)
    with tempfile.TemporaryDirectory(prefix="mr2unet-code-") as tmp:
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={"checkpoint": str(checkpoint)},
            code_paths=[str(_package_source(Path(tmp)))],
            signature=signature(stored_threshold(payload)),
            input_example=input_example(),
            metadata=model_metadata(payload),
            pip_requirements=_requirements(),
        )
