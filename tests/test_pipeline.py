"""End to end: `dvc repro` in a throw-away copy of the project, with tiny values.

Covers what a user does with DVC and MLflow beyond one process: repro then nothing left to
do, kill a training stage and resume it to the same weights, push to a remote and pull
into another clone, and track against an `mlflow server` on 127.0.0.1 backed by SQLite
or by a throw-away PostgreSQL cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import free_port, postgres_cluster, start_mlflow_server, stop_process_group
from helpers import (
    BIN,
    DVC,
    ENV,
    TINY,
    make_project,
    project_copy,
    run,
    set_param,
    stale_stages,
)

from mr2unet.config.workspace import ModelFiles, PreparedFiles

pytestmark = pytest.mark.slow


# At TINY's values (3 epochs of 128 px images, batches of 8: 9 optimiser steps) both
# networks predicted no defect at all (mean IOU 0.000, verdict `not learned`), so every
# score check passed whatever the code did. The built project trains longer, on 64 px
# images, with a loss for rare defects (15 epochs there still predicted nothing).
BUILT = {"epochs": 60, "batch_size": 4, "loss": "focal_dice"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny project after a full `dvc repro` (shared by the read-only tests), at
    values where its networks learn something (BUILT)."""
    project = project_copy(tmp_path_factory.mktemp("built"), {
        **TINY, "tracking": {"enabled": False}, "prepare": {"image_size": 64},
        "train": {**TINY["train"], "models": ["unet", "mr2unet"], **BUILT}})
    run([DVC, "repro"], project, timeout=900)
    return project


# What the built project's networks score (mean test IOU) and the U-Net's pixel AUROC:
# measured on the 2-core AMD EPYC, 2026-12-07 (the same on every run there; the parallel
# test compares its bytes with these). The bounds leave MARGIN for the CPU-to-CPU spread
# of a short tiny run (docs/training.md: 0.03-0.05 mean IOU per network for the demo), so a
# change that lowers the scores, in every mode, fails here. Neither network beats the
# verdict's grey-level baseline (IOU 0.337) here: both are `not learned`.
MEASURED_IOU = {"unet": 0.2539, "mr2unet": 0.0934}
MEASURED_UNET_AUROC = 0.74
MARGIN = 0.10


def scores_of(project: Path, arch: str) -> dict:
    """metrics/<arch>.json, checked against the masks the evaluate stage wrote: each
    category's IOU recomputed from its predicted masks and the prepared test masks."""
    files = ModelFiles(arch, project)
    metrics = json.loads(files.metrics.read_text())
    test = np.load(PreparedFiles.under(project).test)
    masks, categories = test["masks"].astype(bool), test["categories"]
    predicted = np.load(files.predictions)["predictions"].astype(bool)
    assert predicted.shape == masks.shape
    per_image = (predicted & masks).sum(axis=(1, 2)) / (predicted | masks).sum(axis=(1, 2))
    for category, values in metrics["per_category"].items():
        assert values["iou"] == pytest.approx(per_image[categories == category].mean(),
                                              abs=1e-4), (arch, category)
    assert metrics["mean"]["iou"] == pytest.approx(
        np.mean([v["iou"] for v in metrics["per_category"].values()]), abs=1e-4)
    return metrics


def test_repro_writes_every_output_and_leaves_nothing_to_do(built: Path) -> None:
    for name in ("metrics/unet.json", "metrics/mr2unet.json", "metrics/history/unet.csv",
                 "data/models/mr2unet.pt", "data/prepared/manifest.csv",
                 "reports/report.html", "data/promotion.json"):
        assert (built / name).is_file(), name
    status = run([DVC, "status", "--quiet"], built)
    assert status.stdout.strip() == ""
    again = run([DVC, "repro"], built)
    assert "didn't change, skipping" in again.stdout or "up to date" in again.stdout
    assert "Running stage" not in again.stdout


@pytest.mark.parametrize("arch", ["unet", "mr2unet"])
def test_repro_scores_what_the_networks_learned(built: Path, arch: str) -> None:
    """The values, not only the files: the metrics are those of the masks evaluate wrote,
    above the measured IOU less MARGIN, each epoch in the history, the verdict in the
    record and the score in the report."""
    metrics = scores_of(built, arch)
    iou = metrics["mean"]["iou"]
    record = json.loads(ModelFiles(arch, built).evaluation.read_text())
    verdict = record["verdict"]
    print(f"{arch}: mean IOU {iou:.4f}, verdict {verdict['verdict']} ({verdict['reason']})")
    assert iou > max(0.0, MEASURED_IOU[arch] - MARGIN)
    if arch == "unet":
        assert metrics["mean"]["pixel_auroc"] > MEASURED_UNET_AUROC - MARGIN
    # the record's verdict judges these very scores
    assert verdict["verdict"] in ("learned", "weak", "not learned")
    assert f"IOU {iou:.3f}" in verdict["reason"]
    history = ModelFiles(arch, built).history.read_text().splitlines()
    assert [row.split(",")[0] for row in history[1:]] == \
        [str(epoch) for epoch in range(1, BUILT["epochs"] + 1)]
    assert f"{iou:.4f}" in (built / "reports/report.md").read_text()


