"""The chosen mask threshold carried through the stages (issue #33, b): the train stage's
own ``validation_meta`` chooses a threshold that is not 0.5 on a validation split built so,
the model file is written with it as the train stage writes it, and then the evaluate stage
(pooled record and scores), the report's threshold column, ``mr2unet predict``, the MLflow
pyfunc and the ONNX metadata all use that same value without being told.

The `dvc repro` of the recipe with a validation split is tests/test_threshold.py's slow
test; this one checks every consumer on one model file.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import briefly_trained, project_copy, stage_module
from PIL import Image
from test_stage_wiring import stage

from mr2unet.config.params import load_params
from mr2unet.config.workspace import PREPARED, ModelFiles
from mr2unet.data.prepared import PreparedSplit
from mr2unet.data.transforms import to_input
from mr2unet.deploy.export import random_images
from mr2unet.evaluation.inference import predict_maps
from mr2unet.models.inference import defect_mask

pytestmark = pytest.mark.slow

SIZE = 32


def split_of(images: np.ndarray, masks: np.ndarray) -> PreparedSplit:
    n = len(images)
    categories = np.array(["bottle", "grid"] * (n // 2))
    return PreparedSplit(images, masks, categories, np.array(["crack"] * n),
                         np.array([f"{c}/test/crack/{i:03d}.png" for i, c in
                                   enumerate(categories)]))


def test_the_threshold_train_chooses_is_used_by_every_consumer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mr2unet.cli import main
    from mr2unet.deploy.export import export_checkpoint
    from mr2unet.models.checkpoint import save_model
    from mr2unet.tracking.pyfunc import SegmentationModel

    project = project_copy(tmp_path / "p", {
        "tracking": {"enabled": False},
        "train": {"models": ["unet"], "base_width": 4},
        "run": {"device": "cpu"},
        "prepare": {"image_size": SIZE},
        "split": {"val_fraction": 0.25},
        "evaluate": {"report_samples": 1, "batch_size": 8, "threshold": "best_iou"}})
    model = briefly_trained("unet", size=SIZE, width=4)
    with torch.no_grad():  # spread the logits so that probabilities cover (0, 1)
        model.head.weight *= 8
        model.head.bias *= 8
    # validation masks: where the network's own probability exceeds 0.25, so the best IOU
    # on them is at a threshold clearly below 0.5
    val_images = random_images(8, SIZE, seed=5)
    _, probs = predict_maps(model, val_images, torch.device("cpu"), progress=False)
    assert ((probs > 0.25) & (probs <= 0.5)).mean() > 0.05  # 0.5 would miss these pixels
    split_of(val_images, (probs > 0.25).astype(np.uint8)).save(
        project / "data/prepared/val.npz")

    monkeypatch.chdir(project)  # the stage's paths are relative to the project
    params = load_params(project / "params.yaml")
    chosen = stage_module("train", monkeypatch).validation_meta(params, model, "cpu")
    t = chosen["threshold"]["value"]
    assert chosen["threshold"]["rule"] == "best_iou" and 0.25 <= t < 0.5, chosen

    # test images whose masks are the network's mask at t: every consumer that uses t
    # reproduces them exactly, one that uses 0.5 does not
    test_images = random_images(6, SIZE, seed=9)
    with torch.no_grad():
        logits = model.eval()(to_input(torch.from_numpy(test_images)))
    expected = defect_mask(logits, t).numpy()
    assert expected.any(axis=(1, 2)).all()
    assert not np.array_equal(expected, defect_mask(logits, 0.5).numpy())
    test = split_of(test_images, expected)
    test.save(project / PREPARED.test)
    test.save(project / "data/prepared/train.npz")  # the verdict's intensity baseline

    files = ModelFiles("unet", project)  # as the train stage writes them
    save_model(files.checkpoint, model, "unet", {"base_width": 4}, SIZE,
               meta={"device": "cpu", "epochs": 3, "git_commit": "abc123", **chosen})
    files.history.parent.mkdir(parents=True, exist_ok=True)
    files.history.write_text("epoch,loss,train_iou,train_dice,lr,seconds\n"
                             "1,0.5,0.1,0.2,0.001,1.0\n")

    # the evaluate stage: the pooled record and the scores at t
    stage(project, "pipeline/evaluate.py", "unet")
    pooled = json.loads((project / "metrics/evaluation/unet.json").read_text())
    assert pooled["threshold"]["value"] == t
    scores = json.loads((project / "metrics/unet.json").read_text())["mean"]
    assert scores["iou"] == pytest.approx(1.0), scores
    # the report's threshold column
    stage(project, "pipeline/report.py")
    md = (project / "reports/report.md").read_text()
    assert f"| {t:g} (best_iou, 8 validation images) |" in md

    # mr2unet predict, without --threshold
    for i, rgb in enumerate(test_images):
        Image.fromarray(rgb).save(tmp_path / f"{i}.png")
    assert main(["predict", "--model", str(files.checkpoint), "--device", "cpu",
                 "--out", str(tmp_path / "o"),
                 *(str(tmp_path / f"{i}.png") for i in range(len(test_images)))]) == 0
    predicted = np.stack([np.asarray(Image.open(tmp_path / "o" / f"{i}_mask.png")) // 255
                          for i in range(len(test_images))])
    assert np.array_equal(predicted, expected)
    # the pyfunc, in process
    served = SegmentationModel()
    served.load_context(SimpleNamespace(artifacts={"checkpoint": str(files.checkpoint)}))
    assert np.array_equal(served.predict(None, test_images), expected)
    # the ONNX metadata
    exported = export_checkpoint(files.checkpoint, tmp_path / "m.onnx")
    assert exported.metadata["mask.default_threshold"] == f"{t:g}"
    assert exported.metadata["mask.threshold_rule"] == "best_iou"
