"""``mr2unet export``: ONNX files that ONNX Runtime runs like PyTorch, for all four networks.

Parity: max |logit difference| below 1e-3 and identical masks on at least 99.9 % of the
pixels, on random images and on real MVTec bottle images. The networks are briefly
trained (trained weights and BatchNorm statistics, logits of a trained network's size) and
their head's bias is set so that about half of the pixels are defects: masks that a wrong
export would visibly change.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import briefly_trained
from PIL import Image

from mr2unet.cli import main
from mr2unet.data.prepare import resize_image
from mr2unet.data.transforms import to_input
from mr2unet.deploy.export import (
    check_parity,
    export_checkpoint,
    onnx_session,
    random_images,
    read_metadata,
    run_onnx,
)
from mr2unet.models import MODEL_NAMES
from mr2unet.models.checkpoint import save_model

pytestmark = pytest.mark.slow

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SIZE = 64
WIDTH = 8  # the demo's networks


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every network: its checkpoint, ONNX file and export seconds."""
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for arch in MODEL_NAMES:
        model = briefly_trained(arch)
        checkpoint = root / f"{arch}.pt"
        save_model(checkpoint, model, arch, {"base_width": WIDTH}, SIZE)
        start = time.perf_counter()
        result = export_checkpoint(checkpoint, root / f"{arch}.onnx")
        out[arch] = {"model": model, "checkpoint": checkpoint, "result": result,
                     "seconds": time.perf_counter() - start}
    return out


@pytest.mark.parametrize("arch", MODEL_NAMES)
def test_onnx_matches_pytorch_on_random_images(exported: dict, arch: str) -> None:
    entry = exported[arch]
    images = random_images(7, SIZE, seed=2)
    parity = check_parity(entry["result"].path, entry["model"], images, batch_size=3)
    print(f"{arch}: export {entry['seconds']:.1f}s; random: {parity.summary()}")
    assert parity.images == 7  # batches of 3, 3 and 1: the batch axis is dynamic
    assert parity.max_abs_logit_diff < 1e-3
    assert parity.max_abs_probability_diff < 1e-4
    assert parity.mask_agreement >= 0.999
    # the masks are not trivially all-defect or all-good
    with torch.no_grad():
        z = entry["model"](to_input(torch.from_numpy(images)))
    assert 0.01 < float((z[:, 1] > z[:, 0]).float().mean()) < 0.99


@pytest.fixture(scope="module")
def bottles(bottle_raw: Path) -> np.ndarray:
    paths = sorted((bottle_raw / "bottle" / "test").glob("*/*.png"))
    assert len(paths) >= 60
    return np.stack([resize_image(Image.open(p), SIZE) for p in paths])


@pytest.mark.parametrize("arch", MODEL_NAMES)
def test_onnx_matches_pytorch_on_real_bottles(exported: dict, bottles: np.ndarray,
                                              arch: str) -> None:
    parity = check_parity(exported[arch]["result"].path, exported[arch]["model"], bottles)
    print(f"{arch}: {len(bottles)} bottle images: {parity.summary()}")
    assert parity.max_abs_logit_diff < 1e-3
    assert parity.mask_agreement >= 0.999


def test_the_file_says_how_to_feed_it(exported: dict) -> None:
    path = exported["mr2unet"]["result"].path
    meta = read_metadata(path)
    assert meta["input.layout"] == "NCHW" and meta["input.color"] == "RGB"
    assert meta["input.scale"] == "1/255" and meta["input.mean"] == "0,0,0"
    assert meta["input.shape"] == f"[batch, 3, {SIZE}, {SIZE}]"
    assert meta["onnx.opset"] == "17" and meta["mr2unet.arch"] == "mr2unet"
    assert meta["mr2unet.checkpoint_sha256"]
    session = onnx_session(path)
    assert [(i.name, i.type, i.shape) for i in session.get_inputs()] == \
        [("input", "tensor(float)", ["batch", 3, SIZE, SIZE])]
    assert [(o.name, o.shape) for o in session.get_outputs()] == \
        [("logits", ["batch", 2, SIZE, SIZE]), ("defect_probability", ["batch", SIZE, SIZE])]
    # The documented recipe (uint8 RGB / 255, NCHW) gives the network's own logits.
    images = random_images(2, SIZE, seed=3)
    x = images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    logits, probs = session.run(None, {"input": x})
    with torch.no_grad():
        expected = exported["mr2unet"]["model"](torch.from_numpy(x)).numpy()
    assert np.abs(logits - expected).max() < 1e-3
    assert np.abs(probs - run_onnx(session, images)[1]).max() == 0


def test_a_pad_model_says_it_pads(exported: dict, tmp_path: Path) -> None:
    """A model trained on padded squares (prepare.resize: pad) says so in its ONNX file;
    a squashed one says it squashes (the caller's pre-processing differs)."""
    squash = read_metadata(exported["unet"]["result"].path)
    assert squash["input.resize_mode"] == "squash" and "no padding" in squash["input.resize"]
    checkpoint = tmp_path / "pad.pt"
    save_model(checkpoint, exported["unet"]["model"], "unet", {"base_width": WIDTH}, SIZE,
               resize="pad")
    meta = read_metadata(export_checkpoint(checkpoint, tmp_path / "pad.onnx").path)
    assert meta["input.resize_mode"] == "pad"
    assert "keeping the aspect ratio" in meta["input.resize"]
    assert "no padding" not in meta["input.resize"]


