"""Metrics (hand-computed), the metrics JSON, dvc metrics diff, the report, predict."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mr2unet.checkpoint import save_model
from mr2unet.data.prepared import PreparedSplit
from mr2unet.evaluate import evaluate, summarise
from mr2unet.metrics import (
    confusion_counts,
    dice_from_counts,
    iou_from_counts,
    mean_scores,
    pooled_scores,
)
from mr2unet.models import build_model
from mr2unet.report import ReportInputs, paper_table, write_report

BIN = Path(sys.executable).parent


def test_counts_iou_and_dice_by_hand() -> None:
    pred = torch.tensor([[[1, 1, 0, 0]]])
    target = torch.tensor([[[1, 0, 1, 0]]])
    counts = confusion_counts(pred, target).numpy()
    assert counts.tolist() == [[1, 1, 1]]
    assert iou_from_counts(counts).tolist() == [pytest.approx(1 / 3)]
    assert dice_from_counts(counts).tolist() == [pytest.approx(2 / 4)]


def test_perfect_and_empty_cases() -> None:
    counts = np.array([[5, 0, 0], [0, 0, 0], [0, 3, 0], [0, 0, 4]])
    assert iou_from_counts(counts).tolist() == [1.0, 1.0, 0.0, 0.0]
    assert iou_from_counts(counts, empty_score=0.0).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert dice_from_counts(counts).tolist() == [1.0, 1.0, 0.0, 0.0]


def test_mean_and_pooled_differ_on_unequal_images() -> None:
    counts = np.array([[1, 0, 0], [10, 10, 0]])  # a perfect small one, a sloppy big one
    assert mean_scores(counts)["iou"] == pytest.approx((1 + 0.5) / 2)
    assert pooled_scores(counts)["iou"] == pytest.approx(11 / 21)


def test_paper_mean_row_is_the_plain_mean_of_categories() -> None:
    table = paper_table()
    for model in ("unet", "resunet", "attention_unet", "mr2unet"):
        cats = [v for (m, c), v in table.items() if m == model and c != "mean"]
        assert len(cats) == 15
        for metric in ("iou", "dice"):
            mean = sum(v[metric] for v in cats) / 15
            assert mean == pytest.approx(table[(model, "mean")][metric], abs=6e-4)


def test_summary_schema() -> None:
    counts = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 2]])
    cats = np.array(["a", "a", "b"])
    primary, pooled = summarise(counts, cats)
    assert set(primary) == {"mean", "per_category"}
    assert primary["per_category"] == {"a": {"iou": 0.75, "dice": pytest.approx(0.833333)},
                                       "b": {"iou": 0.0, "dice": 0.0}}
    assert primary["mean"]["iou"] == pytest.approx(0.375)
    assert pooled["per_category"]["b"]["empty_predictions"] == 1
    assert pooled["per_category"]["a"]["images"] == 2


def test_dvc_metrics_diff_between_commits(tmp_path: Path) -> None:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}

    def run(*cmd: str) -> str:
        return subprocess.run(cmd, cwd=tmp_path, env=env, check=True, capture_output=True,
                              text=True).stdout

    run("git", "init", "-q")
    run("git", "config", "user.email", "t@t")
    run("git", "config", "user.name", "t")
    run(str(BIN / "dvc"), "init", "-q")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  evaluate:\n    cmd: 'true'\n    metrics:\n"
        "      - metrics/unet.json:\n          cache: false\n")
    (tmp_path / "metrics").mkdir()
    for iou in (0.61, 0.65):
        primary = {"mean": {"iou": iou, "dice": 0.7},
                   "per_category": {"bottle": {"iou": iou, "dice": 0.7}}}
        (tmp_path / "metrics/unet.json").write_text(json.dumps(primary))
        run("git", "add", "-A")
        run("git", "commit", "-qm", f"iou {iou}")
    diff = json.loads(run(str(BIN / "dvc"), "metrics", "diff", "HEAD~1", "--json"))
    change = diff["metrics/unet.json"]["per_category.bottle.iou"]
    assert change["old"] == 0.61 and change["new"] == 0.65
    assert change["diff"] == pytest.approx(0.04)
    assert "per_category.bottle.dice" not in diff["metrics/unet.json"]


def tiny_test_split(n: int = 4, size: int = 32) -> PreparedSplit:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    masks[:, 8:16, 8:16] = 1
    cats = np.array(["bottle", "bottle", "weave", "weave"])
    return PreparedSplit(images, masks, cats, np.array(["d"] * n),
                         np.array([f"{i}.png" for i in range(n)]))


def test_report_is_self_contained_with_bold_best(tmp_path: Path) -> None:
    split = tiny_test_split()
    metrics, preds, hist = {}, {}, {}
    for i, arch in enumerate(("unet", "mr2unet")):
        model = build_model(arch, base_width=4)
        result = evaluate(model, split, torch.device("cpu"), progress=False)
        metrics[arch], _ = summarise(result.counts, split.categories)
        metrics[arch]["per_category"]["bottle"]["iou"] = 0.5 + 0.1 * i
        preds[arch] = result.predictions
        hist[arch] = [{"epoch": e, "loss": 1 / e, "train_iou": e / 10} for e in (1, 2, 3)]
    write_report(ReportInputs(metrics, hist, split.images, split.masks, split.categories,
                              preds, {"git commit": "abc"}, 2, {}), tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # one grid per category
    assert " src=\"http" not in page and "<svg" in page
    assert "<b>0.6000</b> (0.6547, -0.0547)" in page  # ours vs paper's MR2U-Net bottle
    md = (tmp_path / "report.md").read_text()
    assert "**0.6000** (0.6547, -0.0547)" in md
    rows = list(csv.DictReader((tmp_path / "category_scores.csv").open()))
    assert {(r["model"], r["category"]) for r in rows} == {
        (m, c) for m in ("unet", "mr2unet") for c in ("bottle", "weave")}
    assert Image.open(tmp_path / "figures" / "samples_weave.png").size[1] > 64


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "unet.pt"
    save_model(path, build_model("unet", base_width=4), "unet", {"base_width": 4}, 64)
    return path


def test_predict_real_bottle_grayscale_and_broken_files(checkpoint: Path, tmp_path: Path,
                                                        bottle_tar: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    with tarfile.open(bottle_tar) as tar:
        for name in ("bottle/test/broken_large/000.png", "bottle/test/contamination/001.png"):
            (inputs / name.replace("/", "_")).write_bytes(tar.extractfile(name).read())
    Image.fromarray(np.full((90, 70), 120, np.uint8)).save(inputs / "gray.png")
    (inputs / "broken.png").write_bytes(b"nope")
    out = tmp_path / "out"
    result = subprocess.run([str(BIN / "mr2unet"), "predict", "--model", str(checkpoint),
                             str(inputs), "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    assert "1 failed" in result.stdout and "broken.png" in result.stdout
    mask = Image.open(out / "bottle_test_broken_large_000_mask.png")
    assert mask.size == (900, 900) and set(np.unique(np.asarray(mask))) <= {0, 255}
    assert Image.open(out / "gray_mask.png").size == (70, 90)
    assert Image.open(out / "gray_overlay.png").mode == "RGB"
    assert len(list(out.glob("*_overlay.png"))) == 3


def test_predict_from_a_registry_uri(checkpoint: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    mlflow = pytest.importorskip("mlflow")
    from mr2unet.mlflow_model import log_segmentation_model
    from mr2unet.registry import set_aliases

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    runs = {}
    for arch in ("unet", "resunet"):
        with mlflow.start_run() as run:
            info = log_segmentation_model(checkpoint)
        version = mlflow.register_model(info.model_uri, f"mr2unet-{arch}")
        runs[arch] = {"tracking": True, "tracking_uri": uri, "run_id": run.info.run_id,
                      "registered_model": f"mr2unet-{arch}", "model_version": version.version}
    aliases = set_aliases(runs, {"unet": 0.4, "resunet": 0.6}, "mr2unet-")
    assert aliases["champion"] == "models:/mr2unet-resunet@champion"
    assert aliases["challenger"] == "models:/mr2unet-unet@challenger"
    client = mlflow.MlflowClient(uri)
    assert client.get_model_version_by_alias("mr2unet-best", "champion").tags["arch"] == \
        "resunet"
    Image.fromarray(np.zeros((50, 60, 3), np.uint8)).save(tmp_path / "x.png")
    monkeypatch.chdir(tmp_path)
    result = subprocess.run([str(BIN / "mr2unet"), "predict", "--model",
                             "models:/mr2unet-best@champion", "x.png", "--out", "o"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "o" / "x_mask.png").size == (60, 50)
