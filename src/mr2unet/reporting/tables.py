"""The report's score tables: Table 1 beside the paper, the summary, threshold-free
scores, detection, model cost, and the long-format category scores.

Each table is ``(header, rows)`` of :class:`~mr2unet.reporting.markup.Cell`; the report
(:mod:`mr2unet.reporting.report`) renders it to Markdown and HTML.
"""

from __future__ import annotations

from typing import Any

from mr2unet.models import MODEL_NAMES
from mr2unet.models.inference import DEFAULT_THRESHOLD
from mr2unet.reporting.inputs import LABELS, ReportInputs, paper_categories, paper_table
from mr2unet.reporting.markup import Cell

MISSING = "–"
HeaderRows = tuple[list[str], list[list[Cell]]]


def fmt(value: float | None, signed: bool = False) -> str:
    """A score with 4 decimals (signed: with its sign); ``–`` for None."""
    if value is None:
        return MISSING
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _best(values: list[float | None]) -> float | None:
    """The highest value as displayed (4 decimals), so displayed ties are all bold."""
    shown = [round(v, 4) for v in values if v is not None]
    return max(shown) if len(shown) > 1 else None


def table1(metrics: dict[str, dict[str, Any]], metric: str) -> HeaderRows:
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
            row.append(Cell(fmt(ours[m]), ours[m] is not None and round(ours[m], 4) == best_ours))
            if with_paper:
                diff = ours[m] - theirs[m] if None not in (ours[m], theirs[m]) else None
                row += [Cell(fmt(theirs[m]),
                             theirs[m] is not None and round(theirs[m], 4) == best_paper),
                        Cell(fmt(diff, signed=True))]
        rows.append(row)
    return header, rows


def summary_table(inputs: ReportInputs) -> HeaderRows:
    """One row per model: primary means, the paper's means, pooled scores, counts."""
    paper = paper_table()
    comparable = set(inputs.categories) == paper_categories()
    header = ["model", "mean IOU", "mean Dice", "paper IOU", "paper Dice", "pooled IOU",
              "pooled Dice", "test images", "empty predictions", "pixel AUROC", "pixel AP",
              "verdict", "mask threshold"]
    collapsed = inputs.records.collapse_notes(LABELS)
    best = _best(list(inputs.records.rankable().values()))  # a collapsed network is not "best"
    rows = []
    for m in inputs.models:
        mean, pooled = inputs.metrics[m]["mean"], inputs.pooled[m]
        ref = paper.get((m, "mean")) if comparable else None
        label = LABELS[m] + (" (collapsed)" if m in collapsed else "")
        rows.append([Cell(label), Cell(fmt(mean["iou"]), round(mean["iou"], 4) == best),
                     Cell(fmt(mean["dice"])), Cell(fmt(ref["iou"] if ref else None)),
                     Cell(fmt(ref["dice"] if ref else None)),
                     Cell(fmt(pooled["all_images"]["iou"])),
                     Cell(fmt(pooled["all_images"]["dice"])), Cell(str(pooled["images"])),
                     Cell(str(pooled["empty_predictions"])),
                     Cell(fmt(mean.get("pixel_auroc"))), Cell(fmt(mean.get("pixel_ap"))),
                     Cell(inputs.verdict_of(m).get("verdict", MISSING)),
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


def detection_table(inputs: ReportInputs) -> HeaderRows:
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
                         Cell(fmt(scores.get("aupro"))), Cell(fmt(scores.get("image_auroc"))),
                         Cell(fmt(scores.get("image_ap"))),
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


def ranking_table(inputs: ReportInputs) -> HeaderRows:
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
                row.append(Cell(fmt(v), v is not None and round(v, 4) == best[key]))
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
    "FLOPs) come from metrics/evaluation/<model>.json and are exact. Training time (wall clock "
    "of the train stage) and latency (ms per image: median wall time of forward pass + "
    "softmax on a batch of 1 or 32 images already on the device, fp32, after warm-up runs; "
    "n = timed runs) come from metrics/timing/<model>.json: measurements, they vary "
    "between runs and machines. A model trained on tiles (prepare.mode: tiles) sees a crop "
    "per pass: its batch-1 cell also gives ms per whole test image, predicted as evaluate "
    "predicts it (whole: one padded pass; windows: their count and ms each).")


def cost_table(inputs: ReportInputs) -> HeaderRows:
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


def category_scores(metrics: dict[str, dict[str, Any]]) -> list[tuple[str, str, float, float]]:
    """Long format ``(model, category, iou, dice)``, models in the paper's order."""
    return [(m, c, s["iou"], s["dice"])
            for m in MODEL_NAMES if m in metrics
            for c, s in sorted(metrics[m]["per_category"].items())]



TABLE1_NOTE = (
    "Per category: mean over its test images of the per-image score of the defect class; "
    "Mean: plain mean of the categories (as in the paper). Bold: best of our models and "
    "best of the paper's per row. Δ = ours − paper. Paper values exist only for the 15 "
    "MVTec AD categories; the paper's Mean is compared only when all 15 were evaluated.")