def copy_built(built: Path, dest: Path) -> Path:
    shutil.copytree(built, dest, symlinks=True)
    return dest


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def test_a_train_value_reruns_train_evaluate_and_report_only(built: Path,
                                                              tmp_path: Path) -> None:
    project = copy_built(built, tmp_path / "p")
    set_param(project, "train.epochs", 2)
    assert stale_stages(project) == {"train@unet", "train@mr2unet"}
    ran = ran_stages(run([DVC, "repro"], project, timeout=900).stdout)
    assert ran == {"train@unet", "train@mr2unet", "evaluate@unet", "evaluate@mr2unet", "report",
                   "promote"}


def test_an_evaluate_value_reruns_evaluate_and_report_only(built: Path, tmp_path: Path) -> None:
    project = copy_built(built, tmp_path / "p")
    set_param(project, "evaluate.empty_score", 0.0)
    assert stale_stages(project) == {"evaluate@unet", "evaluate@mr2unet"}
    ran = ran_stages(run([DVC, "repro"], project, timeout=900).stdout)
    assert ran == {"evaluate@unet", "evaluate@mr2unet", "report", "promote"}


def test_editing_an_unapplied_profile_changes_nothing(built: Path, tmp_path: Path) -> None:
    project = copy_built(built, tmp_path / "p")
    demo = project / "profiles" / "demo.yaml"
    demo.write_text(demo.read_text().replace("epochs: 30", "epochs: 31"))
    (project / "profiles" / "new.yaml").write_text("train:\n  lr: 0.5\n")
    assert stale_stages(project) == set()


def test_run_options_and_the_tracking_server_retrain_nothing(built: Path,
                                                            tmp_path: Path) -> None:
    """`run:` (how a run executes) and `tracking:` (where it is logged) are no DVC
    dependencies of train or evaluate: pointing the pipeline at another MLflow store, or
    another thread count, device or cadence, leaves every stage up to date (issue #34)."""
    project = copy_built(built, tmp_path / "p")
    set_param(project, "tracking.uri", "sqlite:///elsewhere.db")
    set_param(project, "run.cpu_threads", 1)
    set_param(project, "run.checkpoint_every", 7)
    set_param(project, "run.adam_impl", "foreach")
    assert stale_stages(project) == set()
    set_param(project, "train.seed", 1)  # a train key still is one
    assert stale_stages(project) == {"train@unet", "train@mr2unet"}


def test_exp_run_set_param_shows_the_effective_values(built: Path, tmp_path: Path) -> None:
    """`dvc exp run -S` changes the value that runs, whatever profile params.yaml came from,
    and `dvc exp show` reports the values that ran (not a profile's blob)."""
    project = copy_built(built, tmp_path / "p")
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "results"], project)
    run([DVC, "exp", "run", "-n", "lr-sweep", "-S", "train.lr=0.002", "-S", "train.seed=3"],
        project, timeout=900)
    shown = json.loads(run([DVC, "exp", "show", "--json"], project).stdout)
    exps = [e for rev in shown for e in (rev.get("experiments") or [])]
    [exp] = [e for e in exps if e.get("name") == "lr-sweep"]
    data = exp["revs"][0]["data"]
    values = data["params"]["params.yaml"]["data"]
    assert values["train"]["lr"] == 0.002 and values["train"]["seed"] == 3
    assert values["train"]["epochs"] == BUILT["epochs"]  # the effective value
    assert "profiles" not in values and "profile" not in values
    assert data["metrics"]["metrics/unet.json"]["data"]["mean"]["iou"] >= 0


def test_parallel_repro_gives_the_sequential_results(built: Path, tmp_path: Path) -> None:
    """`mr2unet repro --jobs 2` (make demo): the networks' stages in two dvc processes at
    once, the same bytes as `dvc repro`, and nothing left to do afterwards."""
    project = copy_built(built, tmp_path / "p")
    out = run([str(BIN / "mr2unet"), "repro", "--jobs", "2", "--force"], project,
              timeout=900).stdout
    assert ran_stages(out) == {"download", "prepare", "train@unet", "train@mr2unet",
                               "evaluate@unet", "evaluate@mr2unet", "report", "promote"}
    assert "[mr2unet] Running stage 'train@mr2unet'" in out  # the costliest network first
    assert "[unet] Running stage 'evaluate@unet'" in out
    results = [*project.glob("metrics/*.json"), *project.glob("metrics/evaluation/*.json"),
               *project.glob("metrics/history/*.csv"), project / "data/prepared/manifest.csv"]
    assert len(results) >= 7
    for path in results:
        assert path.read_bytes() == (built / path.relative_to(project)).read_bytes(), path
    assert stale_stages(project) == set()


