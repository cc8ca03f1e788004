"""The evaluate stage: exact scores of known predictions, its files, MLflow, dvc metrics diff."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import (
    AREAS,
    SIZE,
    RedThreshold,
    constant_model,
    fake_project,
    fake_split,
    stage_params,
)
from torch import nn

from mr2unet.config.workspace import ModelFiles
from mr2unet.data.prepared import PreparedSplit
from mr2unet.errors import UserError
from mr2unet.evaluation.cost import count_parameters, forward_flops, measure_latency, model_cost
from mr2unet.evaluation.evaluate import run_evaluation
from mr2unet.evaluation.inference import evaluate, predict_maps, predict_masks
from mr2unet.evaluation.probabilities import dequantise, quantise, read_probabilities
from mr2unet.evaluation.summaries import flat_metrics, summarise
from mr2unet.metrics.segmentation import IGNORE_LABEL
from mr2unet.models import build_model
from mr2unet.models.checkpoint import save_model

BIN = Path(sys.executable).parent
# Every image predicted all-defect: IOU = area / SIZE^2, Dice = 2 area / (area + SIZE^2).
def _all_defect(area: int) -> tuple[float, float]:
    return area / SIZE**2, 2 * area / (area + SIZE**2)


# ------------------------------------------------------------------------------- tests


def test_evaluate_counts_known_predictions() -> None:
    split = fake_split()
    images = split.images.copy()
    images[..., 0] = 0
    images[:, :8, :8, 0] = 255  # prediction: the top-left 8x8 square
    split = PreparedSplit(images, split.masks, split.categories, split.defect_types,
                          split.sources)
    result = evaluate(RedThreshold(), split, torch.device("cpu"), batch_size=4, progress=False)
    # area 16/4/1 (side 4/2/1) inside the 64-pixel square; 64 equal; 100 (side 10) around it.
    assert result.counts.tolist() == [[16, 48, 0], [64, 0, 0], [4, 60, 0],
                                      [64, 0, 36], [1, 63, 0], [36, 28, 0]]
    assert result.predictions.dtype == np.uint8 and result.predictions[:, :8, :8].all()
    assert result.predictions.sum() == 6 * 64


def test_batch_size_does_not_change_predictions() -> None:
    images = fake_split().images
    model = build_model("unet", base_width=4).eval()
    a = predict_masks(model, images, torch.device("cpu"), batch_size=4, progress=False)
    b = predict_masks(model, images, torch.device("cpu"), batch_size=6, progress=False)
    assert a.shape == (6, SIZE, SIZE) and np.array_equal(a, b)


def test_threshold_half_is_exactly_the_argmax_and_probabilities_are_kept() -> None:
    images = fake_split().images
    model = build_model("unet", base_width=4).eval()
    masks, probs = predict_maps(model, images, torch.device("cpu"), 4, progress=False)
    with torch.inference_mode():
        from mr2unet.data.transforms import to_input

        logits = model(to_input(torch.from_numpy(images)))
    assert np.array_equal(masks, logits.argmax(1).to(torch.uint8).numpy())
    assert np.allclose(probs, logits.softmax(1)[:, 1].numpy(), atol=1e-6)
    assert np.array_equal(predict_masks(model, images, torch.device("cpu"), 6, False, 0.5),
                          masks)
    stricter = predict_masks(model, images, torch.device("cpu"), 6, False, 0.9)
    assert np.array_equal(stricter, (probs > 0.9).astype(np.uint8))
    tie = evaluate(ConstantLogits(0.0, 0.0), fake_split(), torch.device("cpu"), progress=False)
    assert not tie.predictions.any()  # equal logits: background, as argmax picks class 0
    assert (tie.probabilities == 128).all()  # round(127.5) -> 128 (half to even)


class ConstantLogits(nn.Module):
    """Stand-in network: the same two logits for every pixel."""

    def __init__(self, background: float, defect: float) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([background, defect]), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.view(1, 2, 1, 1).expand(x.shape[0], 2, *x.shape[2:])


def test_probabilities_round_trip_within_half_a_level() -> None:
    p = np.concatenate([np.linspace(0, 1, 100_001, dtype=np.float32),
                        np.random.default_rng(0).random(10_000, dtype=np.float32)])
    levels = quantise(p)
    assert levels.dtype == np.uint8
    assert np.abs(dequantise(levels) - p).max() <= 1 / 510 + 1e-7
    assert quantise(np.array([0.0, 1.0, 0.5, 1 / 510 - 1e-6])).tolist() == [0, 255, 128, 0]


def test_threshold_free_scores_by_hand() -> None:
    """One 1x8 image per category; the hand-computed values are in tests/test_metrics.py."""
    levels = np.array([[[200, 100, 150, 50, 50, 255, 0, 0]],
                       [[10, 20, 30, 40, 50, 60, 70, 80]]], np.uint8)
    masks = np.array([[[1, 1, 0, 0, 0, IGNORE_LABEL, IGNORE_LABEL, IGNORE_LABEL]],
                      [[0, 0, 0, 0, 0, 0, 0, IGNORE_LABEL]]], np.uint8)
    cats = np.array(["a", "clean"])
    counts = np.array([[1, 1, 1], [0, 1, 0]])
    primary, pooled = summarise(counts, cats, 1.0, levels, masks)
    # AUPRO: one region (pixels 0-1), normals at 150, 50, 50. PRO is 1/2 from FPR 0 (level
    # 200) until FPR 1/3 (level 150), past the limit 0.3: AUPRO = 0.3 * 0.5 / 0.3 = 0.5.
    assert primary["per_category"]["a"] == {"iou": 0.333333, "dice": 0.5, "pixel_auroc": 0.833333,
                                            "pixel_ap": 0.833333, "aupro": 0.5}
    assert primary["per_category"]["clean"] == {"iou": 0.0, "dice": 0.0}  # no AUROC: 1 class
    assert primary["mean"] == {"iou": 0.166667, "dice": 0.25,
                               "pixel_auroc": 0.833333, "pixel_ap": 0.833333, "aupro": 0.5}
    assert pooled["single_class_categories"] == ["clean"]
    assert pooled["oracle"]["per_category"] == {
        "a": {"iou": 0.666667, "dice": 0.8, "threshold": 0.2}}
    assert pooled["oracle"]["mean"] == {"iou": 0.666667, "dice": 0.8}
    # All 12 scored pixels: defects at 200 and 100; normals at 150, 50, 50 and 10..70.
    # Pairs ranked right: 200 beats all 10 normals, 100 all but 150: AUROC = 19/20.
    assert pooled["all_images"]["pixel_auroc"] == 0.95
    assert pooled["per_category"]["a"]["scored_pixels"] == 5
    assert pooled["per_category"]["clean"] == {
        "iou": 0.0, "dice": 0.0, "images": 1, "empty_predictions": 0,
        "empty_ground_truth": 1, "scored_pixels": 7, "defect_pixels": 0}
    json.dumps(primary, allow_nan=False)  # no NaN: valid JSON for DVC
    json.dumps(pooled, allow_nan=False)


def test_model_cost_and_latency() -> None:
    conv = nn.Conv2d(3, 2, 1)  # 2 outputs x 3 inputs x 16 pixels multiply-adds, 2 FLOPs each
    assert count_parameters(conv) == 8 and forward_flops(conv, 4) == 2 * 3 * 2 * 16
    assert model_cost(conv, 4) == {"parameters": 8, "gflops": 0.0, "input_size": 4}
    latency = measure_latency(conv, 4, batch=3, warmup=1, max_runs=4, budget_s=10.0)
    assert latency.runs == 4 and latency.warmup == 1 and latency.batch == 3
    assert latency.per_image_ms == pytest.approx(latency.median_ms / 3, abs=1e-3)
    # The budget stops the runs early, but never before the first timed one.
    assert measure_latency(conv, 4, batch=1, max_runs=100, budget_s=0.0).runs == 1


def test_summary_schema_and_values() -> None:
    counts = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 2], [0, 0, 0]])
    cats = np.array(["a", "a", "b", "b"])
    primary, pooled = summarise(counts, cats, empty_score=1.0)
    assert primary == {"mean": {"iou": pytest.approx((0.75 + 0.5) / 2),
                                "dice": pytest.approx((5 / 6 + 0.5) / 2, abs=1e-6)},
                       "per_category": {"a": {"iou": 0.75, "dice": 0.833333},
                                        "b": {"iou": 0.5, "dice": 0.5}}}
    assert pooled["per_category"]["a"] == {"iou": 0.666667, "dice": 0.8, "images": 2,
                                           "empty_predictions": 0, "empty_ground_truth": 0}
    assert pooled["per_category"]["b"] == {"iou": 0.0, "dice": 0.0, "images": 2,
                                           "empty_predictions": 2, "empty_ground_truth": 1}
    assert pooled["all_images"] == {"iou": 0.4, "dice": 0.571429}
    assert pooled["images"] == 4 and pooled["empty_predictions"] == 2
    assert flat_metrics(primary) == {"test_iou_mean": primary["mean"]["iou"],
                                     "test_dice_mean": primary["mean"]["dice"],
                                     "test_iou_a": 0.75, "test_dice_a": 0.833333,
                                     "test_iou_b": 0.5, "test_dice_b": 0.5}
    _, strict = summarise(counts, cats, empty_score=0.0)
    assert strict["per_category"]["b"]["iou"] == 0.0


def test_empty_test_split_is_a_user_error() -> None:
    with pytest.raises(UserError, match="test split is empty"):
        summarise(np.zeros((0, 3), np.int64), np.array([], str))


def test_stage_outputs_exact_scores_and_stable_files(tmp_path: Path) -> None:
    fake_project(tmp_path, {"unet": constant_model("unet", True),
                            "mr2unet": constant_model("mr2unet", False)})
    params = stage_params(["unet", "mr2unet"])
    primary = run_evaluation(params, "unet", tmp_path)
    files = ModelFiles("unet", tmp_path)
    assert json.loads(files.metrics.read_text()) == primary
    for category, areas in AREAS.items():
        expected = np.mean([_all_defect(a) for a in areas], axis=0)
        # One probability for every pixel: AUROC 1/2, AP = the share of defect pixels;
        # the PRO curve is the line (0, 0)-(1, 1): AUPRO = (0.3^2 / 2) / 0.3 = 0.15.
        assert primary["per_category"][category] == pytest.approx(
            {"iou": expected[0], "dice": expected[1], "pixel_auroc": 0.5,
             "pixel_ap": sum(areas) / (3 * SIZE**2), "aupro": 0.15}, abs=1e-6)
    assert primary["mean"]["iou"] == pytest.approx(
        np.mean([primary["per_category"][c]["iou"] for c in AREAS]), abs=1e-6)
    assert list(primary["mean"]) == ["iou", "dice", "pixel_auroc", "pixel_ap", "aupro"]

    pooled = json.loads(files.evaluation.read_text())
    assert pooled["per_category"]["weave"]["iou"] == pytest.approx(137 / (3 * SIZE**2), abs=1e-6)
    assert pooled["per_category"]["bottle"]["images"] == 3
    table = pd.read_csv(files.per_image)
    assert list(table.columns) == ["source", "category", "defect_type", "tp", "fp", "fn",
                                   "iou", "dice"]
    assert table["tp"].tolist() == AREAS["bottle"] + AREAS["weave"]
    assert (table["fn"] == 0).all()
    with np.load(files.predictions) as data:
        assert data["predictions"].shape == (6, SIZE, SIZE) and data["predictions"].all()
    levels = read_probabilities(files.probabilities)
    assert levels.dtype == np.uint8 and levels.shape == (6, SIZE, SIZE)
    assert (levels == round(255 / (1 + np.exp(-1)))).all()  # softmax([0, 1])[1] = 0.731
    # Every pixel at one level: the oracle's best threshold marks them all.
    assert pooled["oracle"]["per_category"]["weave"] == {
        "iou": pooled["per_category"]["weave"]["iou"],
        "dice": pooled["per_category"]["weave"]["dice"], "threshold": 0.0}
    assert pooled["oracle"]["note"].startswith("oracle:")
    assert pooled["per_category"]["bottle"]["scored_pixels"] == 3 * SIZE**2
    assert pooled["per_category"]["bottle"]["defect_pixels"] == sum(AREAS["bottle"])
    assert pooled["single_class_categories"] == []
    unet = constant_model("unet", True)
    assert pooled["cost"] == {"parameters": count_parameters(unet),
                              "gflops": round(forward_flops(unet, SIZE) / 1e9, 6),
                              "input_size": SIZE}
    timing = json.loads(files.timing.read_text())
    assert timing["device"] == "cpu" and timing["input_size"] == SIZE
    for batch in (1, 32):
        latency = timing["latency"][f"batch_{batch}"]
        assert latency["batch"] == batch and latency["runs"] >= 1 and latency["median_ms"] > 0
        assert latency["per_image_ms"] == pytest.approx(latency["median_ms"] / batch, abs=1e-3)
    assert "train_seconds" not in timing  # the fake project's run.json has none

    before = {p: p.read_bytes() for p in (files.metrics, files.evaluation, files.per_image,
                                          files.predictions, files.probabilities)}
    run_evaluation(params, "unet", tmp_path)
    assert all(p.read_bytes() == data for p, data in before.items())  # byte-stable

    (tmp_path / "data/models/mr2unet.run.json").write_text(
        json.dumps({"tracking": False, "train_seconds": 12.5, "train_device": "cpu"}))
    empty = run_evaluation(params, "mr2unet", tmp_path)  # predicts nothing at all
    assert {k: empty["mean"][k] for k in ("iou", "dice")} == {"iou": 0.0, "dice": 0.0}
    timing = json.loads(ModelFiles("mr2unet", tmp_path).timing.read_text())
    assert timing["train_seconds"] == 12.5 and timing["train_device"] == "cpu"
    empty_pooled = json.loads(ModelFiles("mr2unet", tmp_path).evaluation.read_text())
    assert empty_pooled["empty_predictions"] == 6
    assert empty_pooled["per_category"]["weave"]["empty_predictions"] == 3


def test_model_trained_at_another_size_is_refused(tmp_path: Path) -> None:
    fake_project(tmp_path, {"unet": constant_model("unet", True)})
    save_model(ModelFiles("unet", tmp_path).checkpoint, constant_model("unet", True), "unet",
               {"base_width": 4}, 64)
    with pytest.raises(UserError, match="trained on 64px images"):
        run_evaluation(stage_params(["unet"]), "unet", tmp_path)


@pytest.mark.slow
def test_metrics_are_logged_to_the_run_and_version(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)  # MLflow puts a new store's artifacts under ./mlruns
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri, uri)
    run = client.create_run(client.create_experiment("t", str(tmp_path / "art")))
    client.create_registered_model("mr2unet-unet")
    version = client.create_model_version("mr2unet-unet", f"{run.info.artifact_uri}/model",
                                          run_id=run.info.run_id)
    fake_project(tmp_path, {"unet": constant_model("unet", True)})
    (tmp_path / "data/models/unet.run.json").write_text(json.dumps({
        "tracking": True, "tracking_uri": uri, "run_id": run.info.run_id,
        "registered_model": "mr2unet-unet", "model_version": str(version.version)}))
    from mr2unet.config.provenance import read_run_info
    from mr2unet.tracking.registry import log_evaluation

    primary = run_evaluation(stage_params(["unet"]), "unet", tmp_path)
    log_evaluation(read_run_info(tmp_path / "data/models/unet.run.json"), flat_metrics(primary))
    logged = client.get_run(run.info.run_id).data.metrics
    assert logged["test_iou_mean"] == primary["mean"]["iou"]
    assert logged["test_dice_weave"] == primary["per_category"]["weave"]["dice"]
    tags = client.get_model_version("mr2unet-unet", version.version).tags
    assert float(tags["test_iou_bottle"]) == pytest.approx(primary["per_category"]["bottle"]["iou"])


def test_dvc_metrics_diff_shows_the_changed_category(tmp_path: Path) -> None:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_NO_UPDATE_CHECK": "1"}

    def run(*cmd: str) -> str:
        return subprocess.run(cmd, cwd=tmp_path, env=env, check=True, capture_output=True,
                              text=True).stdout

    run("git", "init", "-q")
    run("git", "config", "user.email", "t@t")
    run("git", "config", "user.name", "t")
    run(str(BIN / "dvc"), "init", "-q")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  evaluate:\n    cmd: 'true'\n    metrics:\n"
        "      - metrics/unet.json:\n          cache: false\n"
        "    outs:\n      - metrics/evaluation/unet.json:\n          cache: false\n")
    counts = np.array([[4, 0, 4], [1, 1, 0], [3, 0, 1]])
    cats = np.array(["bottle", "bottle", "grid"])
    for tp in (4, 6):  # the second commit finds more of the first bottle's defect
        counts[0] = [tp, 0, 8 - tp]
        primary, pooled = summarise(counts, cats)
        for name, data in (("metrics/unet.json", primary),
                           ("metrics/evaluation/unet.json", pooled)):
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(json.dumps(data, indent=2) + "\n")
        run("git", "add", "-A")
        run("git", "commit", "-qm", f"tp {tp}")
    diff = json.loads(run(str(BIN / "dvc"), "metrics", "diff", "HEAD~1", "--json"))
    assert set(diff) == {"metrics/unet.json"}  # the pooled file is no DVC metric
    changes = diff["metrics/unet.json"]
    assert changes["per_category.bottle.iou"] == {"old": 0.5, "new": 0.625,
                                                  "diff": pytest.approx(0.125)}
    assert changes["mean.iou"]["diff"] == pytest.approx(0.0625)
    assert "per_category.grid.iou" not in changes  # unchanged values are left out
