"""`mr2unet tracking sync` on the outboxes a training stage leaves when its server went
away (mr2unet.tracking.outbox, mr2unet.tracking.sync), against a store that is back.

The store is a SQLite file (the sync code speaks to it through the same MlflowClient calls
as to a server; `mr2unet tracking sync` only probes http(s) URIs first). Each outbox is
written as the train stage writes it (tracking.runs.TrainingTracker with a server: the
record's fields, one metric per line, copies of the model file and history); the server
already holds what the background sender delivered before the outage.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port
from helpers import briefly_trained

from mr2unet.cli import main
from mr2unet.models.checkpoint import save_model
from mr2unet.tracking.outbox import Outbox, pending

mlflow = pytest.importorskip("mlflow")

NAME = "mr2unet-unet"
EPOCHS = 4


def server(tmp_path: Path) -> tuple[str, Any, str]:
    """A store with the experiment training created: (uri, client, experiment id)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri, uri)
    experiment = client.create_experiment("mr2unet", (tmp_path / "mlruns").as_uri())
    return uri, client, experiment


def outbox(root: Path, uri: str, experiment: str, run_id: str, status: str | None,
           model: bool = True) -> Outbox:
    """The outbox of run ``run_id`` as training leaves it: params, tags, EPOCHS losses
    (timestamps 1000 x step), and when finished the model and its registry entry."""
    box = Outbox.for_run(run_id, root, tracking_uri=uri, experiment_id=experiment,
                         arch="unet", status=None, stage="train@unet",
                         params={"train.lr": "0.003", "train.epochs": str(EPOCHS)},
                         tags={"arch": "unet"})
    box.add_metrics(("loss", 1.0 / step, 1000 * step, step) for step in range(1, EPOCHS + 1))
    if status is None:
        return box
    fields: dict[str, Any] = {"status": status, "tags": {"device": "cpu", "collapsed": "false"}}
    if model:
        checkpoint = root / "unet.pt"
        save_model(checkpoint, briefly_trained("unet", size=32, steps=1, width=4), "unet",
                   {"base_width": 4}, 32)
        history = root / "unet.csv"
        history.write_text("epoch,loss\n" + "".join(f"{s},{1.0 / s}\n"
                                                    for s in range(1, EPOCHS + 1)))
        fields["model"] = {"checkpoint": box.attach(checkpoint), "history": box.attach(history),
                           "registered_model": NAME,
                           "version_tags": {"arch": "unet", "threshold": "0.5"},
                           "description": f"unet trained by run {run_id} (cpu)"}
    box.update(**fields)
    return box


def started_run(client: Any, experiment: str) -> str:
    """A run as the server has it when it went away after two epochs' metrics."""
    from mlflow.entities import Metric, Param

    run_id = client.create_run(experiment, run_name="train-unet").info.run_id
    client.log_batch(run_id, params=[Param("train.lr", "0.003")],
                     metrics=[Metric("loss", 1.0 / s, 1000 * s, s) for s in (1, 2)])
    return run_id


def sync(root: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["tracking", "sync", "--repo", str(root)]) == 0
    return capsys.readouterr().out


@pytest.mark.slow  # logs and registers a model (about 10 s)
def test_sync_sends_what_the_server_lacks_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    uri, client, experiment = server(tmp_path)
    run_id = started_run(client, experiment)
    box = outbox(tmp_path, uri, experiment, run_id, "FINISHED")

    out = sync(tmp_path, capsys)
    # the two epochs the server missed, the epochs param, three tags, the model, a version
    assert f"run {run_id} (unet): sent 2 metric values, 1 params, 3 tags, the model, " \
           f"registry version {NAME}/1" in out
    history = client.get_metric_history(run_id, "loss")
    assert sorted((m.step, m.timestamp) for m in history) == \
        [(s, 1000 * s) for s in range(1, EPOCHS + 1)]  # each once
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params == {"train.lr": "0.003", "train.epochs": str(EPOCHS)}
    assert {k: got.data.tags[k] for k in ("arch", "device", "collapsed")} == {
        "arch": "unet", "device": "cpu", "collapsed": "false"}
    [version] = client.search_model_versions(f"name = '{NAME}'")
    assert version.run_id == run_id and version.tags == {"arch": "unet", "threshold": "0.5"}
    assert version.description == f"unet trained by run {run_id} (cpu)"
    assert not box.directory.exists() and pending(tmp_path) == []
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    finally:
        mlflow.set_tracking_uri(None)
    assert model.metadata.run_id == run_id  # a loadable model of that run

    again = sync(tmp_path, capsys)
    assert "nothing to sync" in again
    assert len(client.get_metric_history(run_id, "loss")) == EPOCHS
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 1


@pytest.mark.slow  # logs and registers a model (about 10 s)
def test_a_sync_cut_off_after_registering_does_not_register_twice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The outbox is removed only once everything arrived: a second sync of a box whose
    model and version the server already has (the first was cut off before the removal)
    sends neither again."""
    monkeypatch.chdir(tmp_path)
    uri, client, experiment = server(tmp_path)
    run_id = started_run(client, experiment)
    box = outbox(tmp_path, uri, experiment, run_id, "FINISHED")
    sync(tmp_path, capsys)
    assert not box.directory.exists()
    box = outbox(tmp_path, uri, experiment, run_id, "FINISHED")  # as if never removed
    out = sync(tmp_path, capsys)
    assert f"run {run_id} (unet): the server had everything" in out
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 1
    assert len(client.get_metric_history(run_id, "loss")) == EPOCHS
    assert not box.directory.exists()


def test_an_open_run_is_left_alone_and_a_failed_one_is_marked_failed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A box whose stage has not ended (still training, or killed) is neither sent nor
    removed; one whose stage failed gets its metrics and the status FAILED, no model."""
    monkeypatch.chdir(tmp_path)
    uri, client, experiment = server(tmp_path)
    still_open = started_run(client, experiment)
    failed = started_run(client, experiment)
    outbox(tmp_path, uri, experiment, still_open, None)
    time.sleep(0.01)  # the failed one is newer: sent second
    outbox(tmp_path, uri, experiment, failed, "FAILED", model=False)

    out = sync(tmp_path, capsys)
    assert f"run {still_open} (unet): its training stage has not ended" in out
    assert len(client.get_metric_history(still_open, "loss")) == 2  # nothing sent
    assert client.get_run(still_open).info.status == "RUNNING"
    assert [b.directory.name for b in pending(tmp_path)] == [still_open]
    assert f"run {failed} (unet): sent 2 metric values" in out
    assert client.get_run(failed).info.status == "FAILED"
    assert len(client.get_metric_history(failed, "loss")) == EPOCHS
    assert client.search_model_versions(f"name = '{NAME}'") == []


def test_a_server_still_down_is_one_error_and_the_outbox_stays(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"http://127.0.0.1:{free_port()}"
    box = outbox(tmp_path, uri, "1", "r1", "FAILED", model=False)
    start = time.monotonic()
    assert main(["tracking", "sync", "--repo", str(tmp_path)]) == 2
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err
    assert f"the MLflow tracking server {uri} does not answer" in err
    assert box.exists() and box.metrics()[-1]["step"] == EPOCHS
