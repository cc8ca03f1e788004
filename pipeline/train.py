"""Stage `train@<model>`: train one architecture on the prepared training split.

    python pipeline/train.py <model>            (dvc.yaml: train@unet, train@mr2unet, ...)
    torchrun --nproc-per-node N pipeline/train.py <model>   (DistributedDataParallel)

What the network learns comes from params.yaml's `train:` (DVC dependencies); how the run
executes from `run:` (device, threads, speed levers) and whether and where it is tracked
from `tracking:`, neither of which DVC watches: changing them retrains nothing.

With a validation split (split.val_fraction > 0) or evaluate.threshold other than 0.5, the
mask threshold is chosen after training (mr2unet.evaluation.threshold) on
data/prepared/val.npz and stored in the model file.

Outputs: data/models/<model>.pt (weights + architecture), data/models/<model>.run.json
(MLflow run and registered version; training seconds and device), metrics/history/<model>.csv
(DVC plots).
Resume state lives in data/checkpoints/<model>/ until the run finishes.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _common import run_model_stage

from mr2unet.config.params import AUTO, BLOCKS
from mr2unet.config.provenance import git_commit, write_run_info
from mr2unet.config.workspace import PREPARED, ModelFiles
from mr2unet.data.prepare import resolved_prepare
from mr2unet.data.prepared import load_split
from mr2unet.errors import UserError
from mr2unet.evaluation import threshold as thresholds
from mr2unet.evaluation import validation
from mr2unet.evaluation.evaluate import good_images
from mr2unet.models import MODEL_NAMES
from mr2unet.models.inference import DEFAULT_THRESHOLD
from mr2unet.models.tiling import Tiling, default_stride
from mr2unet.training.config import TrainConfig
from mr2unet.training.loop import TrainResult, train
from mr2unet.training.options import RunOptions
from mr2unet.training.outputs import history_metrics, save_trained_model, write_history
from mr2unet.training.setup import init_distributed


def tiling_of_params(prepare: dict[str, Any]) -> Tiling | None:
    """How a tiles model predicts (None in resize mode); ``tile_predict: auto`` starts as
    blocks and is decided on the validation split (mr2unet.evaluation.validation)."""
    if prepare["mode"] != "tiles":
        return None
    size, predict = prepare["image_size"], prepare["tile_predict"]
    return Tiling(size, prepare["tile_stride"] or default_stride(size), prepare["tile_source_size"],
                  BLOCKS if predict == AUTO else predict)


def validation_meta(params: dict[str, Any], model: torch.nn.Module, device: str
                    ) -> dict[str, Any]:
    """The model file's ``tiling``, ``tile_predict_choice`` and ``threshold``: decided on
    the validation split where there is one (``evaluate.threshold``, ``prepare.tile_predict:
    auto``); {} for a resized model with the default 0.5 and no validation split (the
    model file as before)."""
    rule = thresholds.parse_rule(params["evaluate"]["threshold"])
    tiling = tiling_of_params(params["prepare"])
    # an older prepared folder has no val.npz: fine for a fixed threshold
    val = load_split(PREPARED.val) if PREPARED.val.is_file() or rule.needs_validation else None
    good = good_images(val, PREPARED.manifest) if val is not None and len(val) else None
    return validation.decide(model, val, good, rule, torch.device(device), tiling,
                             params["prepare"]["tile_predict"], params["train"]["batch_size"],
                             params["evaluate"]["min_defect_area"])


def how_chosen(record: dict[str, Any]) -> str:
    """``best_iou`` / ``auto=0.05 -> best_iou raised to max_false_alarm_rate=0.05``."""
    return record["rule"] + (f" -> {record['resolved']}" if "resolved" in record else "")


def decided(chosen: dict[str, Any]) -> tuple[float, dict[str, str], str]:
    """From :func:`validation_meta`'s record: the mask threshold, the MLflow tags that say
    how it (and a tiles model's way of predicting) was chosen, and the log's words."""
    threshold = chosen["threshold"]["value"] if "threshold" in chosen else DEFAULT_THRESHOLD
    tags = {"threshold": f"{threshold:g}"}
    note = f"mask threshold {threshold:g}"
    if "threshold" in chosen:
        tags["threshold_rule"] = how_chosen(chosen["threshold"])
        note += (f" ({tags['threshold_rule']} on {chosen['threshold']['val_images']} "
                 "validation images)")
    if "tile_predict_choice" in chosen:
        way = chosen["tile_predict_choice"]
        tags["tile_predict"] = way["predict"]
        note += f"; predicts by {way['predict']} ({way['reason']})"
    return threshold, tags, note


@dataclass
class Stage:
    """One network's train@<model> stage: its config, resume folder and MLflow run."""

    arch: str
    cfg: TrainConfig
    checkpoint_dir: Path
    tracker: Any = None  # mr2unet.tracking.runs.TrainingTracker when tracking is on


def start(params: dict[str, Any], arch: str, rank: int) -> Stage:
    if arch not in MODEL_NAMES:  # dvc.yaml passes one of train.models (validated)
        raise UserError(f"unknown architecture {arch!r}; expected one of "
                        f"{', '.join(MODEL_NAMES)}.")
    stage = Stage(arch, TrainConfig.from_params(params, arch), Path("data/checkpoints") / arch)
    if params["tracking"]["enabled"] and rank == 0:
        from mr2unet.tracking.runs import TrainingTracker  # imports MLflow: only when tracking

        stage.tracker = TrainingTracker(params, arch)
        run_id_file = stage.checkpoint_dir / "mlflow_run_id"
        previous = run_id_file.read_text().strip() if run_id_file.is_file() else None
        run_id = stage.tracker.start(f"train@{arch}", resume_run_id=previous)
        stage.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        run_id_file.write_text(run_id + "\n")
    return stage


def main(params: dict[str, Any], arch: str) -> None:
    """Train ``arch`` (the stage train@<arch>) and write its outputs."""
    # prepare.mode auto: the mode prepare chose (a different choice changes train.npz too)
    params = {**params, "prepare": resolved_prepare(params["prepare"], PREPARED.summary)}
    split = load_split(PREPARED.train)
    rank = init_distributed()
    stage = start(params, arch, rank)
    try:
        result = train(stage.cfg, split, stage.checkpoint_dir,
                       stage.tracker.log_epoch if stage.tracker else None,
                       options=RunOptions.from_params(params))
    except BaseException:
        if stage.tracker:
            stage.tracker.fail()
        raise
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if rank == 0:
        finish(params, stage, result)


def finish(params: dict[str, Any], stage: Stage, result: TrainResult) -> None:
    """A trained network's stage outputs: model file, history, MLflow run, run info."""
    arch, cfg, tracker = stage.arch, stage.cfg, stage.tracker
    files = ModelFiles(arch)
    model_path, history_path = files.checkpoint, files.history
    chosen = validation_meta(params, result.model, result.device)
    save_trained_model(model_path, result, cfg, image_size=params["prepare"]["image_size"],
                       meta={"git_commit": git_commit(), "device": result.device,
                             "torch_version": str(torch.__version__),
                             "resize": params["prepare"]["resize"],
                             **chosen})
    threshold, tags, note = decided(chosen)
    write_history(history_path, result.history)
    info: dict[str, Any] = {"tracking": False}
    if tracker:
        tracker.log_metrics({**history_metrics(result.history),
                             "train_seconds": result.seconds, "threshold": threshold})
        # Filter with `tags.collapsed = 'true'`; the history's `collapsed` column per epoch.
        tracker.set_tags({"collapsed": "true" if result.collapsed else "false",
                          **tags})
        info = tracker.finish(model_path, history_path, PREPARED.train,
                              system={"device": result.device})
    # Wall-clock training time for the report's cost table (metrics/timing/<model>.json via
    # evaluate): a measurement, so it lives here and not in the byte-compared metrics.
    info.update(train_seconds=round(result.seconds, 1), train_device=result.device)
    write_run_info(files.run_info, info)
    shutil.rmtree(stage.checkpoint_dir, ignore_errors=True)
    print(f"{arch}: {len(result.history)} epochs in {result.seconds:.1f}s on {result.device}; "
          f"final loss {result.history[-1]['loss']:.4f}, train IOU "
          f"{result.history[-1]['train_iou']:.4f}; {note} -> {model_path}"
          + (f" (COLLAPSED to {result.collapsed}: see the warning above)"
             if result.collapsed else ""))
    if tracker and tracker.pending:
        # Exit 0: the outputs are complete, so DVC records the stage and does not retrain.
        print(f"warning: {tracker.pending_message()}", file=sys.stderr)


if __name__ == "__main__":
    run_model_stage(main, __doc__, "train")
