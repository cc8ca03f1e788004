"""The report: our Table 1 beside the paper's, training curves, a Fig. 4-style grid.

:func:`load_report` reads what `evaluate` and `train` wrote and :func:`write_report` writes
``reports/`` (the `report` stage script sets the registry aliases in between):

- ``report.html``: one self-contained page (figures inline: SVG charts, base64 PNG grids);
- ``report.md`` with its figures in ``figures/`` (SVG and PNG files);
- ``category_scores.csv`` (model, category, iou, dice) and, for ``dvc plots``, the same
  per model in ``category_scores/<model>.csv``;
- ``pairwise.json``: every pair of models compared on the same test images (mean
  difference, bootstrap CI, Wilcoxon and Holm p-values; :mod:`mr2unet.reporting.significance`).

Everything except the provenance's time stamp is a function of the inputs.
"""

from __future__ import annotations

import csv
import html
import io
import json
import logging
import platform
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from mr2unet.config.params import MODEL_NAMES
from mr2unet.data.prepared import PreparedSplit, load_split
from mr2unet.errors import UserError
from mr2unet.evaluation import verdict as verdicts
from mr2unet.evaluation.evaluate import SUMMARY, TEST_SPLIT, ModelFiles
from mr2unet.models.inference import DEFAULT_THRESHOLD
from mr2unet.reporting import significance as report_stats
from mr2unet.reporting.markup import (
    Cell,
    html_page,
    html_table,
    markdown_table,
    png_img,
    svg_bar_chart,
    svg_line_chart,
)
from mr2unet.reporting.pictures import error_map
from mr2unet.training import collapse

log = logging.getLogger(__name__)

LABELS = {"unet": "U-Net", "resunet": "Residual U-Net", "attention_unet": "Attention U-Net",
          "mr2unet": "MR2U-Net"}
COLOURS = {"unet": "#1f77b4", "resunet": "#ff7f0e", "attention_unet": "#2ca02c",
           "mr2unet": "#d62728"}
MIN_TILE = 128  # tiles are scaled up (nearest) to at least this many pixels
MISSING = "–"


# ------------------------------------------------------------------------------ inputs


def paper_table() -> dict[tuple[str, str], dict[str, float]]:
    """The paper's Table 1: ``{(model, category): {"iou": .., "dice": ..}}``."""
    text = resources.files("mr2unet.reporting").joinpath("paper_table1.csv").read_text()
    return {(r["model"], r["category"]): {"iou": float(r["iou"]), "dice": float(r["dice"])}
            for r in csv.DictReader(io.StringIO(text))}


def paper_categories() -> set[str]:
    """The 15 MVTec AD categories of the paper's Table 1."""
    return {c for (_, c) in paper_table() if c != "mean"}


@dataclass
class ReportInputs:
    """Everything the report shows, already loaded."""

    metrics: dict[str, dict[str, Any]]  # model -> metrics/<model>.json
    pooled: dict[str, dict[str, Any]]  # model -> metrics/pooled/<model>.json
    histories: dict[str, list[dict[str, float]]]  # model -> per-epoch rows
    split: PreparedSplit  # the test split
    predictions: dict[str, np.ndarray]  # model -> uint8 (N, S, S)
    samples_per_category: int = 2
    provenance: dict[str, str] = field(default_factory=dict)
    registry: list[Any] = field(default_factory=list)  # registry.AliasAssignment
    timing: dict[str, dict[str, Any]] = field(default_factory=dict)  # metrics/timing/
    per_image: dict[str, report_stats.PerImage] = field(default_factory=dict)  # data/eval/

    @property
    def models(self) -> list[str]:
        return [m for m in MODEL_NAMES if m in self.metrics]

    @property
    def categories(self) -> list[str]:
        return sorted({c for m in self.metrics.values() for c in m["per_category"]})


def _read_json(path: Path, stage: str) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path} not found: run `dvc repro {stage}` first.")
    return json.loads(path.read_text())


