"""The report's figures: SVG charts of training and test scores, Fig. 4-style grids."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from mr2unet.data.prepared import PreparedSplit
from mr2unet.models import COLOURS
from mr2unet.reporting.inputs import LABELS, ReportInputs
from mr2unet.reporting.markup import svg_bar_chart, svg_line_chart
from mr2unet.reporting.pictures import error_map

MIN_TILE = 128  # tiles are scaled up (nearest) to at least this many pixels


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



GRID_NOTE = ("Columns: input, ground truth, each model's prediction. White: defect pixels "
             "found; red: false alarms; blue: missed defect pixels.")
