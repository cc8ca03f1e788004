"""Whole-image prediction of models trained on crops (prepare.tile_predict: whole): one
padded pass, the one function evaluate / predict / the pyfunc share, latency per image."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mr2unet.data.prepared import PreparedSplit
from mr2unet.data.transforms import to_input
from mr2unet.evaluation.cost import image_latency
from mr2unet.evaluation.inference import evaluate
from mr2unet.models import MODEL_NAMES, build_model
from mr2unet.models.tiling import (
    WHOLE,
    WINDOWS,
    Tiling,
    tile_logits,
    tiled_logits,
    whole_logits,
    window_starts,
)


def _rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (height, width, 3)).astype(np.uint8)


@pytest.mark.parametrize("arch", MODEL_NAMES)
def test_every_network_predicts_any_size_in_one_padded_pass(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, base_width=4).eval()
    x = to_input(torch.from_numpy(_rgb(50, 77))[None])
    with torch.no_grad():
        out = whole_logits(model, x)
        padded = torch.nn.functional.pad(x, (0, 3, 0, 14), mode="replicate")  # 64 x 80
        assert out.shape == (1, 2, 50, 77)
        assert torch.equal(out, model(padded)[..., :50, :77])
        square = x[..., :48, :64]  # multiples of 16: no padding at all
        assert torch.equal(whole_logits(model, square), model(square))


def test_whole_equals_windows_for_a_network_that_sees_one_pixel() -> None:
    """A 1x1 convolution's output does not depend on the window: both ways agree."""
    torch.manual_seed(0)
    net = nn.Conv2d(3, 2, 1).eval()
    x = torch.rand(2, 3, 70, 45)
    with torch.no_grad():
        whole = tile_logits(net, x, Tiling(32, 16, predict=WHOLE))
        windows = tile_logits(net, x, Tiling(32, 16, predict=WINDOWS), 5)
        assert torch.allclose(whole, windows, atol=1e-6)
        assert torch.equal(windows, tiled_logits(net, x, 32, 16, 5))


def test_the_model_file_records_whole_and_old_files_predict_by_windows() -> None:
    assert Tiling(64, 32).as_dict() == {"tile": 64, "stride": 32, "source_size": None}
    assert Tiling.from_dict({"tile": 64, "stride": 32, "source_size": None}).predict == WINDOWS
    whole = Tiling(64, 32, 256, WHOLE)
    assert whole.as_dict()["predict"] == WHOLE and Tiling.from_dict(whole.as_dict()) == whole
    with pytest.raises(ValueError, match="whole, windows"):
        Tiling(64, 32, predict="patches")


def test_evaluate_predict_and_pyfunc_share_the_whole_pass(tmp_path: Path) -> None:
    from mr2unet.deploy.predict import load_predictor, predict_images
    from mr2unet.models.checkpoint import save_model
    from mr2unet.tracking.pyfunc import SegmentationModel

    torch.manual_seed(0)
    model = build_model("unet", base_width=2).eval()
    rgb = _rgb(50, 77)
    with torch.no_grad():  # centre the untrained head so that the mask has both classes
        logits = whole_logits(model, to_input(torch.from_numpy(rgb)[None]))
        model.head.bias[1] -= (logits[0, 1] - logits[0, 0]).median()
    tiling = Tiling(32, 16, None, WHOLE)
    save_model(tmp_path / "m.pt", model, "unet", {"base_width": 2}, 32,
               meta={"tiling": tiling.as_dict()})
    with torch.no_grad():
        logits = whole_logits(model, to_input(torch.from_numpy(rgb)[None]))
    expected = (logits[0, 1] > logits[0, 0]).numpy().astype(np.uint8)
    assert 0 < expected.mean() < 1  # a mask with both classes: the comparison means something

    Image.fromarray(rgb).save(tmp_path / "part.png")
    loaded = load_predictor(str(tmp_path / "m.pt"))
    assert loaded.tiling == tiling
    predict_images(loaded, [tmp_path / "part.png"], tmp_path / "out")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "part_mask.png")),
                          expected * 255)
    served = SegmentationModel()
    served.load_context(SimpleNamespace(artifacts={"checkpoint": str(tmp_path / "m.pt")}))
    assert np.array_equal(served.predict(None, rgb[None])[0], expected)

    images = np.stack([_rgb(64, 64, 1), _rgb(64, 64, 2)])
    split = PreparedSplit(images=images, masks=np.zeros((2, 64, 64), np.uint8),
                          categories=np.array(["c", "c"]), defect_types=np.array(["d", "d"]),
                          sources=np.array(["a.png", "b.png"]))
    ev = evaluate(model, split, torch.device("cpu"), progress=False, tiling=tiling)
    with torch.no_grad():
        direct = model(to_input(torch.from_numpy(images)))
    assert np.array_equal(ev.predictions, (direct[:, 1] > direct[:, 0]).numpy().astype(np.uint8))


def test_latency_per_image_counts_the_windows() -> None:
    model = build_model("unet", base_width=2).eval()
    windows = image_latency(model, 96, 80, Tiling(32, 16), max_runs=1)
    count = len(window_starts(96, 32, 16)) * len(window_starts(80, 32, 16))
    assert (windows["windows"], windows["height"], windows["width"]) == (count, 96, 80)
    assert windows["per_window_ms"] == pytest.approx(windows["per_image_ms"] / count, abs=1e-3)
    whole = image_latency(model, 96, 80, Tiling(32, 16, predict=WHOLE), max_runs=1)
    assert whole["predict"] == WHOLE and "windows" not in whole and whole["per_image_ms"] > 0


@pytest.mark.slow
def test_on_thin_lines_the_whole_pass_scores_as_the_windows(tmp_path: Path) -> None:
    """test_tiles' 2 px lines in 256 px images, a U-Net trained on 64 px crops: the whole
    pass finds the lines as well as the half-crop windows (IOU within 0.01 or better)."""
    from helpers import line_sheet

    from mr2unet.data.prepare import PrepareConfig, prepare
    from mr2unet.data.prepared import load_split
    from mr2unet.training.config import TrainConfig
    from mr2unet.training.loop import train
    from mr2unet.training.options import RunOptions

    raw = line_sheet(tmp_path / "raw", 16, 256, 95)
    prepare(raw, tmp_path / "out", PrepareConfig(image_size=64, mode="tiles",
                                                 test_fraction=0.25))
    cfg = TrainConfig(arch="unet", epochs=25, batch_size=4, lr=3e-3, base_width=4,
                      loss="focal_dice", seed=0, crop_size=64, defect_crop_fraction=0.7)
    model = train(cfg, load_split(tmp_path / "out" / "train.npz"), progress=False,
                  options=RunOptions(device="cpu", cpu_threads=1)).model
    test = load_split(tmp_path / "out" / "test.npz")
    iou = {}
    for way in (WHOLE, WINDOWS):
        pred = evaluate(model, test, torch.device("cpu"), progress=False,
                        tiling=Tiling(64, 32, None, way)).predictions.astype(bool)
        truth = test.masks == 1
        iou[way] = (pred & truth).sum() / (pred | truth).sum()
    # performance.md reports 0.807 (windows) and 0.797 (whole) for this set-up: the
    # bound of test_tiles on the same lines (0.72, the docs' 0.82 less 0.10 for the
    # spread between CPUs)
    assert iou[WINDOWS] > 0.72, iou
    assert iou[WHOLE] >= iou[WINDOWS] - 0.01, iou