def test_remote_push_pull(built: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    run([DVC, "remote", "add", "-d", "local", str(remote)], built)
    run([DVC, "push"], built)
    run(["git", "add", "-A"], built)
    run(["git", "commit", "-qm", "results + remote"], built)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(built), str(clone)], tmp_path)
    assert not (clone / "data" / "models" / "unet.pt").exists()
    run([DVC, "pull"], clone)
    assert (clone / "data/models/unet.pt").read_bytes() == \
        (built / "data/models/unet.pt").read_bytes()
    assert run([DVC, "status", "--quiet"], clone).stdout.strip() == ""
    assert "Running stage" not in run([DVC, "repro"], clone).stdout


def test_queued_seed_sweep_with_two_workers(tmp_path: Path) -> None:
    """`dvc exp run --queue` x2 run by two workers: both experiments are recorded, their
    MLflow runs land in the repo's store (not in DVC's deleted temp workspaces), and
    `mr2unet spread` aggregates them."""
    mlflow = pytest.importorskip("mlflow")
    project = make_project(tmp_path / "p", ["unet"], tracking=True)
    for seed in (1, 2):
        run([DVC, "exp", "run", "--queue", "-S", f"train.seed={seed}",
             "-S", "run.cpu_threads=1"], project)
    run([DVC, "exp", "run", "--run-all", "-j", "2"], project, timeout=900)
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], project).stdout
    assert len([r for r in refs.split() if "/exec/" not in r]) == 2
    client = mlflow.MlflowClient(f"sqlite:///{project}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("mr2unet").experiment_id])
    assert sorted(r.data.params["train.seed"] for r in runs) == ["1", "2"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert len(list((project / "mlruns").rglob("MLmodel"))) == 2
    assert not list((project / ".dvc" / "tmp").rglob("mlflow.db"))
    run([str(BIN / "mr2unet"), "spread"], project)
    report = (project / "reports" / "seed_spread.md").read_text()
    assert "## 2 experiments (seeds 1, 2)" in report
    assert "| mean | " in report


def _checkpoint_epoch(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except (FileNotFoundError, RuntimeError, EOFError, KeyError):
        return 0


def test_killed_training_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    # enough epochs that the kill lands mid-run: at 8, a tiny U-Net's epochs after the
    # third went by between two polls of the checkpoint once the CPU routes sped it up
    epochs = 30
    reference = make_project(tmp_path / "ref", ["unet"])
    killed = make_project(tmp_path / "killed", ["unet"])
    for project in (reference, killed):
        set_param(project, "train.epochs", epochs)
        run([DVC, "repro", "prepare"], project, timeout=300)
    run([DVC, "repro", "train@unet"], reference, timeout=600)

    proc = subprocess.Popen([DVC, "repro", "train@unet"], cwd=killed, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    checkpoint = killed / "data/checkpoints/unet/last.pt"
    deadline = time.monotonic() + 300
    while _checkpoint_epoch(checkpoint) < 3 and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    interrupted_at = _checkpoint_epoch(checkpoint)
    assert 3 <= interrupted_at < epochs, "training finished before it could be killed"

    result = run([DVC, "repro", "train@unet"], killed, timeout=600)
    assert f"resuming unet from epoch {interrupted_at}" in result.stdout + result.stderr
    a = torch.load(reference / "data/models/unet.pt", weights_only=True)["state_dict"]
    b = torch.load(killed / "data/models/unet.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (reference / "metrics/history/unet.csv").read_text() == \
        (killed / "metrics/history/unet.csv").read_text()
    assert not checkpoint.exists()


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts: Path) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1 with ``backend_uri`` (conftest's, ready when its
    ``/health`` answers); yields its tracking URI."""
    port = free_port()
    server = start_mlflow_server(backend_uri, artifacts, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(server)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_training_against_a_local_mlflow_server(tmp_path: Path, backend: str) -> None:
    mlflow = pytest.importorskip("mlflow")
    project = make_project(tmp_path / "p", ["unet"], tracking=True)
    with contextlib.ExitStack() as stack:
        backend_uri = (stack.enter_context(postgres_cluster()) if backend == "postgresql"
                       else f"sqlite:///{tmp_path}/server.db")
        uri = stack.enter_context(mlflow_server(backend_uri, tmp_path / "artifacts"))
        env = {**ENV, "MLFLOW_TRACKING_URI": uri}
        run([DVC, "repro", "train@unet"], project, env=env, timeout=600)
        client = mlflow.MlflowClient(uri)
        version = client.get_model_version("mr2unet-unet", "1")
        run_info = yaml.safe_load((project / "data/models/unet.run.json").read_text())
        assert run_info["tracking_uri"] == uri and version.run_id == run_info["run_id"]
        assert client.get_run(version.run_id).info.status == "FINISHED"
        # the model's files went to the server's artifact store, nothing to the embedded one
        assert any((tmp_path / "artifacts").rglob("MLmodel"))
        assert not (project / "mlflow.db").exists()
        assert not (project / "mlruns").exists()
