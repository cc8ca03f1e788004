"""The four segmentation networks, created by name.

    >>> from mr2unet.models import build_model
    >>> model = build_model("mr2unet", base_width=8)   # (N, 3, H, W) -> (N, 2, H, W) logits

``base_width`` is the width of the first encoder level (64 = the papers' full size); each
deeper level doubles it.  H and W must be multiples of 16.  docs/models.md describes the
architectures, their options and the choices made where the papers are vague.

:data:`REGISTRY` is the one list of the networks: their names (``train.models``, the
``<model>`` of every stage and file), how the report labels and colours them and what a
network costs to train.  Nothing else spells the list (tests/test_one_place.py); dvc.yaml's
top-level plots, which DVC cannot template from a list, are checked against it there.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from torch import nn

from mr2unet.errors import UserError
from mr2unet.models import attention_unet, mr2unet, resunet, unet
from mr2unet.models.ushape import SIZE_MULTIPLE, InputSizeError, UShapedNet


@dataclass(frozen=True)
class Network:
    """One entry of the registry."""

    build: Callable[..., UShapedNet]  # builder(in_channels, num_classes, base_width, **options)
    label: str  # its name in the report's tables and figures
    colour: str  # its colour in the report's figures (matplotlib's tab10)
    # training cost per image relative to U-Net on 2 CPU cores (docs/performance.md):
    # `mr2unet repro` starts the costliest first, so that it does not run alone at the end
    relative_cost: float = 1.0


# name -> network, in the report's order; one module per network
REGISTRY: dict[str, Network] = {
    "unet": Network(unet.build, "U-Net", "#1f77b4"),
    "resunet": Network(resunet.build, "Residual U-Net", "#ff7f0e"),
    "attention_unet": Network(attention_unet.build, "Attention U-Net", "#2ca02c", 1.3),
    "mr2unet": Network(mr2unet.build, "MR2U-Net", "#d62728", 4.0),
}
MODEL_NAMES: tuple[str, ...] = tuple(REGISTRY)
LABELS: dict[str, str] = {name: n.label for name, n in REGISTRY.items()}
COLOURS: dict[str, str] = {name: n.colour for name, n in REGISTRY.items()}
_COMMON = ("in_channels", "num_classes", "base_width")

__all__ = ["COLOURS", "LABELS", "MODEL_NAMES", "REGISTRY", "SIZE_MULTIPLE", "InputSizeError",
           "Network", "build_model", "check_model_params", "model_options"]


def model_options(name: str) -> dict[str, Any]:
    """The architecture-specific options of model ``name`` and their defaults."""
    builder = REGISTRY[_checked_name(name)].build
    return {p.name: p.default for p in inspect.signature(builder).parameters.values()
            if p.name not in _COMMON}


def build_model(name: str, in_channels: int = 3, num_classes: int = 2, base_width: int = 64,
                **options: Any) -> nn.Module:
    """Create network ``name`` (one of :data:`MODEL_NAMES`), with freshly initialised weights.

    ``options`` are the architecture-specific keywords of :func:`model_options` (for
    ``mr2unet``: ``recurrent_steps``, ``respath_lengths``).  Bad names, widths or options
    raise :class:`~mr2unet.errors.UserError`.
    """
    valid = model_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(unknown)} for model {name!r}; "
                        f"valid options: {', '.join(valid) or 'none'} "
                        f"(train.model_options in params.yaml)")
    for key, value in (("in_channels", in_channels), ("num_classes", num_classes),
                       ("base_width", base_width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{key} must be an integer >= 1, got {value!r}")
    return REGISTRY[name].build(in_channels=in_channels, num_classes=num_classes,
                          base_width=base_width, **options)


def _checked_name(name: str) -> str:
    if name not in REGISTRY:
        raise UserError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}")
    return name


def check_model_params(params: dict[str, Any], names: Collection[str] = MODEL_NAMES) -> None:
    """``train.models`` and ``train.model_options``' keys drawn from the registry.

    The rest of ``params.yaml`` is checked by :func:`mr2unet.config.params.load_params`;
    the config package sits below this one and cannot see the registry, so the stages
    (pipeline/_common.py) and the command line call this right after it.
    """
    train = params.get("train") or {}
    models, options = train.get("models"), train.get("model_options")
    if isinstance(models, list) and not set(models) <= set(names):
        raise UserError(f"params.yaml: `train.models` is {models!r}; expected a non-empty list "
                        f"drawn from {', '.join(names)}.")
    if isinstance(options, dict) and not set(options) <= set(names):
        raise UserError(f"params.yaml: `train.model_options` is {options!r}; expected a "
                        f"mapping keyed by model name ({', '.join(names)}).")
