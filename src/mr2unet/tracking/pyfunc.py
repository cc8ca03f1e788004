"""The MLflow flavour of a trained model: a pyfunc logged as code around the ``.pt`` checkpoint.

``mlflow.pyfunc.load_model(uri).predict(images, params=...)`` takes uint8 ``(N, S, S, 3)``
RGB images (any N, S the model's input size) and returns

- ``params={"output": "mask"}`` (default): uint8 ``(N, S, S)`` masks, 1 = defect, where the
  defect probability exceeds ``threshold`` (default: the threshold stored in the model file,
  :func:`mr2unet.models.checkpoint.stored_threshold`; 0.5, exactly the argmax, for a model
  without one);
- ``params={"output": "probabilities"}``: float32 ``(N, S, S)`` defect probabilities.

Both params are declared in the model signature, the threshold with the model's own as
its default, so ``mlflow models serve`` accepts them in the request's ``"params"`` and a
request without ``threshold`` gets the model's masks (docs/deploy.md).

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

import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException

import mr2unet
from mr2unet.data.transforms import to_input
from mr2unet.models.checkpoint import load_model, read_checkpoint, stored_threshold
from mr2unet.models.inference import (
    DEFAULT_THRESHOLD,
    check_threshold,
    defect_mask,
    defect_probability,
)
from mr2unet.models.tiling import tiling_of, whole_image_logits

MODEL_CODE = Path(__file__).with_name("model_code.py")
OUTPUTS = ("mask", "probabilities")
DEFAULT_PARAMS: dict[str, Any] = {"output": "mask", "threshold": DEFAULT_THRESHOLD}
BATCH_SIZE = 16  # images per forward pass: bounds the memory a large request needs


def _bad_request(message: str) -> MlflowException:
    # INVALID_PARAMETER_VALUE: `mlflow models serve` answers 400, not 500
    return MlflowException.invalid_parameter_value(message)


class SegmentationModel(mlflow.pyfunc.PythonModel):
    """uint8 images ``(N, S, S, 3)`` -> uint8 masks or float32 probabilities ``(N, S, S)``."""

    def load_context(self, context: Any) -> None:
        self.model, payload = load_model(context.artifacts["checkpoint"])
        self.image_size = int(payload["image_size"])
        self.threshold = stored_threshold(payload)  # params.threshold's default
        # a model trained on tiles: images of any size, predicted by sliding windows
        self.tiling = tiling_of(payload)

    # np.ndarray is one of the type hints MLflow 3 accepts without deriving a schema from it
    # (mlflow.types.type_hints): the explicit tensor signature of log_segmentation_model
    # stays the model's, and MLflow no longer warns that predict has no type hints.
    def predict(self, context: Any, model_input: np.ndarray,
                params: dict[str, Any] | None = None) -> np.ndarray:
        options = {**default_params(self.threshold), **(params or {})}
        if options["output"] not in OUTPUTS:
            raise _bad_request(f"params.output must be one of {', '.join(OUTPUTS)}, "
                               f"got {options['output']!r}")
        try:
            threshold = check_threshold(options["threshold"])
        except (TypeError, ValueError) as exc:
            raise _bad_request(f"params.threshold: {exc}") from None
        images = np.asarray(model_input)
        if self.tiling is not None:
            return self._predict_tiled(images, options["output"], threshold)
        s = self.image_size
        if images.ndim != 4 or images.shape[1:] != (s, s, 3) or images.dtype != np.uint8:
            raise _bad_request(f"expected uint8 RGB images of shape (N, {s}, {s}, 3), got "
                               f"{images.dtype} {images.shape}: resize them to {s}x{s} first")
        outputs = []
        with torch.inference_mode():
            for start in range(0, len(images), BATCH_SIZE):
                batch = torch.from_numpy(np.ascontiguousarray(images[start:start + BATCH_SIZE]))
                logits = self.model(to_input(batch))
                outputs.append(defect_mask(logits, threshold) if options["output"] == "mask"
                               else defect_probability(logits))
        if not outputs:
            dtype = np.uint8 if options["output"] == "mask" else np.float32
            return np.zeros((0, s, s), dtype)
        return torch.cat(outputs).numpy()

    def _predict_tiled(self, images: np.ndarray, output: str, threshold: float) -> np.ndarray:
        """uint8 ``(N, H, W, 3)`` of any one size -> ``(N, H, W)``, each image predicted
        by sliding windows as ``mr2unet predict`` does."""
        assert self.tiling is not None
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise _bad_request(f"expected uint8 RGB images of shape (N, H, W, 3), got "
                               f"{images.dtype} {images.shape}")
        outputs = []
        with torch.inference_mode():
            for rgb in images:
                logits = whole_image_logits(self.model, rgb, self.tiling, "cpu", BATCH_SIZE)
                outputs.append(defect_mask(logits, threshold) if output == "mask"
                               else defect_probability(logits))
        if not outputs:
            return np.zeros((0, *images.shape[1:3]), np.uint8 if output == "mask"
                            else np.float32)
        return torch.cat(outputs).numpy()


def _requirements() -> list[str]:
    from importlib.metadata import version

    names = ("torch", "numpy", "pyyaml", "pillow", "mlflow")
    return [f"{n}=={version(n).split('+')[0]}" for n in names]


def _package_source(dest: Path) -> Path:
    """A copy of the ``mr2unet`` package without ``__pycache__``: source only."""
    target = dest / "mr2unet"
    shutil.copytree(Path(mr2unet.__file__).parent, target,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"))
    return target


def default_params(threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """The params a request gets by default: masks at the model's ``threshold``."""
    return {**DEFAULT_PARAMS, "threshold": float(threshold)}


def signature(image_size: int, tiled: bool = False, threshold: float = DEFAULT_THRESHOLD
              ) -> Any:
    """Tensor in/out schema (uint8 ``(-1, S, S, 3)`` -> ``(-1, S, S)``; a tiled model:
    ``(-1, -1, -1, 3)`` -> ``(-1, -1, -1)``, any image size) and the params (default
    threshold: the model's)."""
    example = np.zeros((1, image_size, image_size, 3), dtype=np.uint8)
    inferred = mlflow.models.infer_signature(
        example, np.zeros((1, image_size, image_size), np.uint8),
        params=default_params(threshold))
    if not tiled:
        return inferred
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
                          outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1))]),
                          params=inferred.params)


def log_segmentation_model(checkpoint: Path) -> Any:
    """Log ``checkpoint`` as a pyfunc model named ``model`` in the active run (as code)."""
    payload = read_checkpoint(checkpoint)
    size = int(payload["image_size"])
    example = np.zeros((1, size, size, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="mr2unet-code-") as tmp:
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={"checkpoint": str(checkpoint)},
            code_paths=[str(_package_source(Path(tmp)))],
            signature=signature(size, tiled=tiling_of(payload) is not None,
                                threshold=stored_threshold(payload)),
            input_example=example,
            pip_requirements=_requirements(),
        )
