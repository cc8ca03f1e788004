"""The MLflow flavour of a trained model: a pyfunc wrapping the ``.pt`` checkpoint.

``mlflow.pyfunc.load_model(uri).predict(images)`` takes uint8 ``(N, S, S, 3)`` images
(any N) and returns uint8 ``(N, S, S)`` masks (1 = defect).  The checkpoint itself is
an artifact of the logged model, so plain PyTorch users download it and call
:func:`mr2unet.checkpoint.load_model` (what ``mr2unet predict`` does).
We avoid ``mlflow.pytorch.log_model``: MLflow 3 exports ``pt2`` programs that fix
the batch size to the input example's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

import mr2unet
from mr2unet.checkpoint import load_model, read_checkpoint
from mr2unet.transforms import to_input


class SegmentationModel(mlflow.pyfunc.PythonModel):
    """pyfunc: uint8 images ``(N, S, S, 3)`` -> uint8 defect masks ``(N, S, S)``."""

    def load_context(self, context: Any) -> None:
        self.model, self.payload = load_model(context.artifacts["checkpoint"])

    # No type hints on predict: MLflow would try to derive a schema from them.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        images = np.asarray(model_input, dtype=np.uint8)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images (N, H, W, 3), got shape {images.shape}")
        with torch.inference_mode():
            logits = self.model(to_input(torch.from_numpy(images)))
        return logits.argmax(1).to(torch.uint8).numpy()


def _requirements() -> list[str]:
    from importlib.metadata import version

    names = ("torch", "numpy", "pyyaml", "pillow", "mlflow")
    return [f"{n}=={version(n).split('+')[0]}" for n in names]


def log_segmentation_model(checkpoint: Path) -> Any:
    """Log ``checkpoint`` as a pyfunc model named ``model`` in the active run."""
    size = int(read_checkpoint(checkpoint)["image_size"])
    example = np.zeros((2, size, size, 3), dtype=np.uint8)
    signature = mlflow.models.infer_signature(example, np.zeros((2, size, size), np.uint8))
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=SegmentationModel(),
        artifacts={"checkpoint": str(checkpoint)},
        code_paths=[str(Path(mr2unet.__file__).parent)],
        signature=signature,
        input_example=example,
        pip_requirements=_requirements(),
    )
