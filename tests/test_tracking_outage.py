"""Training never waits on the tracking server; SIGTERM stops `mr2unet repro` cleanly.

Real processes on 127.0.0.1, every wait bounded: an `mlflow server` killed in the middle
of a training stage and restarted on the same port, then `mr2unet tracking sync`; a server
that is down from the start; SIGTERM to `mr2unet repro`.
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import time
from pathlib import Path

import pytest
from conftest import free_port, start_mlflow_server, stop_process_group
from helpers import (
    BIN,
    DVC,
    ENV,
    checkpoint_epoch,
    make_project,
    project_processes,
    run,
    set_param,
    stale_stages,
)

from mr2unet.errors import UserError
from mr2unet.tracking.probe import check_reachable

mlflow = pytest.importorskip("mlflow")
pytestmark = pytest.mark.slow
MR2UNET = str(BIN / "mr2unet")


def test_a_server_that_is_down_is_one_clear_error_within_the_timeout() -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        check_reachable(uri, timeout_s=3)
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert uri in message and "Start it" in message
    assert "tracking.enabled: false" in message and "unset MLFLOW_TRACKING_URI" in message
    check_reachable("sqlite:///nowhere/mlflow.db")  # a local store needs no server


def test_the_train_stage_fails_fast_when_the_server_is_down(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", ["unet"], tracking=True)
    run([DVC, "repro", "prepare"], project, timeout=300)
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    result = subprocess.run(["python", "pipeline/train.py", "unet"], cwd=project,
                            env={**ENV, "MLFLOW_TRACKING_URI": uri}, capture_output=True,
                            text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stderr
    assert f"error: the MLflow tracking server {uri} does not answer" in result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 60  # imports included; the probe itself waits at most 5 s
    assert not (project / "data/models/unet.pt").exists()


def metric_rows(outbox: Path, key: str) -> int:
    path = outbox / "metrics.jsonl"
    if not path.is_file():
        return 0
    return sum(json.loads(line)["key"] == key for line in path.read_text().splitlines()
               if line.endswith("}"))


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    header, *rows = path.read_text().splitlines()
    return header.split(","), [r.split(",") for r in rows]


def test_a_server_killed_mid_run_costs_no_speed_and_no_metric(tmp_path: Path) -> None:
    epochs = 40
    project = make_project(tmp_path / "p", ["unet"], tracking=True)
    set_param(project, "train.epochs", epochs)
    run([DVC, "repro", "prepare"], project, timeout=300)
    port, backend = free_port(), f"sqlite:///{tmp_path}/server.db"
    artifacts = tmp_path / "artifacts"
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(backend, artifacts, port)
    env = {**ENV, "MLFLOW_TRACKING_URI": uri}
    try:
        stage = subprocess.Popen([DVC, "repro", "train@unet"], cwd=project, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 start_new_session=True)
        pending = project / "data/tracking/pending"
        deadline = time.monotonic() + 300
        while not (pending.is_dir() and any(metric_rows(d, "loss") >= 8
                                            for d in pending.iterdir() if d.is_dir())):
            assert stage.poll() is None and time.monotonic() < deadline, "no epochs logged"
            time.sleep(0.05)
        [outbox] = [d for d in pending.iterdir() if d.is_dir()]
        stop_process_group(server, signal.SIGKILL)
        killed_after = metric_rows(outbox, "loss")
        out, _ = stage.communicate(timeout=600)
    finally:
        stop_process_group(server)
        if stage.poll() is None:
            stop_process_group(stage)
    assert stage.returncode == 0, out
    assert killed_after < epochs - 10, "training ended before the server was killed"
    assert out.count("tracking degraded") == 1, out
    assert "tracking incomplete" in out and "mr2unet tracking sync" in out
    assert (project / "data/models/unet.pt").is_file()
    assert "train@unet" not in stale_stages(project)  # `dvc repro` will not retrain

    server = start_mlflow_server(backend, artifacts, port)  # back, on the same port
    try:
        start = time.monotonic()
        synced = run([MR2UNET, "tracking", "sync"], project, env=env, timeout=300).stdout
        sync_s = time.monotonic() - start
        assert "sent" in synced and "registry version mr2unet-unet/1" in synced
        client = mlflow.MlflowClient(uri)
        run_id = json.loads((project / "data/models/unet.run.json").read_text())["run_id"]
        columns, rows = read_csv(project / "metrics/history/unet.csv")
        assert len(rows) == epochs
        histories = {}
        for i, key in enumerate(columns[1:], 1):
            history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
            histories[key] = history
            assert [m.step for m in history] == list(range(1, epochs + 1)), key  # no duplicates
            as_csv = [str(int(m.value)) if key == "collapsed" else f"{m.value:.6g}"
                      for m in history]
            assert as_csv == [r[i] for r in rows], key
        assert len(client.get_metric_history(run_id, "seconds")) == epochs
        [version] = client.search_model_versions(f"run_id = '{run_id}'")
        assert version.name == "mr2unet-unet"
        assert client.get_run(run_id).info.status == "FINISHED"
        assert not any(pending.iterdir())
        again = run([MR2UNET, "tracking", "sync"], project, env=env, timeout=120).stdout
        assert "nothing to sync" in again
        assert len(client.get_metric_history(run_id, "loss")) == epochs
        assert len(client.search_model_versions("name = 'mr2unet-unet'")) == 1
    finally:
        stop_process_group(server)

    # Epoch-to-epoch wall time (the metrics' timestamps are taken after on_epoch_end, so
    # a callback that waited on the server would show here).
    stamps = [m.timestamp / 1000 for m in histories["loss"]]
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    up, down = gaps[1:killed_after - 1], gaps[killed_after + 1:]
    ratio = statistics.median(down) / statistics.median(up)
    print(f"\nepoch wall time: server up {statistics.median(up):.3f} s (median of {len(up)}), "
          f"down {statistics.median(down):.3f} s (median of {len(down)}), ratio {ratio:.2f}; "
          f"sync after restart {sync_s:.1f} s")
    assert ratio < 2.0


def test_sigterm_to_mr2unet_repro_stops_every_stage_and_the_next_run_resumes(
        tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", ["unet"])
    set_param(project, "train.epochs", 60)
    run([DVC, "repro", "prepare"], project, timeout=300)
    repro = subprocess.Popen([MR2UNET, "repro", "--jobs", "1"], cwd=project, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checkpoint = project / "data/checkpoints/unet/last.pt"
    deadline = time.monotonic() + 300
    try:
        while checkpoint_epoch(checkpoint) < 3:
            assert repro.poll() is None and time.monotonic() < deadline, "no checkpoint"
            time.sleep(0.1)
        repro.send_signal(signal.SIGTERM)
        out, _ = repro.communicate(timeout=90)
    finally:
        if repro.poll() is None:
            repro.kill()
    assert repro.returncode == 128 + signal.SIGTERM, out
    assert "run `mr2unet repro` again to resume" in out
    time.sleep(0.5)
    assert project_processes(project) == []  # no dvc or training left running
    kept = checkpoint_epoch(checkpoint)
    assert 3 <= kept < 60
    again = run([MR2UNET, "repro", "--jobs", "1"], project, timeout=600).stdout
    assert f"resuming unet from epoch {kept}" in again
    assert stale_stages(project) == set()
