"""Rendering for the report: tables, SVG charts, and documents (sections of blocks) to
Markdown and one HTML page.

Pure functions from plain data to text; they know nothing about models or metrics.
Charts are inline SVG (no plotting library needed); images are embedded as base64 PNG,
so the page is one self-contained file.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

CSS = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
       "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
       "th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}"
       "img{max-width:100%;image-rendering:pixelated}svg{margin:0 1em 1em 0}"
       "figure{margin:1em 0}figcaption{font-size:12px;color:#555}")


@dataclass(frozen=True)
class Cell:
    """A table cell: its text and whether it is highlighted (bold)."""

    text: str
    bold: bool = False


# ----------------------------------------------------------------------------- tables


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    def text(cell: Cell) -> str:
        return f"**{cell.text}**" if cell.bold and cell.text else cell.text

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(text(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def html_table(header: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    def cell(c: Cell) -> str:
        text = html.escape(c.text)
        return f"<td><b>{text}</b></td>" if c.bold and text else f"<td>{text}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ----------------------------------------------------------------------------- charts


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [low, high]."""
    span = high - low
    raw = span / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _svg_open(width: int, height: int, title: str) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" role="img">',
            f"<title>{html.escape(title)}</title>",
            f'<text x="{width / 2:.0f}" y="16" text-anchor="middle" font-size="13">'
            f"{html.escape(title)}</text>"]


def _y_axis(parts: list[str], y0: float, y1: float, left: int, right: int,
            sy: Callable[[float], float], label: str) -> None:
    top_label_y = sy(y1) - 12
    for tick in _ticks(y0, y1):
        y = sy(tick)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" '
                     'stroke="#eee"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 3:.1f}" text-anchor="end" '
                     f'font-size="10">{tick:.3g}</text>')
    parts.append(f'<text x="4" y="{top_label_y:.0f}" font-size="11">{html.escape(label)}</text>')


def _legend(parts: list[str], names: Sequence[str], colours: dict[str, str],
            labels: dict[str, str], x: int, y: int) -> None:
    for i, name in enumerate(names):
        colour = colours.get(name, "#333")
        parts.append(f'<rect x="{x}" y="{y + 14 * i - 8}" width="10" height="10" '
                     f'fill="{colour}"/>')
        parts.append(f'<text x="{x + 14}" y="{y + 14 * i + 1}" font-size="11">'
                     f"{html.escape(labels.get(name, name))}</text>")


def svg_line_chart(series: dict[str, list[tuple[float, float]]], title: str, x_label: str,
                   y_label: str, colours: dict[str, str], labels: dict[str, str],
                   width: int = 560, height: int = 300) -> str:
    """One polyline per series of ``(x, y)`` points; ``""`` when there is nothing to draw."""
    points = [p for pts in series.values() for p in pts if math.isfinite(p[1])]
    if not points:
        return ""
    left, right, top, bottom = 52, width - 130, 30, height - 36
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(0.0, min(p[1] for p in points)), max(p[1] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (right - left)

    def sy(y: float) -> float:
        return bottom - (y - y0) / (y1 - y0) * (bottom - top)

    parts = _svg_open(width, height, title)
    _y_axis(parts, y0, y1, left, right, sy, y_label)
    for tick in _ticks(x0, x1):
        parts.append(f'<text x="{sx(tick):.1f}" y="{bottom + 14}" text-anchor="middle" '
                     f'font-size="10">{tick:g}</text>')
    parts.append(f'<text x="{(left + right) / 2:.0f}" y="{height - 6}" text-anchor="middle" '
                 f'font-size="11">{html.escape(x_label)}</text>')
    parts.append(f'<polyline fill="none" stroke="#444" points="{left},{top} {left},{bottom} '
                 f'{right},{bottom}"/>')
    for name, pts in series.items():
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts if math.isfinite(y))
        parts.append(f'<polyline fill="none" stroke="{colours.get(name, "#333")}" '
                     f'stroke-width="2" points="{path}"/>')
    _legend(parts, list(series), colours, labels, right + 12, top + 10)
    parts.append("</svg>")
    return "".join(parts)


