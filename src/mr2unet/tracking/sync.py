"""Send a run's outbox (:mod:`mr2unet.tracking.outbox`) to its tracking server.

:class:`BackgroundSender` sends metrics while training runs, from a thread, so that the
loop never waits on the server; the first failure logs one warning and it stops trying.
:func:`sync_outbox` sends whatever the server does not have yet, comparing with what it
has, so it is idempotent: a metric value (key, step, timestamp) already there, a param,
a tag, the logged model of the run or its registered version is never sent twice.
:func:`sync_pending` is ``mr2unet tracking sync``; :func:`catch_up` lets a later stage send
what an earlier one could not, once the server answers.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mr2unet.config.workspace import file_lock
from mr2unet.tracking.connection import client as store_client
from mr2unet.tracking.connection import first_line, process_tracking_uri
from mr2unet.tracking.outbox import Outbox, pending
from mr2unet.tracking.probe import bound_http_requests, check_reachable

log = logging.getLogger(__name__)

MODEL_NAME = "model"  # the name the run's logged model has (pyfunc.log_segmentation_model)
PARAMS_PER_BATCH = 100  # MLflow's limits per log_batch
METRICS_PER_BATCH = 500


class BackgroundSender:
    """Call ``send(batch)`` for each queued batch in a daemon thread, until one fails.

    After the first failure ``degraded`` holds its reason, ``on_failure`` is called once
    and later batches are dropped (the outbox keeps them for :func:`sync_outbox`).
    """

    def __init__(self, send: Callable[[Any], None],
                 on_failure: Callable[[str], None]) -> None:
        self._send, self._on_failure = send, on_failure
        self._queue: queue.Queue[Any] = queue.Queue()
        self.degraded: str | None = None
        self._thread = threading.Thread(target=self._work, name="mlflow-sender", daemon=True)
        self._thread.start()

    def put(self, batch: Any) -> None:
        if self.degraded is None:
            self._queue.put(batch)

    def _work(self) -> None:
        while (batch := self._queue.get()) is not None:
            if self.degraded is not None:
                continue
            try:
                self._send(batch)
            except Exception as exc:  # noqa: BLE001 - any failure means "server gone"
                self.degraded = first_line(exc)
                self._on_failure(self.degraded)

    def close(self, timeout_s: float) -> bool:
        """Send what is queued (at most ``timeout_s``); False if a request still hangs."""
        self._queue.put(None)
        self._thread.join(timeout_s)
        return not self._thread.is_alive()


@dataclass
class SyncResult:
    """What :func:`sync_outbox` sent for one run."""

    run_id: str
    arch: str = ""
    params: int = 0
    tags: int = 0
    metrics: int = 0
    model_logged: bool = False
    model_uri: str | None = None
    registered_model: str | None = None
    version: str | None = None
    version_created: bool = False
    still_open: bool = False  # its stage has not ended (running, or killed): left alone

    def summary(self) -> str:
        if self.still_open:
            return (f"run {self.run_id} ({self.arch}): its training stage has not ended "
                    "(still running, or interrupted): run the stage again to finish it")
        sent = [f"{n} {what}" for n, what in ((self.metrics, "metric values"),
                                              (self.params, "params"), (self.tags, "tags"))
                if n]
        if self.model_logged:
            sent.append("the model")
        if self.version_created:
            sent.append(f"registry version {self.registered_model}/{self.version}")
        return (f"run {self.run_id} ({self.arch}): "
                + (f"sent {', '.join(sent)}" if sent else "the server had everything"))


def _missing_metrics(client: Any, run_id: str, rows: list[dict[str, Any]]) -> list[Any]:
    """The outbox's metric values that the run's history on the server lacks."""
    from mlflow.entities import Metric  # lazy: optional dependency

    have: dict[str, set[tuple[int, int, str]]] = {}
    missing = []
    for row in rows:
        key = row["key"]
        if key not in have:
            have[key] = {(m.step, m.timestamp, repr(float(m.value)))
                         for m in client.get_metric_history(run_id, key)}
        ident = (int(row["step"]), int(row["timestamp"]), repr(float(row["value"])))
        if ident not in have[key]:
            have[key].add(ident)
            missing.append(Metric(key, float(row["value"]), ident[1], ident[0]))
    return missing


def _ready_logged_model(client: Any, experiment_id: str, run_id: str) -> Any:
    """The run's logged model whose files were all uploaded, or None."""
    found = client.search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_NAME}'")
    ready = [m for m in found if str(m.status) == "READY"]
    return ready[0] if ready else None


