"""Defect statistics of a dataset: how large the defects are and how much they stand out.

    python benchmarks/defect_stats.py data/raw                    # an MVTec-layout tree
    python benchmarks/defect_stats.py data/raw --size 64          # ... measured at 64 px
    python benchmarks/defect_stats.py data/prepared/test.npz      # a prepared split
    python benchmarks/defect_stats.py data/raw --json stats.json  # also write the numbers

Per defective image:

``area``       defect pixels / image pixels, at the image's original size (raw trees only);
``area@S``     the same after the resize to ``S`` px that `prepare` does (mask_threshold
               0.5, thin defects kept); for a prepared split, at its own size. Padding
               (mask value 255, ``prepare.resize: pad``) counts neither as defect nor as
               image;
``contrast``   |mean grey level inside the mask - mean grey level in a ring around it| / 255,
               at ``S`` px; the ring is the mask dilated by ``max(1, S // 32)`` px (4 px at
               128, 2 at 64) minus the mask, and leaves out padding. 0 = invisible on
               average, 1 = black on white;
``cnr``        the same difference divided by the standard deviation of the ring (a
               contrast-to-noise ratio: how many "surface noise" units the defect stands
               out by; a defect on a busy texture has a lower cnr than its contrast says).

Grey levels are PIL's ITU-R 601 luma of the RGB image. Prints the median and the 10th / 90th
percentiles overall and per category (or per defect type, ``--by defect_type``), which is
how docs/data.md compares the synthetic demo data with the real MVTec AD bottle sample.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from mr2unet.data.mvtec import scan, validate_layout  # noqa: E402
from mr2unet.data.prepare import read_image, resize_image, resize_mask  # noqa: E402
from mr2unet.data.prepared import load_split  # noqa: E402

IGNORE = 255
FIGURES = ("area", "area@S", "contrast", "cnr")


def ring_width(size: int) -> int:
    return max(1, size // 32)


def contrast(gray: np.ndarray, mask: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    """(|mean inside - mean of the ring| / 255, that difference / ring std) of one image."""
    if not mask.any():
        return float("nan"), float("nan")
    width = ring_width(min(mask.shape))
    grown = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255)
                       .filter(ImageFilter.MaxFilter(2 * width + 1))) > 0
    ring = grown & ~mask & valid
    if not ring.any():
        return float("nan"), float("nan")
    diff = abs(float(gray[mask].mean()) - float(gray[ring].mean()))
    return diff / 255, diff / max(float(gray[ring].std()), 1.0)


def luma(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float64)


def image_stats(rgb: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """The figures of one prepared image (uint8 RGB) and its mask (0/1, 255 = padding)."""
    valid = mask != IGNORE
    defect = mask == 1
    c, cnr = contrast(luma(rgb), defect, valid)
    return {"area@S": float(defect.sum() / max(valid.sum(), 1)), "contrast": c, "cnr": cnr}


def raw_stats(root: Path, size: int) -> list[dict]:
    rows = []
    for sample in scan(root, validate_layout(root)):
        img = read_image(root / sample.image)
        mask_img = read_image(root / sample.mask)
        full = np.asarray(mask_img.convert("L")) > 0
        mask, _ = resize_mask(mask_img, size, 0.5, True)
        rows.append({"category": sample.category, "defect_type": sample.defect_type,
                     "area": float(full.mean()),
                     **image_stats(resize_image(img, size), mask)})
    return rows


def split_stats(path: Path) -> list[dict]:
    split = load_split(path)
    return [{"category": str(split.categories[i]), "defect_type": str(split.defect_types[i]),
             "area": float("nan"), **image_stats(split.images[i], split.masks[i])}
            for i in range(len(split))]


def summarise(rows: list[dict]) -> dict[str, dict[str, float]]:
    out = {"n": {"": float(len(rows))}}
    for key in FIGURES:
        values = np.array([r[key] for r in rows], dtype=np.float64)
        values = values[~np.isnan(values)]
        if values.size == 0:
            continue
        p10, p50, p90 = np.percentile(values, [10, 50, 90])
        out[key] = {"p10": float(p10), "median": float(p50), "p90": float(p90),
                    "mean": float(values.mean())}
    return out


def _fmt(key: str, value: float) -> str:
    return f"{100 * value:6.2f}%" if key.startswith("area") else f"{value:6.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="an MVTec-layout tree or a prepared .npz")
    parser.add_argument("--size", type=int, default=128,
                        help="resize raw images to this many px for area@S and contrast "
                             "(default 128, the paper's; the demo uses 64)")
    parser.add_argument("--by", choices=("category", "defect_type"), default="category",
                        help="the rows below the overall one (default: category)")
    parser.add_argument("--json", type=Path, help="also write the summaries here")
    args = parser.parse_args()
    if args.source.suffix == ".npz":
        rows = split_stats(args.source)
        size = int(load_split(args.source).images.shape[1])
    else:
        rows = raw_stats(args.source, args.size)
        size = args.size
    groups = {"ALL": rows}
    for name in sorted({r[args.by] for r in rows}):
        groups[name] = [r for r in rows if r[args.by] == name]
    summaries = {name: summarise(group) for name, group in groups.items()}

    print(f"{args.source}: {len(rows)} defective images, S = {size} px; "
          f"median [p10, p90] per image")
    header = f"{'':14s} {'n':>4s}" + "".join(
        f"  {k.replace('@S', f'@{size}'):>26s}" for k in FIGURES)
    print(header)
    for name, summary in summaries.items():
        cells = []
        for key in FIGURES:
            s = summary.get(key)
            cells.append(f"  {'-':>26s}" if s is None else
                         f"  {_fmt(key, s['median'])} [{_fmt(key, s['p10'])},"
                         f"{_fmt(key, s['p90'])}]")
        print(f"{name[:14]:14s} {int(summary['n']['']):4d}" + "".join(cells))
    if args.json:
        args.json.write_text(json.dumps({"source": str(args.source), "size": size,
                                         "summaries": summaries}, indent=2) + "\n")


if __name__ == "__main__":
    main()
