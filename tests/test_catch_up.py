"""The evaluate stage's server probe and catch-up (issue #33), through `dvc repro`.

A training stage whose `mlflow server` went away right after its run opened finishes
anyway and leaves its tracking in the outbox (data/tracking/pending/). With the server
still down, evaluating fails fast with the one "does not answer" message instead of
hanging on MLflow's retries, and writes nothing. Once the server is back on the same
port, `dvc repro` alone (no `mr2unet tracking sync`) sends the outbox first: the run ends
FINISHED with every epoch's loss, its model is registered, and the test metrics and the
verdict land on that run and version.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import free_port, start_mlflow_server, stop_process_group
from helpers import DVC, ENV, make_project, run, set_param

from mr2unet.config.workspace import ModelFiles

mlflow = pytest.importorskip("mlflow")
pytestmark = pytest.mark.slow

EPOCHS = 6


def test_evaluate_fails_fast_while_the_server_is_down_then_catches_up(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", ["unet"], tracking=True)
    set_param(project, "train.epochs", EPOCHS)
    run([DVC, "repro", "prepare"], project, timeout=300)
    port, backend = free_port(), f"sqlite:///{tmp_path}/server.db"
    artifacts, uri = tmp_path / "artifacts", f"http://127.0.0.1:{port}"
    env = {**ENV, "MLFLOW_TRACKING_URI": uri}
    pending = project / "data/tracking/pending"

    server = start_mlflow_server(backend, artifacts, port)
    try:
        stage = subprocess.Popen([DVC, "repro", "train@unet"], cwd=project, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 start_new_session=True)
        deadline = time.monotonic() + 300
        while not (pending.is_dir() and any((d / "record.json").is_file()
                                            for d in pending.iterdir())):
            assert stage.poll() is None and time.monotonic() < deadline, "no run opened"
            time.sleep(0.02)
        stop_process_group(server, signal.SIGKILL)  # gone as the run starts training
        out, _ = stage.communicate(timeout=600)
    finally:
        stop_process_group(server)
        if stage.poll() is None:
            stop_process_group(stage)
    assert stage.returncode == 0, out
    assert "tracking incomplete" in out
    [box] = [d for d in pending.iterdir() if d.is_dir()]
    run_id = box.name

    start = time.monotonic()
    down = subprocess.run([DVC, "repro", "evaluate@unet"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - start
    print(f"evaluate with the server down failed after {elapsed:.1f} s")
    assert down.returncode != 0
    assert f"error: the MLflow tracking server {uri} does not answer" in down.stderr
    assert "Traceback" not in down.stderr
    assert elapsed < 90  # dvc and the imports; the probe itself waits at most 5 s
    files = ModelFiles("unet", project)
    assert not files.metrics.exists()
    assert (box / "record.json").is_file()  # still owed

    server = start_mlflow_server(backend, artifacts, port)  # back, on the same port
    try:
        run([DVC, "repro"], project, env=env, timeout=900)
        client = mlflow.MlflowClient(uri)
        assert not box.exists()
        training = client.get_run(run_id)
        assert training.info.status == "FINISHED"
        assert [m.step for m in sorted(client.get_metric_history(run_id, "loss"),
                                       key=lambda m: m.step)] == list(range(1, EPOCHS + 1))
        [version] = client.search_model_versions(f"run_id = '{run_id}'")
        assert version.name == "mr2unet-unet"
        verdict = json.loads(files.evaluation.read_text())["verdict"]
        assert training.data.tags["verdict"] == version.tags["verdict"] == verdict["verdict"]
        iou = json.loads(files.metrics.read_text())["mean"]["iou"]
        assert training.data.metrics["test_iou_mean"] == pytest.approx(iou)
    finally:
        stop_process_group(server)