def _sync_model(client: Any, record: dict[str, Any], result: SyncResult) -> None:
    """Log the run's model and register it, each unless the server has it already."""
    import mlflow  # lazy: optional dependency, needed only with tracking on

    from mr2unet.tracking.pyfunc import (  # lazy: pyfunc imports mlflow at load
        log_segmentation_model,
    )

    model, run_id, uri = record["model"], record["run_id"], record["tracking_uri"]
    client.log_artifact(run_id, model["history"])  # same path: replaced, not duplicated
    logged = _ready_logged_model(client, record["experiment_id"], run_id)
    with process_tracking_uri(uri):
        if logged is None:
            with mlflow.start_run(run_id=run_id):
                result.model_uri = log_segmentation_model(Path(model["checkpoint"])).model_uri
            result.model_logged = True
        else:
            result.model_uri = f"models:/{logged.model_id}"
        name = result.registered_model = model["registered_model"]
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        if versions:
            version = str(max(int(v.version) for v in versions))
        else:
            version = str(mlflow.register_model(result.model_uri, name,
                                                tags=model["version_tags"]).version)
            result.version_created = True
    client.update_model_version(name, version, description=model["description"])
    result.version = version


def sync_outbox(box: Outbox) -> SyncResult:
    """Send what the server lacks of ``box``'s run; remove ``box`` once its run has ended.

    Raises what MLflow raises when the server fails; the outbox is then left as it was
    (minus nothing: it is only removed after everything arrived).
    """
    from mlflow.entities import Param, RunTag  # lazy: optional dependency

    bound_http_requests()
    with file_lock(box.lock_path):
        record = box.record()
        result = SyncResult(run_id=box.directory.name, arch=record.get("arch", ""))
        if not record:  # another process synced it meanwhile
            return result
        uri, run_id = record["tracking_uri"], record["run_id"]
        client = store_client(uri)
        run = client.get_run(run_id)
        params = [Param(k, v[:6000]) for k, v in sorted(record.get("params", {}).items())
                  if k not in run.data.params]
        for i in range(0, len(params), PARAMS_PER_BATCH):
            client.log_batch(run_id, params=params[i:i + PARAMS_PER_BATCH])
        tags = [RunTag(k, v) for k, v in sorted(record.get("tags", {}).items())
                if run.data.tags.get(k) != v]
        if tags:
            client.log_batch(run_id, tags=tags)
        metrics = _missing_metrics(client, run_id, box.metrics())
        for i in range(0, len(metrics), METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=metrics[i:i + METRICS_PER_BATCH])
        result.params, result.tags, result.metrics = len(params), len(tags), len(metrics)
        status = record.get("status")
        if not status:
            result.still_open = True
            return result
        if record.get("model"):
            _sync_model(client, record, result)
        if client.get_run(run_id).info.status != status:
            client.set_terminated(run_id, status)
        box.remove()
    box.lock_path.unlink(missing_ok=True)
    log.info("MLflow: %s", result.summary())
    return result


def sync_pending(root: str | Path = ".") -> list[SyncResult]:
    """``mr2unet tracking sync``: send every outbox of the project whose server answers.

    A server that does not answer is a UserError naming it (nothing else is tried).
    """
    results = []
    for box in pending(root):
        record = box.record()
        if not record.get("status"):
            results.append(SyncResult(run_id=box.directory.name, arch=record.get("arch", ""),
                                      still_open=True))
            continue
        check_reachable(record["tracking_uri"])
        results.append(sync_outbox(box))
    return results


def catch_up(uri: str, root: str | Path = ".") -> None:
    """For a stage that uses ``uri``: fail fast when it does not answer, then send the
    outboxes of ended runs on it (a failure there is a warning: ``mr2unet tracking sync``)."""
    bound_http_requests()
    check_reachable(uri)
    for box in pending(root):
        record = box.record()
        if record.get("tracking_uri") != uri or not record.get("status"):
            continue
        try:
            sync_outbox(box)
        except Exception as exc:  # noqa: BLE001 - the stage's own work does not depend on it
            log.warning("could not send the pending tracking of run %s (%s): run "
                        "`mr2unet tracking sync` later", box.directory.name, first_line(exc))
