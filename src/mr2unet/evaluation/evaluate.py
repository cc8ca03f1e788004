"""The `evaluate@<model>` stage: score a trained model on the test split, write its files.

Files (:class:`mr2unet.config.workspace.ModelFiles`): the primary scores
``metrics/<model>.json`` (a DVC metric), the evaluation record
``metrics/evaluation/<model>.json`` (pooled scores, counts, oracle, image-level counts,
verdict, threshold, cost; called ``metrics/pooled/<model>.json`` before issue #34), the
per-image scores ``data/eval/<model>.csv``, the predicted masks
``data/eval/<model>_pred.npz`` (read by the report), the 8-bit defect probabilities
``data/eval/<model>_prob.npz``, and the network's latencies and training time, which vary
between runs, ``metrics/timing/<model>.json``.  The work itself lives beside this module:
:mod:`~mr2unet.evaluation.inference` (prediction), :mod:`~mr2unet.evaluation.probabilities`
(the stored probabilities), :mod:`~mr2unet.evaluation.summaries` (the numbers, the verdict).
docs/evaluation.md explains the choices.
"""

from __future__ import annotations

import json
import logging
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mr2unet.config.params import FIT_FOR_USE
from mr2unet.config.provenance import read_run_info
from mr2unet.config.workspace import ModelFiles, PreparedFiles
from mr2unet.data.prepared import PreparedSplit, load_split
from mr2unet.errors import UserError
from mr2unet.evaluation import verdict as verdicts
from mr2unet.evaluation.cost import image_latency, latencies, model_cost
from mr2unet.evaluation.inference import Evaluation, check_image_size, evaluate
from mr2unet.evaluation.summaries import judge, per_image_table, rounded, summarise
from mr2unet.models.checkpoint import load_model, stored_threshold, threshold_record
from mr2unet.models.tiling import Tiling, tiling_of
from mr2unet.training.options import resolve_device, set_cpu_threads

log = logging.getLogger(__name__)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


@dataclass(frozen=True)
class Settings:
    """The image-level and verdict knobs of ``params.yaml: evaluate`` (docs/params.md)."""

    image_score: str = "max_smoothed"
    min_defect_area: int = 1
    fit_for_use: dict[str, float] = field(default_factory=lambda: dict(FIT_FOR_USE))

    @classmethod
    def from_params(cls, cfg: dict[str, Any]) -> Settings:
        return cls(cfg["image_score"], int(cfg["min_defect_area"]),
                   {**FIT_FOR_USE, **cfg["fit_for_use"]})


def good_images(split: PreparedSplit, manifest: Path | None = None) -> np.ndarray | None:
    """Boolean ``(N,)``: which test images are good parts (``prepare.good_images``), from
    the ``good`` column of ``manifest`` (``data/prepared/manifest.csv``, matched on
    ``image`` = the split's ``sources``); None when the file has no such column (then
    :func:`summarise` takes an image whose mask holds no defect pixel as good for the
    image-level scores, and scores every image's IOU as the paper does).
    """
    if manifest is not None and manifest.is_file():
        table = pd.read_csv(manifest)
        if "good" in table.columns:
            flags = table["good"].astype(str).str.lower().isin(("true", "1", "yes"))
            by_source = dict(zip(table["image"].astype(str), flags, strict=True))
            missing = [s for s in split.sources.tolist() if s not in by_source]
            if missing:
                raise UserError(f"{manifest} does not list test image {missing[0]}: run "
                                "`dvc repro prepare` again.")
            return np.array([bool(by_source[s]) for s in split.sources.tolist()], bool)
    return None


