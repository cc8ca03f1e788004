"""``mlflow models serve`` on 127.0.0.1: the masks of ``mr2unet predict``, for requests of
images resized to the model's size and for camera frames as they come (issue #35).

The champion's request is built as docs/deploy.md said before frames of any size were
taken: each image resized to the model's input size like ``prepare`` (PIL bilinear,
reducing_gap=3), ``{"inputs": <uint8 N x S x S x 3>}``; the answer's masks, resized back
with nearest neighbour, must equal the PNGs that ``mr2unet predict --model
models:/mr2unet-best@champion`` writes for the same images. A camera frame (2000x1500
JPEG as base64) gets the very mask PNG that ``mr2unet predict`` writes for its file. Each
server runs in its own process group and is stopped in a ``finally``.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import http_service
from helpers import briefly_trained
from PIL import Image

from mr2unet.cli import main
from mr2unet.data.prepare import resize_image
from mr2unet.models.checkpoint import save_model

mlflow = pytest.importorskip("mlflow")
pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
SIZE = 64
BOTTLES = ("bottle/test/broken_large/000.png", "bottle/test/contamination/001.png",
           "bottle/test/good/000.png")
START_TIMEOUT_S = 180
REQUEST_TIMEOUT_S = 60


def model_server(model_uri: str, env: dict[str, str], log_path: Path
                 ) -> contextlib.AbstractContextManager[str]:
    """``mlflow models serve --env-manager local`` on 127.0.0.1; yields its base URL."""
    return http_service(
        [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", "{port}", "-w", "1"],
        env, log_path, "/ping", "model server", START_TIMEOUT_S)


def post(url: str, body: dict[str, Any]) -> tuple[int, Any, float]:
    """POST JSON to ``url``; (HTTP status, decoded answer, seconds)."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as answer:
            status, text = answer.status, answer.read()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read()
    return status, json.loads(text), time.perf_counter() - start


