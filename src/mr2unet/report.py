"""The report: our Table 1 beside the paper's, training curves, a Fig. 4-style grid.

Writes ``report.md`` (figures as PNG files beside it) and ``report.html`` (one
self-contained page: figures embedded as base64 PNG, curves as inline SVG).
"""

from __future__ import annotations

import base64
import csv
import html
import io
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mr2unet.params import MODEL_NAMES

LABELS = {"unet": "U-Net", "resunet": "Residual U-Net", "attention_unet": "Attention U-Net",
          "mr2unet": "MR2U-Net"}
COLOURS = {"unet": "#1f77b4", "resunet": "#ff7f0e", "attention_unet": "#2ca02c",
           "mr2unet": "#d62728"}
OVERLAY = np.array([230, 30, 30], np.float32)


def paper_table() -> dict[tuple[str, str], dict[str, float]]:
    """The paper's Table 1: ``{(model, category): {"iou": .., "dice": ..}}``."""
    text = resources.files("mr2unet").joinpath("paper_table1.csv").read_text()
    return {(r["model"], r["category"]): {"iou": float(r["iou"]), "dice": float(r["dice"])}
            for r in csv.DictReader(io.StringIO(text))}


@dataclass
class ReportInputs:
    """Everything the report shows, already loaded."""

    metrics: dict[str, dict]  # model -> metrics/<model>.json
    histories: dict[str, list[dict[str, float]]]  # model -> per-epoch rows
    images: np.ndarray  # test images (N, S, S, 3)
    masks: np.ndarray  # ground truth (N, S, S)
    categories: np.ndarray
    predictions: dict[str, np.ndarray]  # model -> (N, S, S)
    provenance: dict[str, str] = field(default_factory=dict)
    samples_per_category: int = 2
    aliases: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------ tables


def table_rows(metrics: dict[str, dict], metric: str) -> list[list[str]]:
    """Rows ``[category, cell per model]``: ours (paper, difference), best ours in bold."""
    paper = paper_table()
    models = [m for m in MODEL_NAMES if m in metrics]
    categories = sorted({c for m in models for c in metrics[m]["per_category"]})
    rows = []
    for category in [*categories, "mean"]:
        ours = {m: (metrics[m]["mean"] if category == "mean"
                    else metrics[m]["per_category"].get(category, {})).get(metric)
                for m in models}
        best = max((v for v in ours.values() if v is not None), default=None)
        cells = [category]
        for m in models:
            value = ours[m]
            if value is None:
                cells.append("–")
                continue
            text = f"{value:.4f}"
            if value == best and len(models) > 1:
                text = f"**{text}**"
            ref = paper.get((m, category))
            if ref is not None and (category != "mean" or set(categories) <= {
                    c for (_, c) in paper}):
                text += f" ({ref[metric]:.4f}, {value - ref[metric]:+.4f})"
            cells.append(text)
        rows.append(cells)
    return rows


def markdown_table(metrics: dict[str, dict], metric: str) -> str:
    models = [m for m in MODEL_NAMES if m in metrics]
    lines = ["| category | " + " | ".join(LABELS[m] for m in models) + " |",
             "|---|" + "---|" * len(models)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(metrics, metric)]
    return "\n".join(lines)


def html_table(metrics: dict[str, dict], metric: str) -> str:
    models = [m for m in MODEL_NAMES if m in metrics]
    head = "".join(f"<th>{LABELS[m]}</th>" for m in models)

    def cell(text: str) -> str:
        text = html.escape(text)
        if text.startswith("**"):
            value, _, rest = text[2:].partition("**")
            text = f"<b>{value}</b>{rest}"
        return f"<td>{text}</td>"

    body = "".join("<tr><th>" + html.escape(row[0]) + "</th>" + "".join(map(cell, row[1:]))
                   + "</tr>" for row in table_rows(metrics, metric))
    return f"<table><tr><th>category</th>{head}</tr>{body}</table>"


# ----------------------------------------------------------------------------- figures