def write_outputs(files: ModelFiles, split: PreparedSplit, result: Evaluation,
                  empty_score: float, cost: dict[str, Any] | None = None,
                  settings: Settings | None = None, train: PreparedSplit | None = None,
                  good: np.ndarray | None = None, threshold: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Write the evaluation files of one model; return the primary metrics.

    ``cost`` (:func:`mr2unet.evaluation.cost.model_cost`) goes into the evaluation record as
    ``cost``; the ``verdict`` block (:func:`judge`) uses ``train`` for the intensity
    baseline when given; ``good`` (:func:`good_images`) says which test images are good;
    ``threshold`` (the model file's :func:`~mr2unet.models.checkpoint.threshold_record`,
    where it has one) goes into the evaluation record as ``threshold``.
    """
    settings = settings or Settings()
    primary, pooled = summarise(result.counts, split.categories, empty_score,
                                result.probabilities, split.masks, result.predictions, good,
                                settings.image_score, settings.min_defect_area)
    if cost is not None:
        pooled["cost"] = cost
    if threshold is not None:  # absent for a model at the default 0.5 (files as before)
        pooled["threshold"] = rounded(threshold)
    pooled["verdict"] = judge(primary, split, result.probabilities, train, empty_score,
                              settings.fit_for_use, good, result.predictions,
                              settings.min_defect_area)
    write_json(files.metrics, primary)
    write_json(files.evaluation, pooled)
    files.per_image.parent.mkdir(parents=True, exist_ok=True)
    per_image_table(split, result.counts, empty_score).to_csv(
        files.per_image, index=False, lineterminator="\n")
    # np.savez writes fixed zip timestamps: equal masks give byte-identical files.
    with files.predictions.open("wb") as fh:
        np.savez_compressed(fh, predictions=result.predictions)
    if result.probabilities is not None:
        with files.probabilities.open("wb") as fh:
            np.savez_compressed(fh, probabilities=result.probabilities)
    return primary


def read_verdict(files: ModelFiles) -> dict[str, Any]:
    """The ``verdict`` block of ``metrics/evaluation/<model>.json`` (empty when absent)."""
    return json.loads(files.evaluation.read_text()).get("verdict", {})


def verdict_tags(found: dict[str, Any]) -> dict[str, str]:
    """MLflow tags of the verdict block: ``verdict``, ``verdict_reason`` and, where the
    block has them, ``verdict_false_alarms`` (``3 of 4 (75 %, 95 % interval 0.19-0.99),
    budget 0.1`` or the not-measured note)."""
    if not found:
        return {}
    tags = {"verdict": str(found["verdict"]), "verdict_reason": str(found["reason"])}
    alarms = found.get("false_alarms")
    if alarms:
        tags["verdict_false_alarms"] = (
            f"{verdicts.counts_text(alarms)}, budget {alarms['budget']:g}"
            if alarms["measured"] else verdicts.NOT_MEASURED)
    return tags


def verdict_warning(arch: str, found: dict[str, Any]) -> str | None:
    """The stage's one warning for a network that is not learned or weak, else None."""
    if found.get("verdict") in (None, verdicts.LEARNED):
        return None
    return f"{verdicts.sentence(arch, found)} {verdicts.ADVICE[0].upper()}{verdicts.ADVICE[1:]}."


def timing_record(model: nn.Module, size: int, device: torch.device,
                  run_info: dict[str, Any], tiling: Tiling | None = None,
                  image_shape: tuple[int, int] | None = None, batch_size: int = 32
                  ) -> dict[str, Any]:
    """``metrics/timing/<model>.json``: inference latencies and the training time; for a
    model trained on crops (``tiling``) also ``latency_per_image``: ms per whole
    ``image_shape`` test image, predicted as it is evaluated.

    Measurements, different on every run: kept out of the files CI compares byte for byte.
    """
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine())
    record: dict[str, Any] = {
        "device": str(device), "device_name": name,
        "cpu_threads": torch.get_num_threads() if device.type == "cpu" else None,
        "input_size": int(size), "precision": "fp32",
        "latency": latencies(model, size),
    }
    if tiling is not None and image_shape is not None:
        record["latency_per_image"] = image_latency(model, *image_shape, tiling, batch_size)
    for key in ("train_seconds", "train_device"):
        if key in run_info:
            record[key] = run_info[key]
    return record


def run_evaluation(params: dict[str, Any], arch: str, root: Path = Path(".")
                   ) -> dict[str, Any]:
    """The `evaluate@<arch>` stage's work: score the model and write its files.

    Returns the primary metrics; the stage script logs them to MLflow when tracking is on.
    """
    cfg = params["evaluate"]
    files, prepared = ModelFiles(arch, root), PreparedFiles.under(root)
    device = resolve_device(params["run"]["device"])
    set_cpu_threads(params["run"]["cpu_threads"])
    split = load_split(prepared.test)
    model, payload = load_model(files.checkpoint, device)
    check_image_size(payload, split, files.checkpoint)
    threshold = stored_threshold(payload)  # the model's own (0.5 = the argmax)
    log.info("evaluating %s on %d test images (%s), mask threshold %g", arch, len(split),
             device, threshold)
    tiling = tiling_of(payload)
    result = evaluate(model, split, device, cfg["batch_size"], tiling=tiling,
                      threshold=threshold)
    size = tiling.tile if tiling else int(split.images.shape[1])  # the network's input
    primary = write_outputs(files, split, result, cfg["empty_score"], model_cost(model, size),
                            Settings.from_params(cfg), load_split(prepared.train),
                            good_images(split, prepared.manifest), threshold_record(payload))
    warning = verdict_warning(arch, read_verdict(files))
    if warning:
        log.warning(warning)
    timing = timing_record(model, size, device, read_run_info(files.run_info), tiling,
                           split.images.shape[1:3], cfg["batch_size"])
    write_json(files.timing, timing)
    _log_timing(arch, size, device, timing)
    return primary


def _log_timing(arch: str, size: int, device: torch.device, timing: dict[str, Any]) -> None:
    log.info("%s latency at %dpx on %s: %s ms/image (batch 1), %s ms/image (batch 32)", arch,
             size, device, timing["latency"]["batch_1"]["per_image_ms"],
             timing["latency"]["batch_32"]["per_image_ms"])
    if "latency_per_image" in timing:
        whole = timing["latency_per_image"]
        log.info("%s latency per %dx%d test image (%s): %s ms", arch, whole["width"],
                 whole["height"], whole["predict"], whole["per_image_ms"])
