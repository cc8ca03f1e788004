"""Resuming a training run: its checkpoint (weights, optimiser, generators, history) and
the fingerprint that says which run a checkpoint belongs to.

A checkpoint is written every ``run.checkpoint_every`` epochs, so an interrupted run
resumes where it stopped and ends exactly where an uninterrupted run would.  Only a run
with the same :class:`~mr2unet.training.config.TrainConfig` resumes it: run options
(device, precision, threads, ...) may differ, as they may between any two machines.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mr2unet.models.checkpoint import unwrap
from mr2unet.training.config import TrainConfig

log = logging.getLogger(__name__)


def fingerprint(cfg: TrainConfig) -> str:
    """Hash of the fields that change the result: a checkpoint only resumes a twin."""
    keep = asdict(cfg)
    if cfg.crop_size is None:  # resize mode: the fingerprint of the loop before tiles
        del keep["crop_size"], keep["defect_crop_fraction"]
    if cfg.steps is None:  # an epoch count: the fingerprint before step budgets
        del keep["steps"]
    else:  # the epochs follow from the steps (train() resolves them)
        del keep["epochs"]
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def _checkpoint_path(directory: Path) -> Path:
    return directory / "last.pt"


def _previous_path(directory: Path) -> Path:
    return directory / "previous.pt"


def training_state(cfg: TrainConfig, epoch: int, model: nn.Module,
                   optimizer: torch.optim.Optimizer, generators: tuple[torch.Generator, ...],
                   history: list[dict[str, float]]) -> dict[str, Any]:
    """What a checkpoint holds after ``epoch`` epochs (``generators``: shuffle, augment)."""
    shuffle_gen, aug_gen = generators
    return {"fingerprint": fingerprint(cfg), "epoch": epoch,
            "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "shuffle_gen": shuffle_gen.get_state(), "aug_gen": aug_gen.get_state(),
            "history": history}


def restore_generators(state: dict[str, Any] | None, cfg: TrainConfig,
                       device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """The run's shuffle and augmentation generators: seeded, or as ``state`` left them."""
    shuffle_gen = torch.Generator().manual_seed(cfg.seed + 1)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 2)
    if state is not None:
        shuffle_gen.set_state(state["shuffle_gen"])
        aug_gen.set_state(state["aug_gen"])
    return shuffle_gen, aug_gen


def save_training_state(directory: Path, state: dict[str, Any]) -> None:
    """Write the resume state (weights, optimiser, generators, history), verified.

    The new file is read back before it replaces ``last.pt``, and the checkpoint it
    replaces stays as ``previous.pt``: at every moment one readable checkpoint exists.
    """
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "last.pt.tmp"
    torch.save(state, tmp)
    if _read_state(tmp).get("epoch") != state["epoch"]:
        raise OSError(f"{tmp} did not read back as written (disk full?)")
    if _checkpoint_path(directory).is_file():
        _checkpoint_path(directory).replace(_previous_path(directory))
    tmp.replace(_checkpoint_path(directory))


def _read_state(path: Path) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "epoch" not in state:
        raise ValueError("not a training checkpoint")
    return state


def load_training_state(directory: Path | None, fingerprint: str) -> dict[str, Any] | None:
    """The saved state if it belongs to a run with the same config, else None.

    An unreadable ``last.pt`` (cut off, corrupt) is one warning, and the previous
    checkpoint is used instead, or, when there is none readable, training starts fresh.
    """
    if directory is None:
        return None
    for path in (_checkpoint_path(directory), _previous_path(directory)):
        if not path.is_file():
            continue
        try:
            state = _read_state(path)
        except Exception as exc:  # noqa: BLE001 - any failure to read means the same
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            fallback = _previous_path(directory)
            then = (f"falling back to {fallback}" if path != fallback and fallback.is_file()
                    else "starting fresh from epoch 0")
            log.warning("checkpoint %s cannot be read (%s): %s", path, reason, then)
            path.replace(path.with_name(path.name + ".unreadable"))  # never kept as previous
            continue
        if state.get("fingerprint") != fingerprint:
            log.info("ignoring %s: it belongs to a run with other parameters", path)
            return None
        return state
    return None
