"""The four segmentation networks, created by name.

    >>> from mr2unet.models import build_model
    >>> model = build_model("mr2unet", base_width=8)   # (N, 3, H, W) -> (N, 2, H, W) logits

``base_width`` is the width of the first encoder level (64 = the papers' full size); each
deeper level doubles it.  H and W must be multiples of 16.  docs/models.md describes the
architectures, their options and the choices made where the papers are vague.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from mr2unet.errors import UserError
from mr2unet.models import attention_unet, mr2unet, resunet, unet
from mr2unet.models.ushape import SIZE_MULTIPLE, InputSizeError, UShapedNet

# name -> builder(in_channels, num_classes, base_width, **options); one module per network
REGISTRY: dict[str, Callable[..., UShapedNet]] = {
    "unet": unet.build,
    "resunet": resunet.build,
    "attention_unet": attention_unet.build,
    "mr2unet": mr2unet.build,
}
MODEL_NAMES: tuple[str, ...] = tuple(REGISTRY)
_COMMON = ("in_channels", "num_classes", "base_width")

__all__ = ["MODEL_NAMES", "SIZE_MULTIPLE", "InputSizeError", "build_model", "model_options"]


def model_options(name: str) -> dict[str, Any]:
    """The architecture-specific options of model ``name`` and their defaults."""
    builder = REGISTRY[_checked_name(name)]
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
    return REGISTRY[name](in_channels=in_channels, num_classes=num_classes,
                          base_width=base_width, **options)


def _checked_name(name: str) -> str:
    if name not in REGISTRY:
        raise UserError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}")
    return name