def read_history(path: Path) -> list[dict[str, float]]:
    """``metrics/history/<model>.csv`` as one dict per epoch."""
    if not path.is_file():
        raise UserError(f"{path} not found: run `dvc repro train` first.")
    with path.open(newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def load_inputs(models: list[str], root: Path = Path("."), samples_per_category: int = 2
                ) -> ReportInputs:
    """Read the evaluation and training outputs of ``models`` under ``root``."""
    split = load_split(root / TEST_SPLIT)
    metrics, pooled, histories, predictions = {}, {}, {}, {}
    for m in models:
        files = ModelFiles(m, root)
        metrics[m] = _read_json(files.metrics, f"evaluate@{m}")
        pooled[m] = _read_json(files.pooled, f"evaluate@{m}")
        histories[m] = read_history(files.history)
        if not files.predictions.is_file():
            raise UserError(f"{files.predictions} not found: run `dvc repro evaluate@{m}`.")
        with np.load(files.predictions) as data:
            predictions[m] = data["predictions"]
        if predictions[m].shape != split.masks.shape:
            raise UserError(f"{files.predictions} does not match {root / TEST_SPLIT}: "
                            f"run `dvc repro evaluate@{m}` again.")
    per_image = {m: report_stats.read_per_image(ModelFiles(m, root).per_image, f"evaluate@{m}")
                 for m in models}
    report_stats.check_aligned(per_image, split.sources, str(root / TEST_SPLIT))
    return ReportInputs(metrics, pooled, histories, split, predictions, samples_per_category,
                        per_image=per_image)


# ------------------------------------------------------------------------------ tables


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return MISSING
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _best(values: list[float | None]) -> float | None:
    """The highest value as displayed (4 decimals), so displayed ties are all bold."""
    shown = [round(v, 4) for v in values if v is not None]
    return max(shown) if len(shown) > 1 else None


def table1(metrics: dict[str, dict[str, Any]], metric: str) -> tuple[list[str], list[list[Cell]]]:
    """Table 1 for ``metric``: per category, each model's score, the paper's, the difference.

    The best of our models and the best of the paper's are bold per row.  Paper columns
    appear only when some category is one of the paper's; the paper's Mean is compared
    only when exactly its 15 categories were evaluated.
    """
    paper = paper_table()
    models = [m for m in MODEL_NAMES if m in metrics]
    categories = sorted({c for m in models for c in metrics[m]["per_category"]})
    with_paper = any((m, c) in paper for m in models for c in categories)
    mean_comparable = set(categories) == paper_categories()
    header = ["category"]
    for m in models:
        header += [LABELS[m], "paper", "Δ"] if with_paper else [LABELS[m]]
    rows = []
    for category in [*categories, "mean"]:
        ours: dict[str, float | None] = {}
        theirs: dict[str, float | None] = {}
        for m in models:
            scores = metrics[m]["mean"] if category == "mean" else \
                metrics[m]["per_category"].get(category)
            ours[m] = scores[metric] if scores else None
            ref = paper.get((m, category)) if category != "mean" or mean_comparable else None
            theirs[m] = ref[metric] if ref else None
        best_ours, best_paper = _best(list(ours.values())), _best(list(theirs.values()))
        row = [Cell("Mean" if category == "mean" else category, bold=category == "mean")]
        for m in models:
            row.append(Cell(_fmt(ours[m]), ours[m] is not None and round(ours[m], 4) == best_ours))
            if with_paper:
                diff = ours[m] - theirs[m] if None not in (ours[m], theirs[m]) else None
                row += [Cell(_fmt(theirs[m]),
                             theirs[m] is not None and round(theirs[m], 4) == best_paper),
                        Cell(_fmt(diff, signed=True))]
        rows.append(row)
    return header, rows


def summary_table(inputs: ReportInputs) -> tuple[list[str], list[list[Cell]]]:
    """One row per model: primary means, the paper's means, pooled scores, counts."""
    paper = paper_table()
    comparable = set(inputs.categories) == paper_categories()
    header = ["model", "mean IOU", "mean Dice", "paper IOU", "paper Dice", "pooled IOU",
              "pooled Dice", "test images", "empty predictions", "pixel AUROC", "pixel AP",
              "verdict", "mask threshold"]
    collapsed = collapsed_models(inputs)
    best = _best(list(rankable_iou(inputs).values()))  # a collapsed network is not "best"
    rows = []
    for m in inputs.models:
        mean, pooled = inputs.metrics[m]["mean"], inputs.pooled[m]
        ref = paper.get((m, "mean")) if comparable else None
        label = LABELS[m] + (" (collapsed)" if m in collapsed else "")
        rows.append([Cell(label), Cell(_fmt(mean["iou"]), round(mean["iou"], 4) == best),
                     Cell(_fmt(mean["dice"])), Cell(_fmt(ref["iou"] if ref else None)),
                     Cell(_fmt(ref["dice"] if ref else None)),
                     Cell(_fmt(pooled["all_images"]["iou"])),
                     Cell(_fmt(pooled["all_images"]["dice"])), Cell(str(pooled["images"])),
                     Cell(str(pooled["empty_predictions"])),
                     Cell(_fmt(mean.get("pixel_auroc"))), Cell(_fmt(mean.get("pixel_ap"))),
                     Cell(verdict_of(inputs, m).get("verdict", MISSING)),
                     Cell(threshold_of(inputs, m))])
    return header, rows


def threshold_of(inputs: ReportInputs, model: str) -> str:
    """The mask threshold the model was evaluated at, and how it was chosen: ``0.37
    (best_iou, 12 validation images)``; ``0.5`` for a model without a stored one."""
    found = inputs.pooled[model].get("threshold")
    if not found:
        return f"{DEFAULT_THRESHOLD:g}"
    how = found["rule"] + (f" -> {found['resolved']}" if found.get("resolved") else "") \
        + (f", {found['val_images']} validation images" if found.get("val_images") else "") \
        + (f", {found['val_good_images']} good" if found.get("val_good_images") else "")
    return f"{found['value']:g} ({how})"


def collapsed_models(inputs: ReportInputs) -> dict[str, str]:
    """Model -> the report's sentence, for each network that collapsed (mr2unet.training.collapse).

    Collapsed: empty test predictions on more than half of the defective test images
    (``metrics/pooled/<model>.json: collapsed``) or a training run that ended collapsed
    (the history's ``collapsed`` column).  Such a network is not ranked nor champion.
    """
    notes = {m: collapse.report_sentence(LABELS[m], inputs.pooled[m],
                                         inputs.histories.get(m, []))
             for m in inputs.models}
    return {m: note for m, note in notes.items() if note}


def rankable_iou(inputs: ReportInputs) -> dict[str, float]:
    """Mean test IOU of the models that may be ranked (and be champion): not collapsed."""
    collapsed = collapsed_models(inputs)
    return {m: inputs.metrics[m]["mean"]["iou"] for m in inputs.models if m not in collapsed}


def verdict_of(inputs: ReportInputs, model: str) -> dict[str, Any]:
    """The ``verdict`` block of ``metrics/pooled/<model>.json`` (empty when absent)."""
    return inputs.pooled[model].get("verdict", {})


def verdict_lines(inputs: ReportInputs) -> list[str]:
    """The report's first lines: each network that is not learned or weak, in words, and
    what it means for the aliases."""
    lines = [verdicts.sentence(LABELS[m], verdict_of(inputs, m)) for m in inputs.models
             if verdict_of(inputs, m).get("verdict", verdicts.LEARNED) != verdicts.LEARNED]
    if not alias_candidates(inputs):
        lines.append("No network has learned (mr2unet.evaluation.verdict): none is given the "
                     "champion or challenger alias, and the old ones are removed.")
    return lines


def alias_candidates(inputs: ReportInputs) -> dict[str, float]:
    """Mean test IOU of the networks that may get a registry alias: not collapsed, and
    ``learned`` (a network that is weak or has not learned, or has no verdict, gets none)."""
    return {m: iou for m, iou in rankable_iou(inputs).items()
            if verdict_of(inputs, m).get("verdict") == verdicts.LEARNED}


VERDICT_NOTE = (
    "Against what no network would do, on the same test images and with the same averaging "
    "as the mean IOU: \"no defect anywhere\", \"defect everywhere\", and a grey-level "
    "threshold per category fitted on the training split. Not learned: the 95 % bootstrap "
    "interval of the mean pixel AUROC (images resampled within each category, 1000 times) "
    "includes 0.5, or the mean IOU is not above the best baseline's. Weak: learned, but "
    "below evaluate.fit_for_use, or rejecting more good test parts than its "
    "false_alarm_rate with confidence (the exact 95 % interval's lower end above it). Only "
    "a learned network can get a registry alias.")

LINE_NOTE = (
    "What a production line sees of the test parts, at each network's mask threshold: a "
    "part is rejected when its predicted mask holds a defect of at least "
    "evaluate.min_defect_area connected pixels. Good parts rejected: false alarms among the "
    "defect-free test images; defective parts passed: defective test images with no "
    "predicted defect. Intervals: exact (Clopper-Pearson) 95 %, so that a handful of parts "
    "reads as the little it proves. A network whose interval of good parts rejected lies "
    "above evaluate.fit_for_use.false_alarm_rate is weak (below, \"Did it learn?\").")


def line_table(inputs: ReportInputs) -> tuple[list[str], list[list[Cell]]]:
    """The report's first screen, one row per model: good parts it would reject, defective
    parts it would pass (k of n, exact interval), its mask threshold and verdict."""
    header = ["model", "good parts rejected", "defective parts passed", "mask threshold",
              "verdict"]
    rows = []
    for m in inputs.models:
        found = verdict_of(inputs, m)
        alarms, misses = found.get("false_alarms"), found.get("misses")
        rejected = (MISSING if alarms is None else verdicts.counts_text(alarms)
                    + (f" (budget {alarms['budget']:g})" if alarms["measured"]
                       else ": no good test images"))
        rows.append([Cell(LABELS[m]), Cell(rejected),
                     Cell(verdicts.counts_text(misses) if misses else MISSING),
                     Cell(threshold_of(inputs, m)),
                     Cell(found.get("verdict", MISSING),
                          found.get("verdict") == verdicts.LEARNED)])
    return header, rows


def verdict_table(inputs: ReportInputs) -> tuple[list[str], list[list[Cell]]]:
    """One row per model: verdict, mean IOU, the best baseline, pixel AUROC [95 % CI]."""
    header = ["model", "verdict", "mean IOU", "best baseline", "its IOU", "pixel AUROC [95 % CI]"]
    rows = []
    for m in inputs.models:
        found = verdict_of(inputs, m)
        if not found:
            rows.append([Cell(LABELS[m]), *(Cell(MISSING) for _ in header[1:])])
            continue
        ci = found.get("pixel_auroc_ci")
        auroc = _fmt(found.get("pixel_auroc")) + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
        rows.append([Cell(LABELS[m]), Cell(found["verdict"], found["verdict"] == "learned"),
                     Cell(_fmt(found["iou"])),
                     Cell(verdicts.BASELINE_LABELS.get(found["best_baseline"],
                                                       found["best_baseline"])),
                     Cell(_fmt(found["best_baseline_iou"])), Cell(auroc)])
    return header, rows


def baseline_table(inputs: ReportInputs) -> tuple[list[str], list[list[Cell]]]:
    """The trivial baselines' mean IOU and Dice (the same for every model's test images)."""
    found = next((verdict_of(inputs, m)["baselines"] for m in inputs.models
                  if "baselines" in verdict_of(inputs, m)), {})
    return ["baseline", "mean IOU", "mean Dice"], [
        [Cell(verdicts.BASELINE_LABELS.get(name, name)), Cell(_fmt(b["iou"])),
         Cell(_fmt(b["dice"]))] for name, b in found.items()]


DETECTION_NOTE = (
    "AUPRO: area under the per-region overlap curve up to a false-positive rate of 0.3, "
    "normalised (Bergmann et al., IJCV 2021), each category's regions together; Mean: plain "
    "mean of the categories. Image-level (only when the test split holds good images): "
    "image AUROC and AP of the image score (evaluate.image_score) over good vs defective "
    "images; at the network's pixel threshold an image is flagged when its predicted mask "
    "has a connected component of at least evaluate.min_defect_area pixels: false alarms = "
    "good images flagged, misses = defective images not flagged. Mean: plain mean of the "
    "categories; all images: every test image at once, with the counts.")


def _rate(rate: float | None, count: int | None, total: int | None) -> str:
    if rate is None:
        return MISSING
    return f"{rate:.4f}" + (f" ({count}/{total})" if count is not None else "")


def detection_table(inputs: ReportInputs) -> tuple[list[str], list[list[Cell]]]:
    """Rows (category, model), then the Mean of the categories and all images pooled:
    AUPRO, image AUROC and AP, the false-alarm and miss rates (with counts)."""
    header = ["category", "model", "AUPRO", "image AUROC", "image AP", "false alarms",
              "misses"]
    rows = []
    for category in [*inputs.categories, "mean", "all images"]:
        for m in inputs.models:
            level = inputs.pooled[m].get("image_level", {})
            if category == "all images":
                scores = {**inputs.pooled[m].get("all_images", {}),
                          **level.get("all_images", {})}
                counts = level
            else:
                scores = inputs.metrics[m]["mean"] if category == "mean" else \
                    inputs.metrics[m]["per_category"].get(category, {})
                counts = {} if category == "mean" else \
                    level.get("per_category", {}).get(category, {})
            name = "Mean" if category == "mean" else category
            rows.append([Cell(name, category in ("mean", "all images")), Cell(LABELS[m]),
                         Cell(_fmt(scores.get("aupro"))), Cell(_fmt(scores.get("image_auroc"))),
                         Cell(_fmt(scores.get("image_ap"))),
                         Cell(_rate(scores.get("false_alarm_rate"), counts.get("false_alarms"),
                                    counts.get("good_images"))),
                         Cell(_rate(scores.get("miss_rate"), counts.get("misses"),
                                    counts.get("defective_images")))])
    return header, rows


RANKING_NOTE = (
    "Threshold-free scores of the defect probability, each category's test pixels pooled "
    "(padding excluded): pixel AUROC and average precision (scikit-learn, from the stored "
    "8-bit probabilities), as the MVTec AD literature reports them; Mean: plain mean of the "
    "categories. Unlike that literature (unsupervised: trained on defect-free images only, "
    "typically at 224-256 px, tested on normal and defective images) our networks are "
    "trained on defective images with their masks, at the prepared size (128 px in the "
    "paper's protocol), and tested on defective images only. Oracle IOU: pooled IOU at "
    "the single threshold that is best on these very pixels (an upper bound, not a test "
    "score). Bold: best per row and score.")


def ranking_table(inputs: ReportInputs) -> tuple[list[str], list[list[Cell]]]:
    """Per category and Mean: each model's pixel AUROC, AP and oracle IOU."""
    keys = (("pixel_auroc", "AUROC"), ("pixel_ap", "AP"), ("oracle", "oracle IOU"))
    header = ["category"] + [f"{LABELS[m]} {name}" for m in inputs.models for _, name in keys]
    rows = []
    for category in [*inputs.categories, "mean"]:
        values: dict[tuple[str, str], float | None] = {}
        for m in inputs.models:
            scores = inputs.metrics[m]["mean"] if category == "mean" else \
                inputs.metrics[m]["per_category"].get(category, {})
            oracle = inputs.pooled[m].get("oracle", {})
            oracle = oracle.get("mean", {}) if category == "mean" else \
                oracle.get("per_category", {}).get(category, {})
            for key, _ in keys:
                values[(m, key)] = oracle.get("iou") if key == "oracle" else scores.get(key)
        best = {key: _best([values[(m, key)] for m in inputs.models]) for key, _ in keys}
        row = [Cell("Mean" if category == "mean" else category, bold=category == "mean")]
        for m in inputs.models:
            for key, _ in keys:
                v = values[(m, key)]
                row.append(Cell(_fmt(v), v is not None and round(v, 4) == best[key]))
        rows.append(row)
    return header, rows


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return MISSING
    return f"{seconds:.1f} s" if seconds < 120 else \
        f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _latency(timing: dict[str, Any], batch: int) -> str:
    found = timing.get("latency", {}).get(f"batch_{batch}")
    return f"{found['per_image_ms']:.2f} (n={found['runs']})" if found else MISSING


def _image_latency(timing: dict[str, Any]) -> str:
    """A tiled model's ms per whole test image (and per window), or ``""``."""
    whole = timing.get("latency_per_image")
    if not whole:
        return ""
    windows = (f", {whole['windows']} windows of {whole['per_window_ms']:.2f}"
               if "windows" in whole else "")
    return (f"; {whole['per_image_ms']:.1f} per {whole['width']}×{whole['height']} image "
            f"({whole['predict']}{windows})")


COST_NOTE = (
    "Parameters and GFLOPs (forward pass of one image at the size the network was trained "
    "at; torch.utils.flop_counter: convolutions and matrix products, a multiply-add = 2 "
    "FLOPs) come from metrics/pooled/<model>.json and are exact. Training time (wall clock "
    "of the train stage) and latency (ms per image: median wall time of forward pass + "
    "softmax on a batch of 1 or 32 images already on the device, fp32, after warm-up runs; "
    "n = timed runs) come from metrics/timing/<model>.json: measurements, they vary "
    "between runs and machines. A model trained on tiles (prepare.mode: tiles) sees a crop "
    "per pass: its batch-1 cell also gives ms per whole test image, predicted as evaluate "
    "predicts it (whole: one padded pass; windows: their count and ms each).")


def cost_table(inputs: ReportInputs) -> tuple[list[str], list[list[Cell]]]:
    """One row per model: parameters, GFLOPs, training time, latency at batch 1 and 32."""
    header = ["model", "parameters", "input", "GFLOPs / image", "training time",
              "timing device", "ms / image (batch 1)", "ms / image (batch 32)"]
    rows = []
    for m in inputs.models:
        cost, timing = inputs.pooled[m].get("cost", {}), inputs.timing.get(m, {})
        size = cost.get("input_size")
        device = timing.get("device")
        threads = timing.get("cpu_threads")
        if device == "cpu" and threads:
            device = f"cpu, {threads} thread{'s' if threads > 1 else ''}"
        rows.append([Cell(LABELS[m]),
                     Cell(f"{cost['parameters']:,}" if "parameters" in cost else MISSING),
                     Cell(f"{size}×{size}" if size else MISSING),
                     Cell(f"{cost['gflops']:.3f}" if "gflops" in cost else MISSING),
                     Cell(_duration(timing.get("train_seconds"))), Cell(device or MISSING),
                     Cell(_latency(timing, 1) + _image_latency(timing)),
                     Cell(_latency(timing, 32))])
    return header, rows


def read_timings(models: list[str], root: Path = Path(".")) -> dict[str, dict[str, Any]]:
    """``metrics/timing/<model>.json`` of each model that has one (absent: shown as –)."""
    paths = {m: ModelFiles(m, root).timing for m in models}
    return {m: json.loads(p.read_text()) for m, p in paths.items() if p.is_file()}


def registry_table(assignments: list[Any]) -> tuple[list[str], list[list[Cell]]]:
    header = ["model URI", "architecture", "version", "mean IOU"]
    rows = [[Cell(a.uri), Cell(LABELS.get(a.arch, a.arch)), Cell(a.version),
             Cell(_fmt(a.mean_iou))] for a in assignments]
    return header, rows


def category_scores(metrics: dict[str, dict[str, Any]]) -> list[tuple[str, str, float, float]]:
    """Long format ``(model, category, iou, dice)``, models in the paper's order."""
    return [(m, c, s["iou"], s["dice"])
            for m in MODEL_NAMES if m in metrics
            for c, s in sorted(metrics[m]["per_category"].items())]


# ----------------------------------------------------------------------------- figures


def pick_samples(split: PreparedSplit, category: str, count: int) -> list[int]:
    """``count`` test images of ``category``, one defect type after another (round robin)."""
    idx = np.flatnonzero(split.categories == category)
    by_type: dict[str, list[int]] = {}
    for i in idx:
        by_type.setdefault(str(split.defect_types[i]), []).append(int(i))
    queues = [by_type[t] for t in sorted(by_type)]
    picked: list[int] = []
    while len(picked) < min(count, len(idx)):
        for queue in queues:
            if queue and len(picked) < count:
                picked.append(queue.pop(0))
    return picked


def sample_grid(inputs: ReportInputs, category: str) -> tuple[Image.Image, list[int]]:
    """Rows = sample test images; columns = input, ground truth, each model's prediction."""
    split = inputs.split
    rows = pick_samples(split, category, inputs.samples_per_category)
    size = split.images.shape[1]
    scale = max(1, -(-MIN_TILE // size))
    tile, pad, header = size * scale, 4, 16
    labels = ["input", "ground truth", *(LABELS[m] for m in inputs.models)]
    grid = Image.new("RGB", (len(labels) * (tile + pad), header + len(rows) * (tile + pad)),
                     "white")
    draw = ImageDraw.Draw(grid)
    for c, label in enumerate(labels):
        draw.text((c * (tile + pad) + 2, 2), label, fill="black")
    for r, i in enumerate(rows):
        mask = split.masks[i]
        tiles = [split.images[i], error_map(mask, mask)]
        tiles += [error_map(inputs.predictions[m][i], mask) for m in inputs.models]
        for c, array in enumerate(tiles):
            img = Image.fromarray(array).resize((tile, tile), Image.Resampling.NEAREST)
            grid.paste(img, (c * (tile + pad), header + r * (tile + pad)))
    return grid, rows


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def charts(inputs: ReportInputs) -> dict[str, str]:
    """The SVG charts: training loss and IOU per epoch, test IOU per category."""
    def curve(key: str) -> dict[str, list[tuple[float, float]]]:
        return {m: [(r["epoch"], r[key]) for r in inputs.histories[m] if key in r]
                for m in inputs.models if inputs.histories.get(m)}

    cats = inputs.categories
    return {
        "curve_loss": svg_line_chart(curve("loss"), "Training loss", "epoch", "loss",
                                     COLOURS, LABELS),
        "curve_train_iou": svg_line_chart(curve("train_iou"), "Training IOU (defect class)",
                                          "epoch", "IOU", COLOURS, LABELS),
        "category_iou": svg_bar_chart(
            [*cats, "mean"],
            {m: [*(inputs.metrics[m]["per_category"].get(c, {}).get("iou", float("nan"))
                   for c in cats), inputs.metrics[m]["mean"]["iou"]] for m in inputs.models},
            "Test IOU per category", "IOU", COLOURS, LABELS),
    }


# ------------------------------------------------------------------------------ writer

NOTE = ("Per category: mean over its test images of the per-image score of the defect class; "
        "Mean: plain mean of the categories (as in the paper). Bold: best of our models and "
        "best of the paper's per row. Δ = ours − paper. Paper values exist only for the 15 "
        "MVTec AD categories; the paper's Mean is compared only when all 15 were evaluated.")
GRID_NOTE = ("Columns: input, ground truth, each model's prediction. White: defect pixels "
             "found; red: false alarms; blue: missed defect pixels.")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _write_csv(path: Path, header: list[str], rows: list[tuple[Any, ...]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_score_tables(metrics: dict[str, dict[str, Any]], out: Path) -> None:
    """``category_scores.csv`` (long format) and ``category_scores/<model>.csv``.

    The per-model files exist for ``dvc plots``: its bar template draws one panel per
    file, a bar per category, and the revisions side by side in ``dvc plots diff``.
    """
    rows = category_scores(metrics)
    _write_csv(out / "category_scores.csv", ["model", "category", "iou", "dice"], rows)
    for model in metrics:
        _write_csv(out / "category_scores" / f"{model}.csv", ["category", "iou", "dice"],
                   [row[1:] for row in rows if row[0] == model])


def write_report(inputs: ReportInputs, out: Path) -> None:
    """Write ``report.md`` (+ ``figures/``), ``report.html`` and the score tables."""
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    write_score_tables(inputs.metrics, out)

    svgs = charts(inputs)
    for name, svg in svgs.items():
        (figures / f"{name}.svg").write_text(svg)
    grids = {}
    for category in inputs.categories:
        grid, rows = sample_grid(inputs, category)
        grids[category] = (png_bytes(grid), [str(inputs.split.sources[i]) for i in rows])
        (figures / f"samples_{_safe(category)}.png").write_bytes(grids[category][0])

    comparisons = report_stats.pairwise(inputs.per_image)
    report_stats.write_json(out / "pairwise.json",
                            report_stats.pairwise_json(comparisons, inputs.per_image))
    tables = {"summary": summary_table(inputs), "iou": table1(inputs.metrics, "iou"),
              "dice": table1(inputs.metrics, "dice"), "registry": registry_table(inputs.registry)}
    no_registry = "Tracking is off: no registry aliases were set."
    warnings = list(collapsed_models(inputs).values())
    top = verdict_lines(inputs)
    did_it_learn = (markdown_table(*verdict_table(inputs)) + "\n\n"
                    + markdown_table(*baseline_table(inputs)),
                    html_table(*verdict_table(inputs)) + html_table(*baseline_table(inputs)))
    sections: list[tuple[str, str, str]] = [  # (title, markdown, html)
        ("For a line: parts rejected and passed", f"{LINE_NOTE}\n\n"
         + markdown_table(*line_table(inputs)),
         f"<p>{html.escape(LINE_NOTE)}</p>" + html_table(*line_table(inputs))),
        ("Provenance", markdown_table(["", ""], _prov_rows(inputs)),
         html_table(["", ""], _prov_rows(inputs))),
        ("Summary", "".join(f"**Warning: {n}**\n\n" for n in warnings)
         + markdown_table(*tables["summary"]),
         "".join(f"<p><b>Warning: {html.escape(n)}</b></p>" for n in warnings)
         + html_table(*tables["summary"])),
        ("Did it learn?", f"{VERDICT_NOTE}\n\n" + did_it_learn[0],
         f"<p>{html.escape(VERDICT_NOTE)}</p>" + did_it_learn[1]),
        ("Summary: model cost", f"{COST_NOTE}\n\n" + markdown_table(*cost_table(inputs)),
         f"<p>{COST_NOTE}</p>" + html_table(*cost_table(inputs))),
        ("Table 1: IOU", f"{NOTE}\n\n" + markdown_table(*tables["iou"]),
         f"<p>{NOTE}</p>" + html_table(*tables["iou"])),
        ("Table 1: Dice", markdown_table(*tables["dice"]), html_table(*tables["dice"])),
        ("Pixel AUROC and AP (threshold-free)",
         f"{RANKING_NOTE}\n\n" + markdown_table(*ranking_table(inputs)),
         f"<p>{RANKING_NOTE}</p>" + html_table(*ranking_table(inputs))),
        ("AUPRO and image-level detection",
         f"{DETECTION_NOTE}\n\n" + markdown_table(*detection_table(inputs)),
         f"<p>{DETECTION_NOTE}</p>" + html_table(*detection_table(inputs))),
        (report_stats.TITLE, *report_stats.section(comparisons, LABELS)),
        ("Model registry", markdown_table(*tables["registry"]) if inputs.registry
         else no_registry, html_table(*tables["registry"]) if inputs.registry
         else f"<p>{no_registry}</p>"),
        ("Charts", " ".join(f"![{n}](figures/{n}.svg)" for n, s in svgs.items() if s) + "\n",
         "".join(svgs.values())),
        ("Test images (Fig. 4 style)", GRID_NOTE + "\n", f"<p>{GRID_NOTE}</p>"),
    ]
    md = ["# MR2U-Net reproduction report\n", *(f"**{line}**\n" for line in top)]
    body = ["<h1>MR2U-Net reproduction report</h1>",
            *(f"<p><b>{html.escape(line)}</b></p>" for line in top)]
    for title, md_text, html_text in sections:
        md += [f"## {title}\n", md_text]
        body += [f"<h2>{title}</h2>", html_text]
    for category, (png, sources) in grids.items():
        caption = "Rows: " + ", ".join(sources)
        md += [f"### {category}\n", f"![{category}](figures/samples_{_safe(category)}.png)\n",
               f"{caption}\n"]
        body += [f"<h3>{html.escape(category)}</h3><figure>{png_img(png, category)}"
                 f"<figcaption>{html.escape(caption)}</figcaption></figure>"]
    (out / "report.md").write_text("\n\n".join(part.strip() for part in md) + "\n")
    (out / "report.html").write_text(html_page("MR2U-Net reproduction report", body))


def _prov_rows(inputs: ReportInputs) -> list[list[Cell]]:
    return [[Cell(k), Cell(str(v))] for k, v in inputs.provenance.items()]


# ----------------------------------------------------------------------------- stage


def _tiles_note(tiling: dict[str, Any] | None) -> str:
    """``, tiles of 64 px, predicted whole`` for a model trained on crops; else ``""``."""
    if not tiling:
        return ""
    return (f", tiles of {tiling['tile']} px, predicted "
            f"{tiling.get('predict', 'windows')}")


def provenance(params: dict[str, Any], inputs: ReportInputs, root: Path) -> dict[str, str]:
    """Where the numbers come from: commit, params, data, training devices, versions."""
    from mr2unet.config.profiles import applied as applied_profile
    from mr2unet.config.provenance import git_commit, torch_version
    from mr2unet.models.checkpoint import read_checkpoint

    prov = {
        "git commit": git_commit(root),
        # The profile params.yaml was written from (its first-line note; no stage depends
        # on it, so after hand edits it may say more than the values do).
        "profile": applied_profile(root / "params.yaml"),
        "data source": str(params["data"]["source"]),
        "test images": f"{len(inputs.split)} in {len(inputs.categories)} categories",
    }
    summary = root / SUMMARY
    auto = json.loads(summary.read_text()).get("auto") if summary.is_file() else None
    if auto:  # prepare.mode auto: what it chose and why (absent for the paper's resize)
        prov["preparation"] = f"prepare.mode auto -> {auto['mode']}: {auto['reason']}"
    for m in inputs.models:
        meta = read_checkpoint(ModelFiles(m, root).checkpoint).get("meta", {})
        commit = str(meta.get("git_commit", "?"))
        short = commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")
        prov[f"{LABELS[m]} training"] = (
            f"{meta.get('epochs', '?')} epochs on {meta.get('device', '?')}, torch "
            f"{meta.get('torch_version', '?')}, commit {short}"
            + _tiles_note(meta.get("tiling")))
    prov["torch / python (report)"] = f"{torch_version()} / {platform.python_version()}"
    prov["generated"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return prov


def load_report(params: dict[str, Any], root: Path = Path(".")) -> ReportInputs:
    """Everything the report shows except the registry (the stage script adds that)."""
    inputs = load_inputs(params["train"]["models"], root, params["evaluate"]["report_samples"])
    inputs.provenance = provenance(params, inputs, root)
    inputs.timing = read_timings(inputs.models, root)
    return inputs
