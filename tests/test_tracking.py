"""The MLflow layer: URI resolution, runs, registry, pyfunc loading, concurrent writers."""

from __future__ import annotations

import multiprocessing
import pickletools
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mr2unet.tracking.runs import flatten, resolve_tracking_uri

mlflow = pytest.importorskip("mlflow")


def params_for(uri: str) -> dict:
    return {
        "data": {"source": "synthetic"},
        "split": {"test_fraction": 0.2, "seed": 1},
        "prepare": {"image_size": 32},
        "train": {"epochs": 2, "lr": 0.001, "models": ["unet"],
                  "model_options": {"unet": {}}},
        "tracking": {"enabled": True, "uri": uri, "experiment": "test-exp",
                     "registry_prefix": "mr2unet-"},
    }


def test_uri_precedence(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri({"tracking": {"uri": None}}, tmp_path) == \
        f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri({"tracking": {"uri": None}}, tmp_path) == "http://127.0.0.1:5000"
    assert resolve_tracking_uri({"tracking": {"uri": "sqlite:///x.db"}}, tmp_path) == \
        "sqlite:///x.db"


def test_a_dvc_experiment_workspace_tracks_into_its_repo(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workspace = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpk2x9"
    workspace.mkdir(parents=True)
    assert resolve_tracking_uri({"tracking": {"uri": None}}, workspace) == \
        f"sqlite:///{(tmp_path / 'repo').resolve()}/mlflow.db"


def test_default_artifact_location(monkeypatch, tmp_path) -> None:
    from mr2unet.tracking.runs import default_artifact_location

    monkeypatch.chdir(tmp_path)
    assert default_artifact_location(f"sqlite:///{tmp_path}/sub/m.db") == \
        (tmp_path / "sub" / "mlruns").resolve().as_uri()
    assert default_artifact_location("sqlite:///m.db") == (tmp_path / "mlruns").resolve().as_uri()
    assert default_artifact_location("http://127.0.0.1:5000") is None


@pytest.mark.slow
def test_queued_experiment_runs_land_in_the_repo_store(monkeypatch, tmp_path) -> None:
    """A run started in DVC's temporary workspace keeps its record and its artifacts in
    the repository's store, which outlives the workspace."""
    from mr2unet.tracking.runs import TrainingTracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    repo = tmp_path / "repo"
    workspace = repo / ".dvc" / "tmp" / "exps" / "tmpk2x9"
    workspace.mkdir(parents=True)
    monkeypatch.chdir(workspace)
    params = params_for(None)
    tracker = TrainingTracker(params, "unet")
    run_id = tracker.start("train@unet")
    tracker.client.log_text(run_id, "hello", "note.txt")
    assert (repo / "mlflow.db").is_file() and not (workspace / "mlflow.db").exists()
    assert not (workspace / "mlruns").exists()
    assert [p.read_text() for p in (repo / "mlruns").rglob("note.txt")] == ["hello"]
    # The experiment, created once, is found again from the main workspace.
    monkeypatch.chdir(repo)
    assert TrainingTracker(params, "unet").experiment_id == tracker.experiment_id


def test_flatten() -> None:
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": {}}) == \
        {"a.b": "1", "a.c": "[1, 2]", "d": "None", "e": "{}"}


@pytest.mark.slow
def test_training_run_is_logged_registered_and_loadable(tmp_path, monkeypatch) -> None:
    from mr2unet.models import build_model
    from mr2unet.models.checkpoint import save_model
    from mr2unet.tracking.runs import TrainingTracker

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    params = params_for(uri)
    model = build_model("unet", base_width=4)
    ckpt = tmp_path / "unet.pt"
    save_model(ckpt, model, "unet", {"base_width": 4}, image_size=32)
    history = tmp_path / "unet.csv"
    history.write_text("epoch,loss\n1,0.5\n")
    data = tmp_path / "train.npz"
    data.write_bytes(b"data")

    tracker = TrainingTracker(params, "unet", root=tmp_path)
    run_id = tracker.start("train@unet")
    tracker.log_epoch({"epoch": 1, "loss": 0.7, "train_iou": 0.1})
    tracker.log_epoch({"epoch": 2, "loss": 0.5, "train_iou": 0.3})
    info = tracker.finish(ckpt, history, data, system={"device": "cpu"})

    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.001"
    assert run.data.tags["dvc.stage"] == "train@unet"
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [0.7, 0.5]
    assert info["registered_model"] == "mr2unet-unet" and info["model_version"] == "1"
    version = client.get_model_version("mr2unet-unet", "1")
    assert version.run_id == run_id
    assert version.tags["data_sha256"] == \
        "3a6eb0790f39ac87c94f3856b2dd2c5d110e6811602261a9a923d3bb23adc8b7"

    pyfunc = mlflow.pyfunc.load_model("models:/mr2unet-unet/1")
    images = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    masks = pyfunc.predict(images)
    assert masks.shape == (3, 32, 32) and masks.dtype == np.uint8
    assert pyfunc.predict(images[:1]).shape == (1, 32, 32)
    with torch.inference_mode():
        expected = model.eval()(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    assert np.array_equal(masks, expected.argmax(1).numpy())
    probs = pyfunc.predict(images, params={"output": "probabilities"})
    assert probs.dtype == np.float32 and probs.shape == (3, 32, 32)
    np.testing.assert_allclose(probs, expected.softmax(1)[:, 1].numpy(), atol=1e-6)
    for t in (0.2, 0.7):
        assert np.array_equal(pyfunc.predict(images, params={"threshold": t}),
                              (probs > t).astype(np.uint8))
    declared = {p.name: p.default for p in pyfunc.metadata.signature.params.params}
    assert declared == {"output": "mask", "threshold": 0.5, "encoding": "array"}
    for bad in ({"output": "logits"}, {"threshold": 1.5}):
        with pytest.raises(mlflow.exceptions.MlflowException, match="output|threshold"):
            pyfunc.predict(images, params=bad)

    # An interrupted stage re-opens the same run instead of starting another.
    again = TrainingTracker(params, "unet", root=tmp_path)
    assert again.start("train@unet", resume_run_id=run_id) == run_id
    assert again.start("train@unet", resume_run_id="0" * 32) != run_id


def pickle_globals(data: bytes) -> set[str]:
    """The ``module.name`` globals a pickle stream imports when loaded."""
    names: set[str] = set()
    strings: list[str] = []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("GLOBAL", "INST"):
            names.add(str(arg).replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            names.add(".".join(strings[-2:]))
        elif isinstance(arg, str):
            strings.append(arg)
    return names


def is_pickle(data: bytes) -> bool:
    if not data.startswith(b"\x80"):  # protocol 2+ (what cloudpickle and torch.save write)
        return False
    try:
        pickle_globals(data)
    except Exception:  # noqa: BLE001 - not a well-formed pickle stream
        return False
    return True


def test_the_pickle_scan_sees_a_pickled_python_model() -> None:
    """What the no-pickle test guards against: a cloudpickled pyfunc names code to import."""
    import cloudpickle

    from mr2unet.tracking.pyfunc import SegmentationModel

    data = cloudpickle.dumps(SegmentationModel())
    assert is_pickle(data) and not is_pickle(b"import os")
    assert "mr2unet.tracking.pyfunc.SegmentationModel" in pickle_globals(data)


@pytest.mark.slow
def test_the_logged_model_holds_no_pickled_code(tmp_path, monkeypatch) -> None:
    """Models from code: source files and a weights-only checkpoint, nothing that runs
    pickled bytes; it still loads and predicts through mlflow.pyfunc.load_model."""
    from mr2unet.models import build_model
    from mr2unet.models.checkpoint import save_model
    from mr2unet.tracking.pyfunc import log_segmentation_model

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    save_model(tmp_path / "unet.pt", build_model("unet", base_width=4), "unet",
               {"base_width": 4}, image_size=32)
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("t", (tmp_path / "artifacts").as_uri())
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(experiment_id=experiment):
            info = log_segmentation_model(tmp_path / "unet.pt")
        local = Path(mlflow.artifacts.download_artifacts(info.model_uri,
                                                         dst_path=str(tmp_path / "dl")))
        files = [p for p in local.rglob("*") if p.is_file()]
        names = {p.relative_to(local).as_posix() for p in files}
        assert {"MLmodel", "model_code.py", "artifacts/unet.pt",
                "code/mr2unet/tracking/pyfunc.py"} <= names
        assert not [n for n in names if n.endswith((".pkl", ".pyc")) or "__pycache__" in n]
        flavor = mlflow.models.Model.load(local / "MLmodel").flavors["python_function"]
        assert "python_model" not in flavor and flavor["model_code_path"].endswith("model_code.py")
        assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
        # The only pickle is the checkpoint's tensor table; its globals are torch's tensor
        # rebuilders, and torch's weights-only unpickler accepts it.
        pickled = {}
        for path in files:
            if zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as zf:
                    for member in zf.namelist():
                        data = zf.read(member)
                        if is_pickle(data):
                            pickled[f"{path.name}/{member}"] = pickle_globals(data)
            elif is_pickle(path.read_bytes()):
                pickled[path.name] = pickle_globals(path.read_bytes())
        assert len(pickled) == 1
        (member, names), = pickled.items()
        assert member.startswith("unet.pt/") and member.endswith("/data.pkl")
        assert "torch._utils._rebuild_tensor_v2" in names  # the scan does see globals
        assert names <= {
            "collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch.FloatStorage",
            "torch.LongStorage"}
        torch.load(local / "artifacts/unet.pt", weights_only=True)
        model = mlflow.pyfunc.load_model(str(local))
        images = np.random.default_rng(1).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
        assert model.predict(images).shape == (2, 32, 32)
    finally:
        mlflow.set_tracking_uri(None)


def _hammer(args: tuple[str, int]) -> str:
    from mr2unet.tracking.runs import TrainingTracker

    uri, worker = args
    tracker = TrainingTracker(params_for(uri), f"arch{worker}")
    tracker.start(f"train@arch{worker}")
    for epoch in range(1, 16):
        tracker.log_epoch({"epoch": epoch, "loss": 1.0 / epoch})
    return tracker.run_id


@pytest.mark.slow
def test_concurrent_writers_do_not_fail(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        run_ids = pool.map(_hammer, [(uri, i) for i in range(4)])
    client = mlflow.MlflowClient(uri)
    assert len(set(run_ids)) == 4
    for run_id in run_ids:
        assert len(client.get_metric_history(run_id, "loss")) == 15


def test_lock_file_sits_beside_the_database(tmp_path) -> None:
    from mr2unet.tracking.connection import store_lock

    uri = f"sqlite:///{tmp_path}/sub/mlflow.db"
    with store_lock(uri):
        assert Path(f"{tmp_path}/sub/mlflow.db.lock").exists()
    with store_lock("http://127.0.0.1:1"):
        pass


def test_logged_model_id_from_a_rest_model_version() -> None:
    """Through a server's REST API a version's model_id is None; its source names it."""
    from types import SimpleNamespace

    from mr2unet.tracking.registry import logged_model_id

    assert logged_model_id(SimpleNamespace(model_id=None, source="models:/m-abc")) == "m-abc"
    assert logged_model_id(SimpleNamespace(model_id="m-x", source="models:/m-abc")) == "m-x"
    assert logged_model_id(SimpleNamespace(model_id=None, source="models:/name/1")) is None
    assert logged_model_id(SimpleNamespace(model_id=None, source="runs:/r/model")) is None
