"""Preparation: selection, count check, split, resizing, outputs, on real and generated data."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image, ImageDraw

from mr2unet.data.mvtec import PAPER_COUNTS, Sample, check_counts, scan, validate_layout
from mr2unet.data.prepare import (
    MANIFEST_COLUMNS,
    PrepareConfig,
    crop_padding,
    defect_pixels,
    n_test_images,
    pad_box,
    prepare,
    resize_image,
    resize_mask,
    split_samples,
)
from mr2unet.data.prepared import load_split
from mr2unet.errors import UserError
from mr2unet.metrics.segmentation import IGNORE_LABEL

REPO = Path(__file__).resolve().parents[1]
SHARED_COUNTS = REPO.parent / "shared" / "paper" / "abnormal_counts.csv"


@pytest.fixture(scope="module")
def bottle_prepared(bottle_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bottle_prepared")
    prepare(bottle_raw, out, PrepareConfig())
    return out


def test_real_bottle_counts_split_and_arrays(bottle_prepared: Path) -> None:
    summary = json.loads((bottle_prepared / "summary.json").read_text())
    assert (summary["images"], summary["train"], summary["test"]) == (63, 50, 13)
    assert summary["per_category"] == {"bottle": {"train": 50, "test": 13,
                                                  "thin_defects_kept": 0}}
    assert summary["source_sizes"] == ["900x900"]
    assert summary["count_check"] == "skipped: not the 15 MVTec AD categories"
    assert summary["empty_masks"] == 0
    train = load_split(bottle_prepared / "train.npz")
    test = load_split(bottle_prepared / "test.npz")
    assert summary["bytes"] == {"train": (bottle_prepared / "train.npz").stat().st_size,
                                "test": (bottle_prepared / "test.npz").stat().st_size}
    assert train.images.shape == (50, 128, 128, 3) and train.images.dtype == np.uint8
    assert test.images.shape == (13, 128, 128, 3)
    assert train.masks.shape == (50, 128, 128) and test.masks.dtype == np.uint8
    for split in (train, test):
        assert set(np.unique(split.masks)) == {0, 1}
        assert (split.masks.reshape(len(split), -1).max(1) == 1).all()  # none empty
        assert set(split.categories) == {"bottle"}
    sources = np.concatenate([train.sources, test.sources])
    assert len(set(sources)) == 63 and not any("/good/" in s for s in sources)
    types = np.concatenate([train.defect_types, test.defect_types])
    assert {t: int((types == t).sum()) for t in set(types)} == {
        "broken_large": 20, "broken_small": 22, "contamination": 21}


def test_real_bottle_manifest(bottle_prepared: Path, bottle_raw: Path) -> None:
    manifest = pd.read_csv(bottle_prepared / "manifest.csv")
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert manifest["image"].tolist() == sorted(manifest["image"])
    assert manifest["split"].value_counts().to_dict() == {"train": 50, "test": 13}
    assert (manifest["width"] == 900).all() and (manifest["height"] == 900).all()
    assert all((bottle_raw / p).is_file() for p in [*manifest["image"], *manifest["mask"]])
    first = manifest.iloc[0]
    assert first["image"] == "bottle/test/broken_large/000.png"
    assert first["mask"] == "bottle/ground_truth/broken_large/000_mask.png"
    # The test split of the npz is the manifest's, in the same order.
    test = load_split(bottle_prepared / "test.npz")
    assert test.sources.tolist() == manifest.loc[manifest["split"] == "test", "image"].tolist()


def test_prepare_is_byte_identical_on_a_second_run(bottle_prepared: Path, bottle_raw: Path,
                                                   tmp_path: Path) -> None:
    prepare(bottle_raw, tmp_path, PrepareConfig())
    for name in ("manifest.csv", "train.npz", "test.npz", "summary.json"):
        assert (tmp_path / name).read_bytes() == (bottle_prepared / name).read_bytes(), name


def test_paper_counts_are_the_shared_table() -> None:
    if not SHARED_COUNTS.is_file():
        pytest.skip(f"{SHARED_COUNTS} not found (../shared is missing)")
    table = pd.read_csv(SHARED_COUNTS)
    assert dict(zip(table["category"], table["abnormal_images"], strict=True)) == PAPER_COUNTS
    assert sum(PAPER_COUNTS.values()) == 1258


def test_count_check_reports_the_difference() -> None:
    check_counts(dict(PAPER_COUNTS))
    with pytest.raises(UserError, match=r"bottle: 60 vs 63 \(-3\), pill: 142 vs 141 \(\+1\)\. "
                                        r".*data.check_counts: false"):
        check_counts({**PAPER_COUNTS, "bottle": 60, "pill": 142})
    with pytest.raises(UserError, match=r"zipper: 0 vs 119 \(-119\)"):
        check_counts({c: n for c, n in PAPER_COUNTS.items() if c != "zipper"})


@pytest.mark.parametrize("n,fraction,expected", [
    (63, 0.2, 13), (57, 0.2, 11), (30, 0.2, 6), (141, 0.2, 28),  # MVTec categories
    (9, 0.2, 2), (5, 0.1, 1),   # half rounds up (0.5 -> 1)
    (2, 0.2, 1), (3, 0.1, 1),   # at least one test image when n >= 2
    (1, 0.2, 0), (3, 0.9, 2),   # and at least one training image
])
def test_test_images_per_category(n: int, fraction: float, expected: int) -> None:
    assert n_test_images(n, fraction) == expected


def test_full_dataset_split_sizes() -> None:
    assert sum(n_test_images(n, 0.2) for n in PAPER_COUNTS.values()) == 252


def _samples(counts: dict[str, int]) -> list[Sample]:
    return [Sample(c, "d", f"{c}/test/d/{i:03d}.png", f"{c}/ground_truth/d/{i:03d}_mask.png")
            for c, n in sorted(counts.items()) for i in range(n)]


def test_split_is_stratified_seeded_and_positional() -> None:
    samples = _samples({"a": 10, "b": 21, "c": 2})
    split = split_samples(samples, 0.2, 7)
    assert split == split_samples(samples, 0.2, 7)
    assert split != split_samples(samples, 0.2, 8)
    tests = {c: sum(sp == "test" for s, sp in zip(samples, split, strict=True) if s.category == c)
             for c in "abc"}
    assert tests == {"a": 2, "b": 4, "c": 1}


def test_scan_is_sorted(synthetic_raw: Path) -> None:
    samples = scan(synthetic_raw, validate_layout(synthetic_raw))
    assert samples == sorted(samples, key=lambda s: (s.category, s.defect_type, s.image))


def test_thin_defect_is_kept_and_counted() -> None:
    line = np.zeros((1024, 1024), np.uint8)
    line[500:502, 96:896] = 255  # 2 px wide: 25 % of a 128-px pixel, 100 of them
    gone, kept_gone = resize_mask(Image.fromarray(line), 128, 0.5, keep_thin=False)
    kept, kept_flag = resize_mask(Image.fromarray(line), 128, 0.5, keep_thin=True)
    assert gone.sum() == 0 and not kept_gone
    assert kept_flag and kept.sum() == 100 and kept[62, 12:112].all()
    slanted = Image.new("L", (1024, 1024))
    ImageDraw.Draw(slanted).line([100, 300, 900, 560], fill=255, width=2)
    coverage = np.asarray(slanted.resize((128, 128), Image.Resampling.BOX)) / 255
    mask, flag = resize_mask(slanted, 128, 0.5, keep_thin=True)
    # Not only the few best-covered pixels (36) but the line's course (one per column).
    assert flag and (coverage >= coverage.max()).sum() == 36 and mask.sum() == 100
    assert mask[:, 12:112].any(axis=0).all() and not mask[coverage == 0].any()
    thick = np.zeros((1024, 1024), np.uint8)
    thick[96:160, 96:160] = 255
    mask, flag = resize_mask(Image.fromarray(thick), 128, 0.5, keep_thin=True)
    assert not flag and mask.sum() == 64


def test_mask_values_and_modes() -> None:
    assert defect_pixels(Image.fromarray(np.array([[0, 1], [255, 0]], np.uint8))).tolist() == \
        [[False, True], [True, False]]
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 3] = 255  # opaque black: no defect
    rgba[0, 0, 0] = 7
    assert defect_pixels(Image.fromarray(rgba, "RGBA")).tolist() == \
        [[True, False], [False, False]]


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "RGB"])
def test_images_become_rgb(mode: str) -> None:
    img = Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).convert(
        mode, palette=Image.Palette.ADAPTIVE)
    out = resize_image(img, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - 90).max() <= 1


def test_missing_mask_is_named(synthetic_raw: Path, tmp_path: Path) -> None:
    shutil.copytree(synthetic_raw, tmp_path / "raw")
    mask = tmp_path / "raw/weave/ground_truth/scratch/001_mask.png"
    mask.unlink()
    with pytest.raises(UserError, match=r"weave/test/scratch/001\.png has no mask .*"
                                        r"001_mask\.png"):
        prepare(tmp_path / "raw", tmp_path / "out", PrepareConfig())


@pytest.mark.parametrize("name", ["disc/test/crack/002.png",
                                  "disc/ground_truth/crack/002_mask.png"])
def test_corrupt_image_is_named(synthetic_raw: Path, tmp_path: Path, name: str) -> None:
    shutil.copytree(synthetic_raw, tmp_path / "raw")
    path = tmp_path / "raw" / name
    path.write_bytes(path.read_bytes()[:100])  # a truncated PNG
    with pytest.raises(UserError, match=f"cannot read image {path} .*corrupt"):
        prepare(tmp_path / "raw", tmp_path / "out", PrepareConfig())


def test_mask_of_another_size_is_named(synthetic_raw: Path, tmp_path: Path) -> None:
    shutil.copytree(synthetic_raw, tmp_path / "raw")
    mask = tmp_path / "raw/bolt/ground_truth/hole/000_mask.png"
    Image.new("L", (10, 10)).save(mask)
    with pytest.raises(UserError, match=r"000_mask\.png is 10x10 but its image "
                                        r"bolt/test/hole/000\.png is 176x176"):
        prepare(tmp_path / "raw", tmp_path / "out", PrepareConfig())


def test_layout_errors_name_what_is_missing(synthetic_raw: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not a directory"):
        validate_layout(tmp_path / "nowhere")
    with pytest.raises(UserError, match="holds no MVTec AD category"):
        validate_layout(tmp_path)
    with pytest.raises(UserError, match=r"single category folder.*data.categories: \[weave\]"):
        validate_layout(synthetic_raw / "weave")
    with pytest.raises(UserError, match=r"data.categories \['wood'\] not found"):
        validate_layout(synthetic_raw, ["wood", "weave"])
    assert validate_layout(synthetic_raw, ["weave", "disc"]) == ["disc", "weave"]
    shutil.copytree(synthetic_raw, tmp_path / "raw")
    shutil.rmtree(tmp_path / "raw/marble/ground_truth")
    with pytest.raises(UserError, match=r"raw/marble/ground_truth/ is missing"):
        validate_layout(tmp_path / "raw")


def test_category_subset_and_image_size(synthetic_raw: Path, tmp_path: Path) -> None:
    summary = prepare(synthetic_raw, tmp_path, PrepareConfig(image_size=32),
                      categories=["marble"])
    assert list(summary["per_category"]) == ["marble"]
    assert (summary["train"], summary["test"]) == (7, 2)  # 9 images
    assert load_split(tmp_path / "train.npz").images.shape == (7, 32, 32, 3)


def _run_stage(script: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "pipeline" / script), "--params",
                           "params.yaml"], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_stages_with_a_local_directory(synthetic_raw: Path, tmp_path: Path) -> None:
    """`source: directory`: validated, hard-linked into data/raw, then prepared."""
    params = yaml.safe_load((REPO / "profiles" / "paper.yaml").read_text())
    params["data"].update(source="directory", directory=str(synthetic_raw),
                          categories=["bolt", "weave"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    download = _run_stage("download.py", tmp_path)
    assert download.returncode == 0, download.stderr
    raw = tmp_path / "data/raw"
    assert sorted(p.name for p in raw.iterdir()) == ["bolt", "weave"]
    image = "weave/test/stain/002.png"
    assert (raw / image).read_bytes() == (synthetic_raw / image).read_bytes()
    assert (raw / "weave/readme.txt").is_file()
    prep = _run_stage("prepare.py", tmp_path)
    assert prep.returncode == 0, prep.stderr
    assert "prepared 18 images: 14 train / 4 test at 128 px" in prep.stdout
    summary = json.loads((tmp_path / "data/prepared/summary.json").read_text())
    assert summary["count_check"] == "skipped: not the 15 MVTec AD categories"
    # data/raw itself as the source would be deleted by the stage: refused.
    params["data"].update(directory="data/raw", categories=[])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    again = _run_stage("download.py", tmp_path)
    assert again.returncode == 2 and "must lie outside data/raw" in again.stderr
    assert (raw / image).is_file()


# ------------------------------------------------------------ non-square images (resize)

# (defect type, (width, height), defect rectangle x0, y0, x1, y1 (end exclusive), mode)
NON_SQUARE = [
    ("dent", (200, 50), (120, 10, 160, 30), "RGB"),
    ("dent", (50, 200), (10, 20, 30, 60), "L"),
    ("dent", (123, 77), (5, 40, 25, 70), "RGB"),
    ("line", (240, 60), (30, 28, 200, 30), "RGB"),  # 2 px high: thin once scaled down
    ("line", (96, 96), (40, 40, 60, 50), "L"),
]


def write_non_square_tree(root: Path) -> Path:
    """An MVTec tree, category ``long``: noisy grey images with one bright rectangle each."""
    rng = np.random.default_rng(5)
    for i, (defect, (w, h), (x0, y0, x1, y1), mode) in enumerate(NON_SQUARE):
        image = rng.integers(90, 130, (h, w, 3)).astype(np.uint8)
        image[y0:y1, x0:x1] = 230
        mask = np.zeros((h, w), np.uint8)
        mask[y0:y1, x0:x1] = 255
        for sub, array, name in (("test", image, f"{i:03d}.png"),
                                 ("ground_truth", mask, f"{i:03d}_mask.png")):
            path = root / "long" / sub / defect / name
            path.parent.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(array)
            (img.convert(mode) if sub == "test" else img).save(path)
    return root


@pytest.fixture(scope="module")
def non_square_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_non_square_tree(tmp_path_factory.mktemp("non_square"))


def _arrays_digest(out: Path) -> str:
    digest = hashlib.sha256()
    for name in ("train", "test"):
        with np.load(out / f"{name}.npz") as data:
            digest.update(data["images"].tobytes())
            digest.update(data["masks"].tobytes())
    digest.update((out / "manifest.csv").read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize(("size", "digest"), [
    (64, "30ece971e4482c808e5fe6d5e1d49e93d3c73aa06bac4ed7df0e11df036dc65f"),
    (32, "81e67dc8fe266dd73c6ebc74288e2d9c83d5926033903fcb7f4667d48a244928"),
])
def test_squash_is_unchanged(non_square_raw: Path, tmp_path: Path, size: int,
                             digest: str) -> None:
    """`resize: squash` (the default) gives the arrays and manifest of the code before
    `pad` existed (digests recorded with it, numpy/Pillow of requirements.lock)."""
    prepare(non_square_raw, tmp_path, PrepareConfig(image_size=size, test_fraction=0.4),
            check=False)
    assert _arrays_digest(tmp_path) == digest


@pytest.mark.parametrize(("width", "height", "size", "box"), [
    (200, 50, 64, (0, 24, 64, 16)),
    (50, 200, 64, (24, 0, 16, 64)),
    (123, 77, 64, (0, 12, 64, 40)),  # 77 * 64 / 123 = 40.07
    (96, 96, 64, (0, 0, 64, 64)),
    (1000, 3, 16, (0, 7, 16, 1)),  # never less than 1 px
    (130, 129, 64, (0, 0, 64, 64)),  # 63.5 rounds to 64: no padding at all
    (65, 64, 64, (0, 0, 64, 63)),  # 63.02: one row of padding, below
])
def test_pad_box(width: int, height: int, size: int, box: tuple[int, ...]) -> None:
    assert pad_box(width, height, size) == box


def test_pad_mode_200x50_defect_and_padding() -> None:
    """A 200x50 image with a defect at x 120-160, y 10-30: scaled by 64/200 = 0.32 into a
    64x16 band at rows 24-39; the defect covers at least half of content rows 3-9 (x 38-50),
    except the corner pixel (row 9, column 38: 0.44); the padding is 255 in the mask and
    the replicated edge rows in the image."""
    image = np.full((50, 200, 3), 100, np.uint8)
    image[10:30, 120:160] = 230
    image[0, :, 1] = 7   # a marker on the top row...
    image[49, :, 2] = 9  # ...and on the bottom row
    mask = np.zeros((50, 200), np.uint8)
    mask[10:30, 120:160] = 255
    padded, kept = resize_mask(Image.fromarray(mask), 64, 0.5, True, mode="pad")
    expected = np.full((64, 64), IGNORE_LABEL, np.uint8)
    expected[24:40] = 0
    expected[24 + 3:24 + 10, 38:51] = 1
    expected[24 + 9, 38] = 0
    assert not kept and np.array_equal(padded, expected)
    squashed, _ = resize_mask(Image.fromarray(mask), 64, 0.5, True)
    assert set(np.unique(squashed)) == {0, 1} and squashed[13:38, 38:51].all()

    small = resize_image(Image.fromarray(image), 64, "pad")
    assert small.shape == (64, 64, 3) and small.dtype == np.uint8
    band = np.asarray(Image.fromarray(image).resize((64, 16), Image.Resampling.BILINEAR,
                                                    reducing_gap=3.0))
    assert np.array_equal(small[24:40], band)
    assert (small[:24] == band[0]).all() and (small[40:] == band[-1]).all()  # edge replicas
    assert np.array_equal(crop_padding(small, 200, 50, "pad"), band)
    assert crop_padding(small, 200, 50, "squash") is small


def test_square_images_are_the_same_in_both_modes() -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8))
    mask = Image.fromarray((rng.random((96, 96)) > 0.9).astype(np.uint8) * 255)
    assert np.array_equal(resize_image(img, 32, "pad"), resize_image(img, 32))
    assert np.array_equal(resize_mask(mask, 32, 0.5, True, "pad")[0],
                          resize_mask(mask, 32, 0.5, True)[0])


def test_pad_mode_prepare(non_square_raw: Path, tmp_path: Path) -> None:
    """Every prepared mask: 255 exactly outside the image's box, its defect inside where
    the source has it; the manifest keeps the original sizes."""
    summary = prepare(non_square_raw, tmp_path, PrepareConfig(image_size=64, test_fraction=0.4,
                                                              resize="pad"), check=False)
    assert summary["resize"] == "pad" and summary["empty_masks"] == 0
    manifest = pd.read_csv(tmp_path / "manifest.csv")
    assert list(manifest.columns) == MANIFEST_COLUMNS
    sizes = {f"long/test/{d}/{i:03d}.png": (w, h) for i, (d, (w, h), _, _) in
             enumerate(NON_SQUARE)}
    assert {row.image: (row.width, row.height) for row in manifest.itertuples()} == sizes
    rects = {f"long/test/{d}/{i:03d}.png": r for i, (d, _, r, _) in enumerate(NON_SQUARE)}
    for name in ("train", "test"):
        split = load_split(tmp_path / f"{name}.npz")
        for source, mask in zip(split.sources, split.masks, strict=True):
            width, height = sizes[source]
            left, top, w, h = pad_box(width, height, 64)
            inside = np.zeros((64, 64), bool)
            inside[top:top + h, left:left + w] = True
            assert ((mask == IGNORE_LABEL) == ~inside).all(), source
            assert set(np.unique(mask[inside])) == {0, 1}, source
            # The defect, mapped back to the source's coordinates, is the rectangle.
            x0, y0, x1, y1 = rects[source]
            ys, xs = np.nonzero(mask == 1)
            scale = 64 / max(width, height)
            assert abs((xs.min() - left) / scale - x0) <= 1 / scale
            assert abs((xs.max() + 1 - left) / scale - x1) <= 1 / scale
            assert abs((ys.min() - top) / scale - y0) <= 1 / scale
            assert abs((ys.max() + 1 - top) / scale - y1) <= 1 / scale


def test_thin_defect_is_kept_in_pad_mode(non_square_raw: Path) -> None:
    """The 2-px line of a 240x60 image at 32 px: scale 2/15, so it covers at most 27 % of
    a pixel and would vanish; with keep_thin_defects its row is kept, inside the band."""
    line = Image.open(non_square_raw / "long/ground_truth/line/003_mask.png")
    gone, flag = resize_mask(line, 32, 0.5, keep_thin=False, mode="pad")
    assert not flag and not (gone == 1).any() and (gone == IGNORE_LABEL).sum() == 32 * 24
    mask, flag = resize_mask(line, 32, 0.5, keep_thin=True, mode="pad")
    left, top, w, h = pad_box(240, 60, 32)
    assert (left, top, w, h) == (0, 12, 32, 8) and flag
    rows = np.nonzero((mask == 1).any(axis=1))[0]
    assert rows.tolist() == [12 + 3]  # source rows 28-30 lie in content row 3 (22.5-30)
    assert (mask[15, 5:26] == 1).all()  # the line's course: x 30-200 -> 4-26.7
    # In squash mode the line keeps 32/60 of its height: no rescue needed.
    squashed, flag = resize_mask(line, 32, 0.5, keep_thin=True)
    assert not flag and (squashed == 1).any()


def test_unknown_resize_mode_is_refused() -> None:
    with pytest.raises(UserError, match="resize mode 'crop'"):
        PrepareConfig(resize="crop")