@pytest.fixture
def champion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A SQLite registry in ``tmp_path`` whose ``mr2unet-best@champion`` is a unet;
    returns its tracking URI."""
    from mr2unet.tracking.pyfunc import log_segmentation_model
    from mr2unet.tracking.registry import set_aliases

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    checkpoint = tmp_path / "unet.pt"
    save_model(checkpoint, briefly_trained("unet"), "unet", {"base_width": 8}, SIZE)
    client = mlflow.MlflowClient(uri, uri)
    experiment = client.create_experiment("serve", (tmp_path / "mlruns").as_uri())
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(experiment_id=experiment) as run:
            info = log_segmentation_model(checkpoint)
        version = mlflow.register_model(info.model_uri, "mr2unet-unet")
    finally:
        mlflow.set_tracking_uri(None)
    set_aliases({"unet": {"tracking": True, "tracking_uri": uri, "run_id": run.info.run_id,
                          "registered_model": "mr2unet-unet",
                          "model_version": str(version.version)}}, {"unet": 0.5}, "mr2unet-")
    return uri


@pytest.mark.parametrize("kind", ["generated", "real bottles"])
def test_the_served_champion_answers_like_mr2unet_predict(champion: str, tmp_path: Path,
                                                           kind: str,
                                                           request: pytest.FixtureRequest
                                                           ) -> None:
    images = tmp_path / "images"
    images.mkdir()
    if kind == "real bottles":  # 900x900 MVTec images; skips, saying so, without ../shared
        with tarfile.open(request.getfixturevalue("bottle_tar")) as archive:
            for name in BOTTLES:
                (images / name.replace("/", "_")).write_bytes(archive.extractfile(name).read())
    else:
        rng = np.random.default_rng(0)
        for name, shape in (("odd", (90, 70, 3)), ("wide", (48, 160, 3))):
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(
                images / f"{name}.png")
    paths = sorted(images.iterdir())

    assert main(["predict", "--model", "models:/mr2unet-best@champion", str(images),
                 "--out", str(tmp_path / "predicted"), "--tracking-uri", champion]) == 0

    # The request of docs/deploy.md
    pixels = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    batch = np.stack([resize_image(Image.fromarray(rgb), SIZE) for rgb in pixels])
    # The server starts `uvicorn` by name: the venv's bin/ must be on PATH (as when activated)
    env = {**os.environ, "MLFLOW_TRACKING_URI": champion,
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    with model_server("models:/mr2unet-best@champion", env, tmp_path / "serve.log") as url:
        status, answer, seconds = post(f"{url}/invocations", {"inputs": batch.tolist()})
        assert status == 200, answer
        masks = np.asarray(answer["predictions"], dtype=np.uint8)
        _, again, warm_seconds = post(f"{url}/invocations", {"inputs": batch.tolist()})
        status_p, probs, _ = post(f"{url}/invocations", {
            "inputs": batch.tolist(), "params": {"output": "probabilities", "threshold": 0.5}})
        bad_status, bad, _ = post(f"{url}/invocations",
                                  {"inputs": batch.tolist(), "params": {"output": "logits"}})
        if shutil.which("curl"):  # the copy-pasteable example of docs/deploy.md
            (tmp_path / "request.json").write_text(json.dumps({"inputs": batch[:1].tolist()}))
            curl = subprocess.run(
                ["curl", "-s", "-X", "POST", f"{url}/invocations", "-H",
                 "Content-Type: application/json", "--data", f"@{tmp_path / 'request.json'}"],
                capture_output=True, text=True, timeout=REQUEST_TIMEOUT_S, check=True)
            assert np.array_equal(json.loads(curl.stdout)["predictions"], masks[:1])
    print(f"serving round trip of {len(paths)} images: {seconds * 1000:.0f} ms "
          f"(first request), {warm_seconds * 1000:.0f} ms (second)")

    assert masks.shape == (len(paths), SIZE, SIZE)
    assert 0 < masks.mean() < 1  # neither all defect nor all good: a comparison that can fail
    assert again == answer
    for path, rgb, mask in zip(paths, pixels, masks, strict=True):
        full = np.asarray(Image.fromarray(mask * np.uint8(255)).resize(
            (rgb.shape[1], rgb.shape[0]), Image.Resampling.NEAREST))
        written = np.asarray(Image.open(tmp_path / "predicted" / f"{path.stem}_mask.png"))
        assert np.array_equal(full, written), path.name

    assert status_p == 200
    p = np.asarray(probs["predictions"], dtype=np.float32)
    assert p.shape == masks.shape and p.min() >= 0 and p.max() <= 1
    assert np.array_equal((p > 0.5).astype(np.uint8), masks)
    assert bad_status == 400 and "output" in json.dumps(bad)


# ------------------------------------------------- camera frames of any size (issue #35)

FRAME = (1500, 2000)  # height, width: a line camera's frame


def camera_frame(path: Path) -> Path:
    """A 2000x1500 JPEG: smooth noise with strongly red blobs (the briefly trained
    networks' defects), so that the masks hold both classes."""
    rng = np.random.default_rng(35)
    small = rng.integers(0, 256, (FRAME[0] // 50, FRAME[1] // 50, 3), dtype=np.uint8)
    rgb = np.asarray(Image.fromarray(small).resize(FRAME[::-1], Image.Resampling.BILINEAR))
    rgb = rgb.copy()
    for top, left in rng.integers(0, 1300, (6, 2)):
        rgb[top:top + 150, left:left + 200] = (240, 30, 20)
    Image.fromarray(rgb).save(path, quality=90)
    return path


def logged_model(tmp_path: Path, checkpoint: Path) -> tuple[str, str]:
    """``checkpoint`` logged as training logs it, in a SQLite store in ``tmp_path``;
    (tracking URI, model URI)."""
    from mr2unet.tracking.pyfunc import log_segmentation_model

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri, uri)
    experiment = client.create_experiment("frames", (tmp_path / "mlruns").as_uri())
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(experiment_id=experiment) as run:
            log_segmentation_model(checkpoint)
    finally:
        mlflow.set_tracking_uri(None)
    return uri, f"runs:/{run.info.run_id}/model"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.mark.parametrize("mode", ["resize", "tiles"])
def test_a_served_model_takes_camera_frames_as_they_come(tmp_path: Path, mode: str,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """A 2000x1500 JPEG as base64: the mask (a base64 PNG) is the very PNG that
    ``mr2unet predict`` writes for the file; a uint8 tensor of another size still works;
    undecodable bytes, an empty list and a too large frame are 400s with one message, and
    the server answers the next request."""
    from mr2unet.models.tiling import Tiling
    from mr2unet.tracking.pyfunc import MAX_FRAME_SIDE

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    checkpoint = tmp_path / f"{mode}.pt"
    if mode == "resize":  # padded to a square, as prepare.resize: pad does
        save_model(checkpoint, briefly_trained("unet", size=48), "unet", {"base_width": 8},
                   48, resize="pad")
    else:  # windows of 32 px over the frame scaled to a long side of 256 px
        save_model(checkpoint, briefly_trained("unet", size=32), "unet", {"base_width": 8},
                   32, meta={"tiling": Tiling(32, 16, 256).as_dict()})
    frame = camera_frame(tmp_path / "frame.jpg")
    small = tmp_path / "small.png"
    small_rgb = np.random.default_rng(1).integers(0, 256, (90, 70, 3), dtype=np.uint8)
    Image.fromarray(small_rgb).save(small)
    assert main(["predict", "--model", str(checkpoint), str(frame), str(small),
                 "--out", str(tmp_path / "predicted"), "--device", "cpu"]) == 0
    written = (tmp_path / "predicted" / "frame_mask.png").read_bytes()
    expected = np.asarray(Image.open(io.BytesIO(written)))
    assert expected.shape == FRAME and 0.01 < (expected > 0).mean() < 0.99

    uri, model_uri = logged_model(tmp_path, checkpoint)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    too_large = io.BytesIO()
    Image.new("RGB", (MAX_FRAME_SIDE + 1, 8)).save(too_large, format="PNG")
    with model_server(model_uri, env, tmp_path / "serve.log") as url:
        invocations = f"{url}/invocations"
        status, answer, seconds = post(invocations, {
            "inputs": {"image": [b64(frame.read_bytes())]}, "params": {"encoding": "png"}})
        assert status == 200, answer
        tensor_status, tensor_answer, _ = post(invocations, {"inputs": [small_rgb.tolist()]})
        errors = [post(invocations, body)[:2] for body in (
            {"inputs": {"image": [b64(b"\xff\xd8 not a JPEG at all")]}},
            {"inputs": {"image": []}},
            {"inputs": {"image": [b64(too_large.getvalue())]}})]
        after_status, after, _ = post(invocations, {"inputs": {"image": [b64(small.read_bytes())]}})
        curl = None
        if shutil.which("curl"):  # docs/deploy.md's example, as a shell runs it
            curl = subprocess.run(
                ["bash", "-c", 'printf \'{"inputs": {"image": ["%s"]}, "params": {"encoding": '
                 '"png"}}\' "$(base64 -w0 frame.jpg)" > request.json && curl -s -X POST '
                 f'{invocations} -H "Content-Type: application/json" --data @request.json'],
                cwd=tmp_path, capture_output=True, text=True, timeout=REQUEST_TIMEOUT_S,
                check=True)
    print(f"{mode}: a 2000x1500 JPEG answered in {seconds * 1000:.0f} ms")

    assert len(answer["predictions"]) == 1
    assert base64.b64decode(answer["predictions"][0]) == written  # the same PNG bytes
    if curl is not None:
        assert json.loads(curl.stdout)["predictions"] == answer["predictions"]
    small_mask = np.asarray(Image.open(tmp_path / "predicted" / "small_mask.png")) // 255
    assert tensor_status == 200 and np.array_equal(tensor_answer["predictions"], [small_mask])
    assert after_status == 200 and np.array_equal(after["predictions"], [small_mask])
    for (status, body), needle in zip(errors, ("frame 0: not a readable image", "no frames",
                                               f"larger than the limit of {MAX_FRAME_SIDE}"),
                                      strict=True):
        assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE", body
        assert needle in body["message"], body["message"]
