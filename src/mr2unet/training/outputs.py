"""What a finished training run leaves behind: the model file and the history CSV."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from mr2unet.models.checkpoint import save_model
from mr2unet.training.config import TrainConfig
from mr2unet.training.loop import TrainResult

# History columns of the collapse check (mr2unet.training.collapse); `collapsed` is 0 or 1.
HISTORY_COLLAPSE_COLUMNS = ("pred_defect_fraction", "true_defect_fraction", "collapsed")


def history_metrics(history: list[dict[str, float]]) -> dict[str, float]:
    """Final-epoch training metrics, for the registry and the logs."""
    last = history[-1] if history else {}
    skip = ("epoch", "seconds", "images_per_second")
    return {f"final_{k}": float(v) for k, v in last.items() if k not in skip}


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    """Per-epoch history as CSV (a DVC plots file); timings are kept out of it.

    Wall-clock seconds differ between runs, so they would break the byte-identical
    reproducibility check; they go to the MLflow run instead.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["epoch", "loss", "train_iou", "train_dice", "lr", *(
        c for c in HISTORY_COLLAPSE_COLUMNS if history and all(c in r for r in history))]
    lines = [",".join(columns)]
    for row in history:
        lines.append(",".join(
            str(int(row[c])) if c in ("epoch", "collapsed") else f"{row[c]:.6g}"
            for c in columns))
    path.write_text("\n".join(lines) + "\n")


def save_trained_model(path: Path, result: TrainResult, cfg: TrainConfig, image_size: int,
                       meta: dict[str, Any]) -> None:
    """The stage's model file: weights + architecture + provenance (no timings)."""
    cfg = result.config or cfg  # with the class weights it resolved
    save_model(path, result.model, cfg.arch, cfg.model_kwargs(), image_size,
               meta={"epochs": cfg.epochs, "seed": cfg.seed, "config": asdict(cfg),
                     "collapsed": result.collapsed, **meta})