def svg_bar_chart(groups: Sequence[str], series: dict[str, Sequence[float]], title: str,
                  y_label: str, colours: dict[str, str], labels: dict[str, str],
                  y_max: float = 1.0, height: int = 320) -> str:
    """Grouped vertical bars: one group per entry of ``groups``, one bar per series."""
    if not groups or not series:
        return ""
    bar, gap = 9, 10
    group_width = bar * len(series) + gap
    left, top, bottom = 52, 30, height - 90
    right = left + group_width * len(groups)
    width = right + 140

    def sy(y: float) -> float:
        return bottom - min(max(y, 0.0), y_max) / y_max * (bottom - top)

    parts = _svg_open(width, height, title)
    _y_axis(parts, 0.0, y_max, left, right, sy, y_label)
    for g, group in enumerate(groups):
        gx = left + g * group_width + gap / 2
        for s, (name, values) in enumerate(series.items()):
            value = values[g]
            if not math.isfinite(value):
                continue
            parts.append(f'<rect x="{gx + s * bar:.1f}" y="{sy(value):.1f}" width="{bar - 1}" '
                         f'height="{bottom - sy(value):.1f}" fill="{colours.get(name, "#333")}">'
                         f"<title>{html.escape(labels.get(name, name))} {html.escape(group)}: "
                         f"{value:.4f}</title></rect>")
        cx = gx + bar * len(series) / 2
        parts.append(f'<text x="{cx:.1f}" y="{bottom + 8}" font-size="10" text-anchor="end" '
                     f'transform="rotate(-60 {cx:.1f} {bottom + 8})">{html.escape(group)}</text>')
    parts.append(f'<polyline fill="none" stroke="#444" points="{left},{top} {left},{bottom} '
                 f'{right},{bottom}"/>')
    _legend(parts, list(series), colours, labels, right + 12, top + 10)
    parts.append("</svg>")
    return "".join(parts)


# ------------------------------------------------------------------------------- page


def png_img(png: bytes, alt: str) -> str:
    """An ``<img>`` holding ``png`` inline (base64 data URI)."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def html_page(title: str, body: Sequence[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


# --------------------------------------------------------------------------- documents
# A document is described once, as sections of blocks, and rendered to Markdown
# (:func:`render_markdown`) and to one self-contained HTML page (:func:`render_html`).


@dataclass(frozen=True)
class Text:
    """A paragraph (bold: the whole paragraph)."""

    text: str
    bold: bool = False


@dataclass(frozen=True)
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[Cell]]


@dataclass(frozen=True)
class Bullets:
    items: Sequence[str]


@dataclass(frozen=True)
class Figure:
    """A picture: ``path`` (relative to the Markdown file) for Markdown, ``inline`` (an
    SVG document or :func:`png_img`) for HTML, an optional caption."""

    path: str
    alt: str
    inline: str
    caption: str = ""


Block = Text | Table | Bullets | Figure


@dataclass(frozen=True)
class Section:
    title: str
    blocks: Sequence[Block]
    level: int = 2


def _markdown_block(block: Block) -> str:
    if isinstance(block, Text):
        return f"**{block.text}**" if block.bold else block.text
    if isinstance(block, Table):
        return markdown_table(block.header, block.rows)
    if isinstance(block, Bullets):
        return "\n".join(f"- {item}" for item in block.items)
    figure = f"![{block.alt}]({block.path})"
    return f"{figure}\n\n{block.caption}" if block.caption else figure


def _html_block(block: Block) -> str:
    if isinstance(block, Text):
        text = html.escape(block.text)
        return f"<p><b>{text}</b></p>" if block.bold else f"<p>{text}</p>"
    if isinstance(block, Table):
        return html_table(block.header, block.rows)
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in block.items) + "</ul>"
    if not block.caption:
        return block.inline
    return (f"<figure>{block.inline}<figcaption>{html.escape(block.caption)}</figcaption>"
            "</figure>")


def render_markdown_blocks(blocks: Sequence[Block]) -> str:
    """Blocks as Markdown, one paragraph each."""
    return "\n\n".join(_markdown_block(b).strip() for b in blocks) + "\n"


def render_markdown(title: str, lead: Sequence[Block], sections: Sequence[Section]) -> str:
    """The document as Markdown: ``# title``, the lead blocks, then each section."""
    parts = [f"# {title}", *(_markdown_block(b) for b in lead)]
    for section in sections:
        parts += [f"{'#' * section.level} {section.title}",
                  *(_markdown_block(b) for b in section.blocks)]
    return "\n\n".join(part.strip() for part in parts) + "\n"


def render_html(title: str, lead: Sequence[Block], sections: Sequence[Section]) -> str:
    """The document as one self-contained HTML page (:func:`html_page`)."""
    body = [f"<h1>{html.escape(title)}</h1>", *(_html_block(b) for b in lead)]
    for section in sections:
        n = section.level
        body.append(f"<h{n}>{html.escape(section.title)}</h{n}>"
                    + "".join(_html_block(b) for b in section.blocks))
    return html_page(title, body)
