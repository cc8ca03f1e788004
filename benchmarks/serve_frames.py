"""A camera frame through ``mlflow models serve``: request size, time to answer, where it goes.

    flock /tmp/mr2unet-cpu.lock python benchmarks/serve_frames.py [--archs unet mr2unet]
        [--repeats 5] [--tensor-repeats 3] [--out benchmarks/results/serve_frames.json]

For each network at the demo's size (``prepare.image_size`` 48, ``train.base_width`` 8,
resize mode ``squash``; untrained weights: the time does not depend on them) the model is
logged as training logs it, served with ``mlflow models serve --env-manager local -w 1``
on 127.0.0.1, and sent a 2000x1500 JPEG frame (quality 90):

- as a base64 JPEG, ``{"inputs": {"image": [...]}}``, the mask back as a base64 PNG
  (``"params": {"encoding": "png"}``): the median of ``--repeats`` requests after one
  warm-up;
- as a JSON uint8 tensor, ``{"inputs": [[[[r, g, b], ...]]]}``, the same PNG answer: the
  median of ``--tensor-repeats`` requests (MLflow parses tens of MB of JSON).

The shares of decode / pre-process / predict / post-process / encode are timed **in this
process by calling the functions the pyfunc calls** (not inside the server): decode =
``pyfunc.frames_of`` (base64 + the reader of ``prepare``), pre-process =
``frames.network_input`` (resize to the input size), predict = the network's forward pass
on it (with the logits -> mask threshold), post-process = ``frames.to_frame_size`` (the
mask back at 2000x1500, nearest), encode = ``pyfunc.answer`` (PNG + base64); each a median
of ``--stage-repeats`` calls, on the threads torch picks (2 on the 2-core machine). The rest of the
server's time is HTTP and MLflow's JSON parsing and answer writing.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mr2unet.data.transforms import to_input
from mr2unet.models import build_model
from mr2unet.models.checkpoint import load_model, save_model
from mr2unet.models.frames import frame_maps, loaded_model, network_input, to_frame_size
from mr2unet.models.inference import defect_mask
from mr2unet.tracking.pyfunc import answer, frames_of, log_segmentation_model

BIN = Path(sys.executable).parent
ARCHS = ("unet", "resunet", "attention_unet", "mr2unet")
SIZE, WIDTH = 48, 8  # the demo's prepare.image_size and train.base_width (profiles/demo.yaml)
FRAME = (1500, 2000)  # height, width
START_TIMEOUT_S = 180
REQUEST_TIMEOUT_S = 600


def camera_jpeg() -> bytes:
    """A 2000x1500 JPEG (quality 90): smooth noise with a few strongly coloured blobs."""
    rng = np.random.default_rng(35)
    small = rng.integers(0, 256, (FRAME[0] // 50, FRAME[1] // 50, 3), dtype=np.uint8)
    rgb = np.asarray(Image.fromarray(small).resize(FRAME[::-1], Image.Resampling.BILINEAR)).copy()
    for top, left in rng.integers(0, 1300, (6, 2)):
        rgb[top:top + 150, left:left + 200] = (240, 30, 20)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def median_s(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def shares(checkpoint: Path, body: dict[str, Any], repeats: int) -> dict[str, float]:
    """Seconds per stage, the functions the pyfunc calls, called here."""
    module, payload = load_model(checkpoint)
    model = loaded_model(module, payload, str(checkpoint))
    rgb = frames_of(body["inputs"])[0]
    small = network_input(model, rgb)

    def forward() -> np.ndarray:
        with torch.inference_mode():
            return defect_mask(module(to_input(torch.from_numpy(np.stack([small])))))[0].numpy()

    small_mask = forward()
    maps = frame_maps(model, [rgb])
    return {"decode": median_s(lambda: frames_of(body["inputs"]), repeats),
            "pre-process": median_s(lambda: network_input(model, rgb), repeats),
            "predict": median_s(forward, repeats),
            "post-process": median_s(lambda: to_frame_size(small_mask, FRAME[1], FRAME[0],
                                                           Image.Resampling.NEAREST), repeats),
            "encode": median_s(lambda: answer(maps, "mask", "png"), repeats)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, data: bytes) -> tuple[float, int]:
    """Seconds to answer a JSON body, and the answer's size in bytes."""
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as reply:
        size = len(reply.read())
    return time.perf_counter() - start, size


