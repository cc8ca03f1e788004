"""Model files: weights plus everything needed to rebuild the network without params.yaml.

A checkpoint is a ``torch.save`` dict::

    {"format": 1, "arch": "mr2unet", "model_kwargs": {...build_model kwargs...},
     "state_dict": {...}, "image_size": 128, "resize": "squash", "meta": {...provenance...}}

``resize`` is how images were made square for the network (``prepare.resize``: ``squash``
or ``pad``); `predict` resizes the same way. Files written before it existed have none,
which means ``squash`` (:func:`resize_mode`). It holds only tensors and plain Python
values, so ``torch.load(weights_only=True)`` reads it.

``meta["threshold"]``, where present, is the mask threshold chosen for the model and how
(``{"value": 0.37, "rule": "best_iou", "val_images": 12, ...}``,
:mod:`mr2unet.evaluation.threshold`); evaluate, ``mr2unet predict``, the pyfunc and the
ONNX metadata use it (:func:`stored_threshold`). Files without it mean 0.5, the argmax.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mr2unet.errors import UserError
from mr2unet.models import build_model
from mr2unet.models.inference import DEFAULT_THRESHOLD

FORMAT_VERSION = 1


def save_model(
    path: str | Path,
    model: nn.Module,
    arch: str,
    model_kwargs: dict[str, Any],
    image_size: int,
    meta: dict[str, Any] | None = None,
    resize: str | None = None,
) -> None:
    """Write ``model``'s weights (moved to CPU, float32) with its architecture.

    ``resize`` (``squash``/``pad``) defaults to ``meta["resize"]``, else ``squash``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").clone() for k, v in unwrap(model).state_dict().items()}
    payload = {
        "format": FORMAT_VERSION,
        "arch": arch,
        "model_kwargs": dict(model_kwargs),
        "state_dict": state,
        "image_size": int(image_size),
        "resize": str(resize or (meta or {}).get("resize") or "squash"),
        "meta": dict(meta or {}),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    read_checkpoint(tmp)  # verified before it replaces the previous file
    tmp.replace(path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load the raw checkpoint dict, with a clear error for a wrong or missing file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {path} not found: run `dvc repro train` first.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same thing
        reason = str(exc).strip().split(". ")[0] or type(exc).__name__
        raise UserError(
            f"{path} cannot be read: the file is cut off or corrupt ({path.stat().st_size} "
            f"bytes; {reason}). Restore it with `dvc checkout {path}` (or `dvc pull`), or "
            "train it again with `dvc repro`.") from None
    if not isinstance(payload, dict) or "arch" not in payload or "state_dict" not in payload:
        raise UserError(f"{path} is not an mr2unet model file (no `arch`/`state_dict`).")
    return payload


def resize_mode(payload: dict[str, Any]) -> str:
    """``squash`` or ``pad``: how the checkpoint's network saw its images (old files:
    ``squash``)."""
    return str(payload.get("resize") or "squash")


def threshold_record(payload: dict[str, Any]) -> dict[str, Any] | None:
    """The ``meta["threshold"]`` block of a checkpoint (how its threshold was chosen), or
    None when the file has none (the default 0.5)."""
    found = (payload.get("meta") or {}).get("threshold")
    return dict(found) if isinstance(found, dict) else None


def stored_threshold(payload: dict[str, Any]) -> float:
    """The mask threshold the checkpoint carries; 0.5 (exactly the argmax) for files
    without one."""
    found = threshold_record(payload)
    return float(found["value"]) if found else DEFAULT_THRESHOLD


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the network stored in ``path`` and load its weights (eval mode)."""
    payload = read_checkpoint(path)
    model = build_model(payload["arch"], **payload["model_kwargs"])
    model.load_state_dict(payload["state_dict"])
    model.to(device).eval()
    return model, payload


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module behind DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model