def curves_svg(histories: dict[str, list[dict[str, float]]], key: str, title: str,
               width: int = 520, height: int = 260) -> str:
    """A line chart of ``key`` per epoch, one line per model, as inline SVG."""
    pad = 40
    series = {m: [(r["epoch"], r[key]) for r in rows] for m, rows in histories.items() if rows}
    if not series:
        return ""
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)
    y0, y1 = min(0.0, min(ys)), max(ys) if max(ys) > min(0.0, min(ys)) else 1.0

    def sx(x: float) -> float:
        return pad + (x - x0) / (x1 - x0) * (width - 2 * pad)

    def sy(y: float) -> float:
        return height - pad - (y - y0) / (y1 - y0) * (height - 2 * pad)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">',
             f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">'
             f"{html.escape(title)}</text>",
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
             'stroke="#444"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#444"/>',
             f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle" font-size="11">'
             "epoch</text>",
             f'<text x="4" y="{pad - 6}" font-size="10">{y1:.3g}</text>',
             f'<text x="4" y="{height - pad}" font-size="10">{y0:.3g}</text>']
    for i, (model, pts) in enumerate(series.items()):
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        colour = COLOURS.get(model, "#333")
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                     f'points="{path}"/>')
        parts.append(f'<text x="{width - pad - 110}" y="{pad + 14 * i}" font-size="11" '
                     f'fill="{colour}">{LABELS.get(model, model)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Tint the defect pixels of ``image`` red (60 %)."""
    out = image.astype(np.float32)
    sel = mask.astype(bool)
    out[sel] = 0.4 * out[sel] + 0.6 * OVERLAY
    return out.astype(np.uint8)


def sample_grid(inputs: ReportInputs, category: str) -> Image.Image:
    """Rows = test images of ``category``; columns = input, ground truth, each model.

    Tiles smaller than 128 px are enlarged (nearest neighbour) so that they stay legible.
    """
    idx = np.flatnonzero(inputs.categories == category)[:inputs.samples_per_category]
    models = [m for m in MODEL_NAMES if m in inputs.predictions]
    scale = max(1, 128 // inputs.images.shape[1])
    size = inputs.images.shape[1] * scale
    header = 18
    cols = 2 + len(models)
    grid = Image.new("RGB", (cols * (size + 4), header + len(idx) * (size + 4)), "white")
    draw = ImageDraw.Draw(grid)
    for c, label in enumerate(["input", "ground truth", *(LABELS[m] for m in models)]):
        draw.text((c * (size + 4) + 2, 2), label, fill="black")
    for r, i in enumerate(idx):
        tiles = [inputs.images[i], overlay(inputs.images[i], inputs.masks[i])]
        tiles += [overlay(inputs.images[i], inputs.predictions[m][i]) for m in models]
        for c, tile in enumerate(tiles):
            img = Image.fromarray(tile).resize((size, size), Image.Resampling.NEAREST)
            grid.paste(img, (c * (size + 4), header + r * (size + 4)))
    return grid


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------ writer

CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
       "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
       "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
       "th{background:#f4f4f4}img{max-width:100%}")


def write_report(inputs: ReportInputs, out: Path) -> None:
    """Write ``report.md``, ``report.html``, ``figures/`` and ``category_scores.csv``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    categories = sorted(set(inputs.categories.tolist()))
    grids = {c: png_bytes(sample_grid(inputs, c)) for c in categories}
    for c, data in grids.items():
        (out / "figures" / f"samples_{c}.png").write_bytes(data)
    svgs = [curves_svg(inputs.histories, "loss", "training loss"),
            curves_svg(inputs.histories, "train_iou", "training IOU")]
    for name, svg in zip(("loss", "train_iou"), svgs, strict=True):
        (out / "figures" / f"curve_{name}.svg").write_text(svg)
    with (out / "category_scores.csv").open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["model", "category", "iou", "dice"])
        for m in (m for m in MODEL_NAMES if m in inputs.metrics):
            for c, s in inputs.metrics[m]["per_category"].items():
                writer.writerow([m, c, s["iou"], s["dice"]])

    note = ("Cells: ours (paper, ours − paper); bold = best of the four models. The paper's "
            "values exist only for the 15 MVTec AD categories; its mean is compared only "
            "when all 15 were evaluated.")
    prov = "\n".join(f"| {k} | {v} |" for k, v in inputs.provenance.items())
    aliases = "\n".join(f"- `{k}`: `{v}`" for k, v in inputs.aliases.items()) or \
        "- (tracking off: no registry aliases)"
    md = [f"# MR2U-Net reproduction report\n\n| provenance | |\n|---|---|\n{prov}\n",
          "## Table 1: IOU\n", note + "\n", markdown_table(inputs.metrics, "iou"),
          "\n## Table 1: Dice\n", markdown_table(inputs.metrics, "dice"),
          "\n## Model registry\n", aliases,
          "\n## Training curves\n", "![loss](figures/curve_loss.svg) "
          "![IOU](figures/curve_train_iou.svg)\n",
          "## Test images (input, ground truth, predictions in red)\n"]
    md += [f"### {c}\n\n![{c}](figures/samples_{c}.png)\n" for c in categories]
    (out / "report.md").write_text("\n".join(md))

    prov_html = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                        for k, v in inputs.provenance.items())
    alias_html = "".join(f"<li><code>{html.escape(k)}</code>: <code>{html.escape(v)}</code>"
                         "</li>" for k, v in inputs.aliases.items()) or \
        "<li>(tracking off: no registry aliases)</li>"
    body = [f"<h1>MR2U-Net reproduction report</h1><table>{prov_html}</table>",
            f"<h2>Table 1: IOU</h2><p>{html.escape(note)}</p>",
            html_table(inputs.metrics, "iou"), "<h2>Table 1: Dice</h2>",
            html_table(inputs.metrics, "dice"), f"<h2>Model registry</h2><ul>{alias_html}</ul>",
            "<h2>Training curves</h2>", *svgs,
            "<h2>Test images (input, ground truth, predictions in red)</h2>"]
    for c in categories:
        data = base64.b64encode(grids[c]).decode()
        body.append(f'<h3>{html.escape(c)}</h3><img alt="{html.escape(c)}" '
                    f'src="data:image/png;base64,{data}">')
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>MR2U-Net report</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")
    (out / "report.html").write_text(page)


def read_history(path: Path) -> list[dict[str, float]]:
    with path.open() as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]

