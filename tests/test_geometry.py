"""Defect geometry (mr2unet.data.geometry) and `prepare.mode: auto` on generated thin and
wide defects: the measures, the rule, what prepare writes and what the train stage reads."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from mr2unet.config.params import validate
from mr2unet.data import geometry
from mr2unet.data.folder import FolderLayout
from mr2unet.data.layouts import DataLayout
from mr2unet.data.prepare import PrepareConfig, prepare, resolved_prepare
from mr2unet.data.prepared import load_split
from mr2unet.errors import UserError

REPO = Path(__file__).resolve().parents[1]
FOLDER = DataLayout("folder", FolderLayout(images="images", masks="masks", category="gen"))


def line(shape: tuple[int, int], row: int, width: int) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[row:row + width, 10:shape[1] - 10] = True
    return mask


@pytest.mark.parametrize(("width", "measured"), [(1, 1), (2, 1), (3, 3), (4, 3), (5, 5),
                                                  (9, 9)])
def test_a_line_measures_its_width_odd_exactly_even_one_less(width: int, measured: int
                                                             ) -> None:
    assert geometry.defect_region_widths(line((60, 80), 20, width)).tolist() == [measured]


def test_regions_are_measured_apart_diagonals_stay_one_and_borders_count() -> None:
    mask = line((60, 80), 5, 3) | line((60, 80), 40, 7)
    mask[0:2, 0:2] = True  # a 2x2 speck in the corner, touching two borders
    assert sorted(geometry.defect_region_widths(mask).tolist()) == [1, 3, 7]
    assert geometry.defect_region_widths(np.eye(30, dtype=bool)).tolist() == [1]
    edge = np.zeros((20, 20), bool)
    edge[:, :3] = True  # a 3-px band along the left border: 3 px, not 5
    assert geometry.defect_region_widths(edge).tolist() == [3]
    yy, xx = np.mgrid[:61, :61]
    disc = (yy - 30) ** 2 + (xx - 30) ** 2 <= 15**2  # diameter 31
    assert 29 <= geometry.defect_region_widths(disc)[0] <= 31
    assert geometry.defect_region_widths(np.zeros((5, 5), bool)).size == 0


def test_measure_and_its_scale_to_the_image_size() -> None:
    mask = line((100, 200), 50, 5) | line((100, 200), 10, 1) | line((100, 200), 80, 9)
    g = geometry.measure(mask)
    assert (g.width_px, g.height_px, g.regions, g.defect_width) == (200, 100, 3, 5.0)
    assert g.area == pytest.approx(mask.mean())
    assert g.scale(64) == pytest.approx(0.32)  # the long side, 200 -> 64
    assert g.width_at(64) == pytest.approx(1.6)
    assert g.area_pixels_at(64) == pytest.approx(mask.sum() * 0.32**2)
    empty = geometry.measure(np.zeros((10, 10), bool))
    assert (empty.regions, empty.defect_width, empty.area) == (0, 0.0, 0.0)


def test_choose_mode_thin_wide_tiny_and_nothing() -> None:
    thin = [geometry.measure(line((512, 512), 100 + i, 3)) for i in range(5)]
    decision = geometry.choose_mode(thin, 128)  # 3 px x 0.25 = 0.75 px
    assert decision.mode == "tiles" and "0.75 px wide at 128 px (under 2)" in decision.reason
    assert decision.median_width_native == 3 and decision.median_width_at_size == 0.75
    assert geometry.choose_mode(thin, 512).mode == "resize"  # 3 px stay 3 px
    wide = [geometry.measure(line((512, 512), 100, 40))]
    assert geometry.choose_mode(wide, 128).mode == "resize"
    spot = np.zeros((1024, 1024), bool)
    spot[500:540, 500:540] = True  # 39 px wide: 9.75 px and 100 pixels at 256 ...
    assert geometry.choose_mode([geometry.measure(spot)], 256).mode == "resize"
    # ... 2.4 px wide at 64 but 6.25 pixels: under 16
    small = geometry.choose_mode([geometry.measure(spot)], 64)
    assert small.mode == "tiles" and "pixels at 64 px (under 16)" in small.reason
    assert geometry.choose_mode([geometry.measure(np.zeros((8, 8), bool))], 64).mode == "resize"
    record = decision.as_dict()
    assert record["mode"] == "tiles" and record["min_width_px"] == geometry.MIN_WIDTH_PX


def write_folder(root: Path, masks: list[np.ndarray], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, mask in enumerate(masks):
        grey = rng.integers(90, 140, mask.shape, dtype=np.uint8)
        grey[mask] = 30
        Image.fromarray(grey).save(root / "images" / f"{i:03d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{i:03d}.png")
    return root


def thin_masks(n: int = 6, size: tuple[int, int] = (192, 256)) -> list[np.ndarray]:
    return [line(size, 30 + 20 * i, 3) for i in range(n)]


def wide_masks(n: int = 6, size: tuple[int, int] = (192, 256)) -> list[np.ndarray]:
    return [line(size, 30 + 10 * i, 41) for i in range(n)]


def test_prepare_auto_picks_tiles_for_thin_defects(tmp_path: Path, caplog) -> None:
    raw = write_folder(tmp_path / "raw", thin_masks())
    cfg = PrepareConfig(image_size=64, mode="auto", resize="pad")
    with caplog.at_level("INFO", logger="mr2unet.data.prepare"):
        summary = prepare(raw, tmp_path / "auto", cfg, check=False, layout=FOLDER)
    assert summary["mode"] == "tiles" and summary["crop_size"] == 64
    assert summary["tile_source_size"] == 256  # native: the longest side
    auto = summary["auto"]
    assert (auto["mode"], auto["defective_images"], auto["median_width_native"]) == (
        "tiles", 6, 3.0)
    assert auto["median_width_at_size"] == pytest.approx(0.75)
    assert [r.message for r in caplog.records if "auto ->" in r.message] == [
        "prepare.mode auto -> tiles: " + auto["reason"]]
    written = json.loads((tmp_path / "auto" / "summary.json").read_text())
    assert written["mode"] == "tiles" and written["auto"] == auto
    # the arrays are those of mode: tiles
    tiles = tmp_path / "tiles"
    prepare(raw, tiles, PrepareConfig(image_size=64, mode="tiles", resize="pad"), check=False,
            layout=FOLDER)
    for name in ("train.npz", "test.npz", "manifest.csv"):
        assert (tmp_path / "auto" / name).read_bytes() == (tiles / name).read_bytes()


def test_prepare_auto_keeps_resize_for_wide_defects(tmp_path: Path) -> None:
    raw = write_folder(tmp_path / "raw", wide_masks())
    summary = prepare(raw, tmp_path / "auto", PrepareConfig(image_size=64, mode="auto"),
                      check=False, layout=FOLDER)
    plain = prepare(raw, tmp_path / "resize", PrepareConfig(image_size=64), check=False,
                    layout=FOLDER)
    assert summary["mode"] == "resize" and summary["auto"]["median_width_native"] == 41
    assert "mode" not in plain and "auto" not in plain  # resize's summary as before
    assert {k: v for k, v in summary.items() if k not in ("mode", "auto")} == plain
    for name in ("train.npz", "test.npz", "manifest.csv"):
        assert (tmp_path / "auto" / name).read_bytes() == (tmp_path / "resize" / name
                                                           ).read_bytes()
    assert load_split(tmp_path / "auto" / "train.npz").images.shape[1] == 64


def test_the_train_stage_reads_the_mode_prepare_chose(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    params = {"mode": "auto", "image_size": 64}
    with pytest.raises(UserError, match="run `dvc repro prepare` first"):
        resolved_prepare(params, summary)
    summary.write_text(json.dumps({"mode": "tiles", "auto": {}}))
    assert resolved_prepare(params, summary) == {"mode": "tiles", "image_size": 64}
    assert resolved_prepare({"mode": "resize"}, summary) == {"mode": "resize"}
    summary.write_text(json.dumps({"images": 3}))  # auto chose resize: no tiles keys
    assert resolved_prepare(params, summary)["mode"] == "resize"


def test_params_accept_auto_and_the_tile_prediction_choices() -> None:
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    assert base["prepare"]["mode"] == "resize"  # the paper's protocol
    assert base["prepare"]["tile_predict"] == "blocks"
    for key, value in (("mode", "auto"), ("tile_predict", "windows"), ("tile_predict", "whole"),
                       ("tile_predict", "auto")):
        params = copy.deepcopy(base)
        params["prepare"][key] = value
        validate(params)
    params = copy.deepcopy(base)
    params["prepare"]["tile_predict"] = "patches"
    with pytest.raises(UserError, match="prepare.tile_predict"):
        validate(params)
    user = yaml.safe_load((REPO / "profiles" / "user-data.yaml").read_text())
    assert user["prepare"]["mode"] == "auto"
    assert user["prepare"]["tile_predict"] == "auto"  # chosen on the validation split


def test_the_recipe_threshold_works_on_a_set_without_good_images() -> None:
    """The user-data recipe (split.val_fraction, evaluate.threshold auto=0.05) on a set with
    no good image (DeepCrack, NEU-Seg): the manifest has no good column, good_images gives
    None, and the threshold falls back to best_iou instead of crashing."""
    from mr2unet.evaluation import threshold as thresholds

    rng = np.random.default_rng(0)
    masks = np.zeros((3, 8, 8), np.uint8)
    masks[:, 2:5, 2:5] = 1
    probs = np.clip(masks * 0.7 + rng.uniform(0, 0.4, masks.shape), 0, 1).astype(np.float32)
    chosen = thresholds.choose(thresholds.parse_rule("auto=0.05"), probs, masks,
                               np.array(["c"] * 3), None)
    assert chosen["val_images"] == 3 and chosen["val_good_images"] == 0
    assert chosen["resolved"].startswith("best_iou") and 0 < chosen["value"] < 1
