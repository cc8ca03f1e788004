"""One MLflow run per trained model (:class:`TrainingTracker`): params, metrics, the model.

Nothing in the training core imports MLflow; the train stage uses this when
``tracking.enabled`` is true.  Which store, and how to write to it safely, is
:mod:`mr2unet.tracking.connection`; with a server, the outbox is sent by
:mod:`mr2unet.tracking.sync`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mr2unet.config.provenance import file_sha256, git_commit, torch_version
from mr2unet.errors import UserError
from mr2unet.models.checkpoint import read_checkpoint, stored_threshold
from mr2unet.tracking.connection import (
    default_artifact_location,
    first_line,
    locked_write,
    resolve_tracking_uri,
)
from mr2unet.tracking.outbox import Outbox
from mr2unet.tracking.probe import (
    bound_http_requests,
    check_reachable,
    is_remote,
    unreachable_message,
    unreachable_reason,
)
from mr2unet.tracking.sync import BackgroundSender, sync_outbox

log = logging.getLogger(__name__)
T = TypeVar("T")
# The prepare keys that the train stage reads (the network's input size and resize mode).
TRAIN_PREPARE_KEYS = ("image_size", "resize")
# ...and the keys that choose its mask threshold (pipeline/train.py, validation_meta)
THRESHOLD_KEYS = (("evaluate", "threshold"), ("split", "val_fraction"))

# At the end of training, how long the background sender may take to send what is queued.
SENDER_DRAIN_S = 15.0


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": "0.0001"}`` (MLflow params are strings)."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return flat


# --------------------------------------------------------------------- training runs


# An HTTP answer that means "not you", not "not there": 401 Unauthorized, 403 Forbidden.
REFUSED = ("error code 401", "error code 403")


class TrainingTracker:
    """One MLflow run per trained model: params, per-epoch metrics, model, registry.

    ``start`` opens (or, after an interrupted run, re-opens) the run, ``log_epoch`` is
    the training loop's ``on_epoch_end`` callback, ``finish`` logs the history and the
    model, registers it as a new version of ``<registry_prefix><arch>`` and returns the
    run info that the stage writes to ``data/models/<arch>.run.json``.

    With a tracking server (``http(s)://``) the tracker checks first that it answers (a
    UserError otherwise), then never waits on it: everything goes to the run's outbox
    (:mod:`mr2unet.tracking.outbox`), metrics are sent from a background thread, and
    ``finish`` sends the rest (:func:`mr2unet.tracking.sync.sync_outbox`). If the server
    went away, ``pending`` says why and the outbox waits for ``mr2unet tracking sync``.
    A local SQLite store is written directly, as it always was.
    """

    def __init__(self, params: dict[str, Any], arch: str, root: str | Path = ".") -> None:
        import mlflow  # lazy: optional dependency, needed only with tracking on

        self.params = params
        self.arch = arch
        self.root = Path(root)
        self.uri = resolve_tracking_uri(params, root)
        self.remote = is_remote(self.uri)
        self.outbox: Outbox | None = None
        self.sender: Any = None
        self.pending: str | None = None  # why the run's tracking is not complete yet
        if self.remote:
            bound_http_requests()
            check_reachable(self.uri)
        mlflow.set_tracking_uri(self.uri)
        name = params["tracking"]["experiment"]

        def connect() -> tuple[Any, str]:
            # The first connection creates and migrates a new SQLite store: one process
            # at a time, or concurrent migrations collide.
            client = mlflow.MlflowClient(self.uri)
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                return client, client.create_experiment(
                    name, artifact_location=default_artifact_location(self.uri))
            return client, experiment.experiment_id

        self.client, self.experiment_id = self._required(lambda: locked_write(self.uri, connect))
        self.run_id = ""

    def _required(self, fn: Callable[[], T]) -> T:
        """``fn()``; for a server, a failure is the one "does not answer" UserError."""
        if not self.remote:
            return fn()
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - MLflow and requests raise many types
            reason = first_line(exc)
            if any(code in reason for code in REFUSED):  # it answers: it said no
                raise UserError(f"the MLflow tracking server {self.uri} refused the request "
                                f"({reason}). Set MLFLOW_TRACKING_USERNAME and "
                                "MLFLOW_TRACKING_PASSWORD to a user of that server (docs/"
                                "deploy.md), or train without it: `tracking.enabled: false`."
                                ) from None
            raise UserError(unreachable_message(self.uri, reason)) from None

    def start(self, stage: str, resume_run_id: str | None = None,
              extra_tags: dict[str, str] | None = None) -> str:
        """Create the run (or reopen ``resume_run_id``) and log the stage's params."""
        if resume_run_id and self._run_exists(resume_run_id):
            self.run_id = resume_run_id
            self._required(lambda: locked_write(
                self.uri, lambda: self.client.update_run(self.run_id, "RUNNING")))
            log.info("MLflow: resuming run %s", self.run_id)
            if self.remote:
                self._open_outbox(stage=stage)
            return self.run_id
        tags = {
            "mlflow.source.git.commit": git_commit(self.root),
            "dvc.stage": stage,
            "arch": self.arch,
            "torch_version": torch_version(),
            **(extra_tags or {}),
        }
        run = self._required(lambda: locked_write(self.uri, lambda: self.client.create_run(
            self.experiment_id, run_name=f"train-{self.arch}", tags=tags)))
        self.run_id = run.info.run_id
        # The keys the train stage depends on (dvc.yaml); the data itself is identified by
        # the training split's digest (`data_sha256`, logged by finish()).
        stage_params: dict[str, Any] = {"prepare": {
            k: v for k, v in self.params["prepare"].items() if k in TRAIN_PREPARE_KEYS}}
        stage_params["train"] = {k: v for k, v in self.params["train"].items()
                                 if k not in ("model_options", "models")}
        stage_params["model_options"] = self.params["train"]["model_options"].get(self.arch) or {}
        # how it ran (device, threads, speed levers): no DVC dependency, logged for comparison
        stage_params["run"] = dict(self.params.get("run") or {})
        # how the mask threshold is chosen (its value: metric and tags `threshold`)
        for section, key in THRESHOLD_KEYS:
            if key in (self.params.get(section) or {}):
                stage_params.setdefault(section, {})[key] = self.params[section][key]
        flat = flatten(stage_params)
        if self.remote:
            self._open_outbox(stage=stage, params=flat, tags=tags)
            self.sender.put(lambda: self._log_params(flat))
        else:
            self._log_params(flat)
        return self.run_id

    def _open_outbox(self, **record: Any) -> None:
        self.outbox = Outbox.for_run(self.run_id, self.root, tracking_uri=self.uri,
                                     experiment_id=self.experiment_id, arch=self.arch,
                                     status=None, **record)
        self.sender = BackgroundSender(lambda send: send(), self._degraded)

    def _degraded(self, reason: str) -> None:
        log.warning("tracking degraded: the MLflow server %s stopped answering (%s). Training "
                    "continues; every metric is kept in %s and sent when the server answers "
                    "(end of this stage, or `mr2unet tracking sync`).", self.uri, reason,
                    self.outbox.directory if self.outbox else "the outbox")

    def _run_exists(self, run_id: str) -> bool:
        try:
            return self.client.get_run(run_id).info.experiment_id == self.experiment_id
        except Exception:  # noqa: BLE001 - a missing run raises MlflowException
            return False

    def _log_params(self, flat: dict[str, str]) -> None:
        from mlflow.entities import Param  # lazy: optional dependency

        items = [Param(k, v[:6000]) for k, v in sorted(flat.items())]
        for i in range(0, len(items), 100):  # MLflow accepts at most 100 params a batch
            chunk = items[i:i + 100]
            locked_write(self.uri, lambda c=chunk: self.client.log_batch(self.run_id, params=c))

    def log_metrics(self, values: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric  # lazy: optional dependency

        stamp = int(time.time() * 1000)
        metrics = [Metric(k, float(v), stamp, step or 0) for k, v in values.items()]
        if self.outbox is not None:  # a server: never wait on it (the class docstring)
            self.outbox.add_metrics((m.key, m.value, m.timestamp, m.step) for m in metrics)
            self.sender.put(lambda: self.client.log_batch(self.run_id, metrics=metrics))
            return
        locked_write(self.uri, lambda: self.client.log_batch(self.run_id, metrics=metrics))

    def set_tags(self, tags: dict[str, str]) -> None:
        """Tag the run, e.g. ``collapsed=true`` for a network that learned nothing."""
        if self.outbox is not None:  # sent by finish()
            self.outbox.update(tags=dict(tags))
            return
        for key, value in tags.items():
            locked_write(self.uri, lambda k=key, v=value: self.client.set_tag(self.run_id, k, v))

    def log_epoch(self, row: dict[str, float]) -> None:
        """``on_epoch_end`` callback: one MLflow step per epoch."""
        self.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))

    def finish(self, checkpoint: Path, history_csv: Path, data_file: Path,
               system: dict[str, Any]) -> dict[str, Any]:
        """Log artifacts and the model, register a version, close the run."""
        import mlflow  # lazy: optional dependency, needed only with tracking on

        from mr2unet.tracking.pyfunc import (  # lazy: pyfunc imports mlflow at load
            log_segmentation_model,
        )

        if self.outbox is not None:
            return self._finish_remote(checkpoint, history_csv, data_file, system)
        self.client.set_tag(self.run_id, "device", str(system.get("device", "")))
        locked_write(self.uri, lambda: self.client.log_artifact(self.run_id, str(history_csv)))
        name = f"{self.params['tracking']['registry_prefix']}{self.arch}"
        with mlflow.start_run(run_id=self.run_id):
            info = locked_write(self.uri, lambda: log_segmentation_model(checkpoint))
        version = locked_write(self.uri, lambda: mlflow.register_model(
            info.model_uri, name, tags=self._version_tags(checkpoint, data_file)))
        locked_write(self.uri, lambda: self.client.update_model_version(
            name, version.version,
            description=f"{self.arch} trained by run {self.run_id} ({system.get('device')})"))
        locked_write(self.uri, lambda: self.client.set_terminated(self.run_id, "FINISHED"))
        return {
            "tracking": True,
            "tracking_uri": self.uri,
            "experiment_id": self.experiment_id,
            "run_id": self.run_id,
            "model_uri": info.model_uri,
            "registered_model": name,
            "model_version": str(version.version),
        }

    def _version_tags(self, checkpoint: Path, data_file: Path) -> dict[str, str]:
        """The registered version's tags: provenance and the model's mask ``threshold``."""
        return {"git_commit": git_commit(self.root), "data_sha256": file_sha256(data_file),
                "arch": self.arch,
                "threshold": f"{stored_threshold(read_checkpoint(checkpoint)):g}"}

    def _finish_remote(self, checkpoint: Path, history_csv: Path, data_file: Path,
                       system: dict[str, Any]) -> dict[str, Any]:
        """Record the end of the run in the outbox, then send it all if the server answers."""
        assert self.outbox is not None
        name = f"{self.params['tracking']['registry_prefix']}{self.arch}"
        self.outbox.update(status="FINISHED", tags={"device": str(system.get("device", ""))},
                           model={
            "checkpoint": self.outbox.attach(checkpoint),
            "history": self.outbox.attach(history_csv),
            "registered_model": name,
            "version_tags": self._version_tags(checkpoint, data_file),
            "description": f"{self.arch} trained by run {self.run_id} ({system.get('device')})",
        })
        info: dict[str, Any] = {
            "tracking": True, "tracking_uri": self.uri, "experiment_id": self.experiment_id,
            "run_id": self.run_id, "model_uri": None, "registered_model": name,
            "model_version": None}
        if not self.sender.close(SENDER_DRAIN_S):
            self.pending = f"a request was still waiting after {SENDER_DRAIN_S:.0f} s"
        else:
            self.pending = unreachable_reason(self.uri)
        if self.pending is None:
            try:
                result = sync_outbox(self.outbox)
            except Exception as exc:  # noqa: BLE001 - the outputs must be written anyway
                self.pending = first_line(exc)
            else:
                info.update(model_uri=result.model_uri, model_version=result.version)
        return info

    def pending_message(self) -> str:
        """What was not tracked and how to send it (when ``pending`` is set)."""
        box = self.outbox.directory if self.outbox else "data/tracking/pending"
        return (f"tracking incomplete: the MLflow server {self.uri} did not answer at the end "
                f"of training {self.arch} ({self.pending}). Run {self.run_id} lacks what the "
                "server missed (metrics since it went away, final tags, the model and its "
                f"registry entry); all of it is kept in {box}. The model file and history are "
                "written, so `dvc repro` will not retrain: start the server and run "
                "`mr2unet tracking sync` (the evaluate and report stages also send it once "
                "the server answers).")

    def fail(self) -> None:
        if not self.run_id:
            return
        if self.outbox is not None:  # best effort, bounded: the outbox keeps the status
            self.outbox.update(status="FAILED")
            self.sender.close(timeout_s=1.0)
            if unreachable_reason(self.uri, timeout_s=2.0) is None:
                try:
                    self.client.set_terminated(self.run_id, "FAILED")
                except Exception as exc:  # noqa: BLE001
                    log.warning("could not mark run %s FAILED: %s", self.run_id, exc)
            return
        locked_write(self.uri, lambda: self.client.set_terminated(self.run_id, "FAILED"))