def test_the_dynamo_exporter_gives_the_same_logits(tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    model = briefly_trained("unet", size=32, steps=2)
    save_model(tmp_path / "unet.pt", model, "unet", {"base_width": WIDTH}, 32)
    result = export_checkpoint(tmp_path / "unet.pt", tmp_path / "unet.onnx", exporter="dynamo")
    assert result.opset == 18 and read_metadata(result.path)["onnx.opset"] == "18"
    parity = check_parity(result.path, model, random_images(3, 32, seed=5))
    assert parity.max_abs_logit_diff < 1e-3 and parity.mask_agreement >= 0.999


def local_store(mlflow: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                ) -> tuple[Any, str, str]:
    """A SQLite MLflow store in ``tmp_path`` as the process's tracking URI (the caller
    resets it): (client, uri, experiment id)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri, uri)
    experiment = client.create_experiment("t", (tmp_path / "artifacts").as_uri())
    mlflow.set_tracking_uri(uri)
    return client, uri, experiment


def test_cli_exports_a_registered_model(exported: dict, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture) -> None:
    mlflow = pytest.importorskip("mlflow")
    from mr2unet.tracking.pyfunc import log_segmentation_model

    client, uri, experiment = local_store(mlflow, tmp_path, monkeypatch)
    try:
        with mlflow.start_run(experiment_id=experiment):
            info = log_segmentation_model(exported["resunet"]["checkpoint"])
        mlflow.register_model(info.model_uri, "mr2unet-resunet")
    finally:
        mlflow.set_tracking_uri(None)
    assert main(["export", "--model", "models:/mr2unet-resunet/1", "--format", "onnx",
                 "--out", "model.onnx", "--tracking-uri", uri]) == 0
    printed = capsys.readouterr().out
    assert "wrote model.onnx" in printed and "resunet, opset 17" in printed
    assert "float32 [batch, 3, 64, 64], RGB, NCHW, pixel / 255" in printed
    assert "masks identical on 100.0000 % of pixels" in printed
    assert read_metadata("model.onnx")["mr2unet.source"] == "models:/mr2unet-resunet/1"
    # the same file as exporting the .pt directly (same weights, same exporter)
    parity = check_parity("model.onnx", exported["resunet"]["model"], random_images(2, SIZE))
    assert parity.max_abs_logit_diff < 1e-3

    assert main(["export", "--model", "missing.pt", "--out", "x.onnx"]) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert not Path("x.onnx").exists()


def test_the_champion_carries_its_onnx_file(exported: dict, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """What the report stage does after setting the aliases (deploy.publish.attach_onnx)."""
    mlflow = pytest.importorskip("mlflow")
    from mr2unet.deploy.publish import attach_onnx
    from mr2unet.tracking.pyfunc import log_segmentation_model
    from mr2unet.tracking.registry import set_aliases

    client, uri, experiment = local_store(mlflow, tmp_path, monkeypatch)
    runs = {}
    try:
        for arch in ("unet", "attention_unet"):
            with mlflow.start_run(experiment_id=experiment) as run:
                info = log_segmentation_model(exported[arch]["checkpoint"])
            version = mlflow.register_model(info.model_uri, f"mr2unet-{arch}")
            runs[arch] = {"tracking": True, "tracking_uri": uri, "run_id": run.info.run_id,
                          "registered_model": f"mr2unet-{arch}",
                          "model_version": str(version.version)}
    finally:
        mlflow.set_tracking_uri(None)
    assignments = set_aliases(runs, {"unet": 0.4, "attention_unet": 0.6}, "mr2unet-")
    checkpoints = {arch: exported[arch]["checkpoint"] for arch in runs}
    test_images = random_images(5, SIZE, seed=6)
    note = attach_onnx(assignments, runs, "champion", checkpoints, test_images)
    assert note.startswith("models:/mr2unet-attention_unet@champion: model.onnx attached")
    assert "on the 5 test images" in note
    again = attach_onnx(assignments, runs, "champion", checkpoints, test_images)
    assert again.endswith("model.onnx already attached")

    local = Path(mlflow.artifacts.download_artifacts(
        "models:/mr2unet-best@champion", dst_path=str(tmp_path / "champion"),
        tracking_uri=uri))
    assert read_metadata(local / "model.onnx")["mr2unet.arch"] == "attention_unet"
    parity = check_parity(local / "model.onnx", exported["attention_unet"]["model"], test_images)
    assert parity.max_abs_logit_diff < 1e-3
    for name in ("mr2unet-best", "mr2unet-attention_unet"):
        version = client.get_model_version_by_alias(name, "champion")
        assert version.tags["onnx_file"] == "model.onnx" and version.tags["onnx_opset"] == "17"
        assert float(version.tags["onnx_max_abs_logit_diff"]) < 1e-3
    # the challenger's model has no ONNX file: only the champion is exported
    challenger = client.get_model_version_by_alias("mr2unet-best", "challenger")
    assert "onnx_file" not in challenger.tags
