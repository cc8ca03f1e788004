"""Ctrl-C of `mr2unet repro` (issue #33): it stops every stage it started and exits 130,
and the training stage it stopped marks its MLflow run FAILED (not left RUNNING).

A scratch project tracking to its own SQLite store; the Ctrl-C is a SIGINT to the
foreground process group, as a terminal sends it (each `dvc` child runs in its own group,
so only `mr2unet repro` receives it and stops them). Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import (
    BIN,
    DVC,
    ENV,
    checkpoint_epoch,
    make_project,
    project_processes,
    run,
    set_param,
)

from mr2unet.config.workspace import ModelFiles

mlflow = pytest.importorskip("mlflow")
pytestmark = pytest.mark.slow

EPOCHS = 200  # far more than the seconds the test waits: the stage is mid-run when stopped


def test_ctrl_c_stops_mr2unet_repro_with_130_and_fails_the_training_run(
        tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", ["unet"], tracking=True)
    set_param(project, "train.epochs", EPOCHS)
    run([DVC, "repro", "prepare"], project, timeout=300)
    repro = subprocess.Popen([str(BIN / "mr2unet"), "repro", "--jobs", "1"], cwd=project,
                             env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    checkpoint = project / "data/checkpoints/unet/last.pt"
    deadline = time.monotonic() + 300
    try:
        while checkpoint_epoch(checkpoint) < 2:
            assert repro.poll() is None and time.monotonic() < deadline, "no checkpoint"
            time.sleep(0.1)
        stopped_at = time.monotonic()
        os.killpg(repro.pid, signal.SIGINT)  # the terminal's Ctrl-C
        out, _ = repro.communicate(timeout=90)
    finally:
        if repro.poll() is None:
            os.killpg(repro.pid, signal.SIGKILL)
            repro.wait(timeout=30)
    print(f"mr2unet repro stopped {time.monotonic() - stopped_at:.1f} s after Ctrl-C")
    assert repro.returncode == 130, out
    assert "run `mr2unet repro` again to resume" in out
    assert "Traceback" not in out
    time.sleep(0.5)
    assert project_processes(project) == []  # no dvc or training stage left running
    assert 2 <= checkpoint_epoch(checkpoint) < EPOCHS
    assert not ModelFiles("unet", project).checkpoint.exists()  # the stage did not end

    client = mlflow.MlflowClient(f"sqlite:///{project}/mlflow.db")
    experiment = client.get_experiment_by_name("mr2unet")
    [training] = client.search_runs([experiment.experiment_id])
    assert training.info.run_name == "train-unet"
    assert training.info.status == "FAILED"  # not RUNNING forever
    assert len(client.get_metric_history(training.info.run_id, "loss")) >= 2