def serve(model_uri: str, env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as reply:
                if reply.status == 200:
                    return proc, url
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the model server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def measure(arch: str, work: Path, bodies: dict[str, bytes], args: argparse.Namespace
            ) -> dict[str, Any]:
    import mlflow

    torch.manual_seed(0)
    checkpoint = work / f"{arch}.pt"
    save_model(checkpoint, build_model(arch, base_width=WIDTH), arch, {"base_width": WIDTH},
               SIZE)
    uri = f"sqlite:///{work}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_name=arch) as run:
        log_segmentation_model(checkpoint)
    mlflow.set_tracking_uri(None)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT_S),
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc, url = serve(f"runs:/{run.info.run_id}/model", env, work / f"serve-{arch}.log")
    try:
        invocations = f"{url}/invocations"
        post(invocations, bodies["jpeg"])  # warm-up
        jpeg = [post(invocations, bodies["jpeg"]) for _ in range(args.repeats)]
        tensor = [post(invocations, bodies["tensor"]) for _ in range(args.tensor_repeats)]
        _, array_answer = post(invocations, bodies["jpeg_array"])
    finally:
        stop(proc)
    stages = shares(checkpoint, json.loads(bodies["jpeg"]), args.stage_repeats)
    return {"arch": arch, "jpeg_s": statistics.median(t for t, _ in jpeg),
            "tensor_s": statistics.median(t for t, _ in tensor),
            "png_answer_bytes": jpeg[0][1], "array_answer_bytes": array_answer,
            "stages_s": stages, "stages_sum_s": sum(stages.values())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tensor-repeats", type=int, default=3)
    parser.add_argument("--stage-repeats", type=int, default=20,
                        help="calls per stage for the in-process shares (median)")
    parser.add_argument("--out", type=Path, help="also write the numbers as JSON here (rows "
                        "of other networks already in the file are kept: run the networks "
                        "in several shorter jobs)")
    args = parser.parse_args(argv)

    jpeg = camera_jpeg()
    rgb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    encoded = base64.b64encode(jpeg).decode("ascii")
    png = {"encoding": "png"}
    bodies = {"jpeg": json.dumps({"inputs": {"image": [encoded]}, "params": png}).encode(),
              "jpeg_array": json.dumps({"inputs": {"image": [encoded]}}).encode(),
              "tensor": json.dumps({"inputs": [rgb.tolist()], "params": png}).encode()}
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; frame {FRAME[1]}x{FRAME[0]} JPEG "
          f"({len(jpeg) / 1e3:.0f} kB)")
    print(f"request: base64 JPEG {len(bodies['jpeg']) / 1e6:.2f} MB, "
          f"JSON tensor {len(bodies['tensor']) / 1e6:.1f} MB "
          f"({len(bodies['tensor']) / len(bodies['jpeg']):.0f}x)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="mr2unet-serve-") as tmp:
        for arch in args.archs:
            row = measure(arch, Path(tmp), bodies, args)
            rows.append(row)
            stages = row["stages_s"]
            total = sum(stages.values())
            print(f"{arch:<15} JPEG {row['jpeg_s'] * 1000:6.0f} ms  tensor "
                  f"{row['tensor_s']:5.1f} s ({row['tensor_s'] / row['jpeg_s']:.0f}x)  "
                  f"answer PNG {row['png_answer_bytes'] / 1e3:.1f} kB vs array "
                  f"{row['array_answer_bytes'] / 1e6:.1f} MB  |  " + "  ".join(
                      f"{name} {s * 1000:.0f} ms ({s / total:.0%})"
                      for name, s in stages.items()), flush=True)
    if args.out:
        if args.out.is_file():
            measured = {row["arch"] for row in rows}
            rows = [row for row in json.loads(args.out.read_text())["rows"]
                    if row["arch"] not in measured] + rows
        rows.sort(key=lambda row: ARCHS.index(row["arch"]))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "machine": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "frame": f"{FRAME[1]}x{FRAME[0]} JPEG quality 90", "jpeg_bytes": len(jpeg),
            "request_bytes": {k: len(v) for k, v in bodies.items()},
            "repeats": args.repeats, "tensor_repeats": args.tensor_repeats,
            "stage_repeats": args.stage_repeats,
            "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
