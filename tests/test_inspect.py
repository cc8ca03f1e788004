"""`mr2unet inspect`: generated thin and wide defects, warnings, every layout through
layouts.scan, the CLI's table and --json, and the real samples (bottle, NEU-Seg, DeepCrack)."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import DEEPCRACK_SHA256, DEEPCRACK_TAR
from PIL import Image
from test_geometry import FOLDER, line, thin_masks, write_folder

from mr2unet.cli import main
from mr2unet.data.folder import FolderLayout
from mr2unet.data.inspect import defect_contrast, format_report, inspect
from mr2unet.data.layouts import DataLayout

REPO = Path(__file__).resolve().parents[1]
DEEPCRACK = DataLayout("folder", FolderLayout(
    images="deepcrack/*_img/*.jpg", masks="deepcrack/*_lab/*.png", category="deepcrack",
    split_lists={"train": "deepcrack/train_img", "test": "deepcrack/test_img"}))


def test_thin_defects_are_measured_and_choose_tiles(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "thin", thin_masks(5))
    report = inspect(root, FOLDER, None, 64, progress=False)
    assert report["counts"] == {"images": 5, "defective": 5, "good": 0}
    assert report["per_category"] == [{"category": "gen", "defect_type": "defect",
                                       "images": 5}]
    assert report["image_sizes"]["width"] == {"min": 256, "median": 256, "max": 256}
    assert report["image_sizes"]["height"]["median"] == 192
    assert report["mask_values"] == [0, 255]
    defects = report["defects"]
    assert defects["width_native_px"]["median"] == 3
    assert defects["width_at_size_px"]["median"] == pytest.approx(0.75)
    assert defects["area_share"]["median"] == pytest.approx(3 * 236 / (192 * 256))
    assert report["auto"]["mode"] == "tiles"
    assert any("no defect-free (good) images" in w for w in report["warnings"])
    text = format_report(report)
    assert "prepare.mode auto -> tiles: the median defect, 3.0 px wide" in text
    assert "width at 64 px (px)" in text and "p10 0.75  median 0.75  p90 0.75" in text


def test_wide_defects_choose_resize_and_warnings_name_the_problems(tmp_path: Path) -> None:
    masks = [line((40, 56), 4 + i, 25) for i in range(4)]  # smaller than a 64 px crop
    masks.append(np.zeros((40, 56), bool))  # a defective image with an empty mask
    root = write_folder(tmp_path / "wide", masks)
    (root / "good").mkdir()
    Image.new("L", (56, 40), 100).save(root / "good" / "ok.png")
    layout = DataLayout("folder", FolderLayout(images="images", masks="masks", good="good",
                                               category="gen"))
    report = inspect(root, layout, None, 64, progress=False)
    assert report["counts"] == {"images": 6, "defective": 5, "good": 1}
    assert [r["defect_type"] for r in report["per_category"]] == ["defect", "good"]
    assert report["auto"]["mode"] == "resize" and report["auto"]["defective_images"] == 4
    warnings = " | ".join(report["warnings"])
    assert "no defect-free" not in warnings
    assert "6 image(s) are smaller than prepare.image_size (64 px)" in warnings
    assert "1 defective image(s) have an all-zero mask" in warnings


def test_every_layout_goes_through_layouts_scan(tmp_path: Path, synthetic_raw: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from mr2unet.data import layouts

    seen = []
    real = layouts.scan

    def spy(*args, **kwargs):
        seen.append(args[1].name)
        return real(*args, **kwargs)

    monkeypatch.setattr(layouts, "scan", spy)
    report = inspect(synthetic_raw, DataLayout(), None, 64, progress=False)  # mvtec layout
    assert seen == ["mvtec"] and report["counts"]["defective"] > 0
    assert len({r["category"] for r in report["per_category"]}) > 1
    # VisA: <category>/Data/Images/Anomaly/ beside <category>/Data/Masks/Anomaly/
    visa = tmp_path / "visa"
    (visa / "candle" / "Data" / "Images" / "Anomaly").mkdir(parents=True)
    (visa / "candle" / "Data" / "Masks" / "Anomaly").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((64, 96, 3), 120, np.uint8)).save(
            visa / "candle" / "Data" / "Images" / "Anomaly" / f"{i}.JPG")
        Image.fromarray(line((64, 96), 10 + 10 * i, 5).astype(np.uint8) * 255).save(
            visa / "candle" / "Data" / "Masks" / "Anomaly" / f"{i}.png")
    report = inspect(visa, DataLayout("visa"), None, 64, progress=False)
    assert seen[-1] == "visa" and report["counts"]["defective"] == 3
    assert report["defects"]["width_native_px"]["median"] == 5


def test_the_cli_prints_a_table_or_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_folder(tmp_path / "thin", thin_masks(3))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(source="directory", directory=str(root), layout="folder",
                          folder={"images": "images", "masks": "masks"}, check_counts=False)
    params["prepare"]["image_size"] = 64
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["inspect", "--params", str(tmp_path / "params.yaml"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["auto"]["mode"] == "tiles" and report["counts"]["defective"] == 3
    assert main(["inspect", "--params", str(tmp_path / "params.yaml")]) == 0
    assert "prepare.mode auto -> tiles" in capsys.readouterr().out
    params["data"].update(source="synthetic", layout="mvtec")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["inspect", "--params", str(tmp_path / "params.yaml"), "--raw",
                 str(tmp_path / "none")]) == 2
    assert "run `dvc repro download` first" in capsys.readouterr().err


def test_the_bottle_sample_keeps_resize(bottle_raw: Path) -> None:
    report = inspect(bottle_raw, DataLayout(), ["bottle"], 64, progress=False)
    assert report["counts"] == {"images": 66, "defective": 63, "good": 3}
    assert report["mask_values"] == [0, 255]
    assert report["auto"]["mode"] == "resize"
    assert 5 < report["defects"]["width_at_size_px"]["median"] < 15
    # docs/data.md's row of the bottle sample (benchmarks/defect_stats.py --size 64 gave
    # the same figures until commit 63e852b): its defects hardly stand out.
    contrast, cnr = report["defects"]["contrast_at_size"], report["defects"]["cnr_at_size"]
    assert [round(contrast[k], 3) for k in ("p10", "median", "p90")] == [0.010, 0.034, 0.137]
    assert [round(cnr[k], 3) for k in ("p10", "median", "p90")] == [0.118, 0.405, 2.027]


def test_contrast_is_the_defect_against_a_ring_around_it() -> None:
    """A 100-level defect on a 90/110 checkerboard (mean 100, std 10): contrast 100 / 255,
    cnr 100 / 10; the ring is 2 px wide at 64 px, so a defect at the border still has one."""
    grey = np.where(np.indices((64, 64)).sum(0) % 2 == 0, 90, 110).astype(np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[20:36, 0:16] = True
    grey[mask] = 200
    image, mask_img = Image.fromarray(grey), Image.fromarray(mask.astype(np.uint8) * 255)
    contrast, cnr = defect_contrast(image, mask_img, 64)
    assert contrast == pytest.approx(100 / 255) and cnr == pytest.approx(10.0)
    flat = Image.fromarray(np.full((64, 64), 100, np.uint8))
    assert defect_contrast(flat, mask_img, 64) == (0.0, 0.0)  # std 0 counts as 1 level
    empty = Image.fromarray(np.zeros((64, 64), np.uint8))
    assert all(np.isnan(defect_contrast(image, empty, 64)))


def test_neu_seg_keeps_resize(neu_tar: Path, tmp_path: Path) -> None:
    with tarfile.open(neu_tar) as tar:
        tar.extractall(tmp_path, filter="data")
    layout = DataLayout("folder", FolderLayout(images="neu_seg/img_dir/test",
                                               masks="neu_seg/ann_dir/test",
                                               category="neu_seg"))
    report = inspect(tmp_path, layout, None, 64, progress=False)
    assert report["counts"]["defective"] == 447 and report["mask_values"] == [0, 1, 2, 3]
    assert report["auto"]["mode"] == "resize"
    # the median defect share of NEU-Seg is about 10 % of an image (../shared/README.md)
    assert 0.05 < report["defects"]["area_share"]["median"] < 0.2


@pytest.fixture(scope="session")
def deepcrack_root(deepcrack_tar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("deepcrack")
    with tarfile.open(deepcrack_tar) as tar:
        tar.extractall(root, filter="data")
    return root


def test_deepcrack_chooses_tiles_from_its_thin_cracks(deepcrack_root: Path) -> None:
    report = inspect(deepcrack_root, DEEPCRACK, None, 64, progress=False)
    assert report["counts"] == {"images": 280, "defective": 280, "good": 0}
    assert report["image_sizes"]["width"]["median"] == 544
    assert report["image_sizes"]["height"]["median"] == 384
    assert report["mask_values"] == [0, 1, 255]  # train labels 0/255, test labels 0/1
    auto = report["auto"]
    assert auto["mode"] == "tiles" and auto["median_width_at_size"] < 2
    # about 3 % of an image (../shared/README.md)
    assert 0.02 < report["defects"]["area_share"]["median"] < 0.04


def test_the_deepcrack_profile_keeps_its_own_split(deepcrack_root: Path) -> None:
    from mr2unet.data import layouts

    profile = yaml.safe_load((REPO / "profiles" / "deepcrack-sample.yaml").read_text())
    assert profile["data"]["sha256"] == DEEPCRACK_SHA256
    assert profile["data"]["sha256"] == hashlib.sha256(DEEPCRACK_TAR.read_bytes()).hexdigest()
    layout = DataLayout.from_params(profile["data"])
    samples = layouts.scan(deepcrack_root, layout, ["deepcrack"])
    splits = [s.split for s in samples]
    assert (splits.count("train"), splits.count("test")) == (200, 80)
    assert all(("test_img" in s.image) == (s.split == "test") for s in samples)
