"""The connection to the MLflow store: which store, a client, and safe writes to it.

The leaf of :mod:`mr2unet.tracking`: :mod:`~.runs`, :mod:`~.sync` and :mod:`~.registry`
import it, it imports none of them.

- :func:`resolve_tracking_uri`: ``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else the
  embedded ``sqlite:///<repo>/mlflow.db`` with artifacts in ``mlruns/`` beside it (a
  queued DVC experiment's temporary copy of the workspace resolves to the same file,
  :func:`mr2unet.config.workspace.project_root`);
- :func:`client`: an ``MlflowClient`` whose tracking and registry are both that store;
- :func:`locked_write`: one write under the store's file lock (:func:`store_lock`),
  retried with back-off while SQLite still says "locked" (:func:`with_retry`);
- :func:`process_tracking_uri`: MLflow's process-wide URI pointed at the store for a block;
- :func:`first_line`: a one-line description of an MLflow or HTTP failure.

MLflow is imported inside the functions that need it (it is optional: ``mr2unet predict``
on a ``.pt`` file and the tests without tracking run without it).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from mr2unet.config.workspace import file_lock, project_root

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlruns"


def resolve_tracking_uri(params: dict[str, Any], root: str | Path = ".") -> str:
    """The tracking URI: ``tracking.uri``, ``$MLFLOW_TRACKING_URI`` or the repo's SQLite file."""
    uri = params.get("tracking", {}).get("uri") or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return str(uri)
    return f"sqlite:///{(project_root(root) / DEFAULT_DB).as_posix()}"


def default_artifact_location(uri: str) -> str | None:
    """``mlruns/`` beside a local SQLite store, as a URI; None (the server decides) otherwise.

    Set explicitly when the experiment is created, because MLflow's own default is
    ``./mlruns`` under whatever directory the first run happened to start in.
    """
    if not uri.startswith("sqlite:///"):
        return None
    # A relative database path is relative to the working directory, as for SQLAlchemy.
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / DEFAULT_ARTIFACTS).as_uri()


def client(uri: str) -> Any:
    """An ``MlflowClient`` on ``uri`` for both tracking and the model registry."""
    import mlflow  # lazy: optional dependency (see the module docstring)

    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def first_line(exc: BaseException) -> str:
    """A short description of an MLflow/requests failure (they run to pages)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def with_retry(fn: Callable[[], T], attempts: int = 8, base_delay: float = 0.5) -> T:
    """Call ``fn``, retrying with jittered back-off while SQLite reports a lock.

    Several DVC stages (``dvc exp run --queue`` workers) may write one SQLite store at
    once; SQLite serialises writers and the losers see "database is locked".
    """
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if "locked" not in str(exc).lower() or attempt == attempts - 1:
                raise
            delay = base_delay * (2**attempt) * (0.5 + random.random())
            log.warning("tracking store busy (%s); retrying in %.1fs", exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise writers of one SQLite store across processes (no-op for servers).

    SQLite allows one writer at a time; holding an ``flock`` beside the database while
    writing turns "database is locked" failures into a short wait.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    with file_lock(Path(uri.removeprefix("sqlite:///") + ".lock")):
        yield


def locked_write(uri: str, fn: Callable[[], T]) -> T:
    """Run one write to the store under :func:`store_lock`, retrying if still locked."""
    def attempt() -> T:
        with store_lock(uri):
            return fn()

    return with_retry(attempt)


@contextmanager
def process_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking URI at ``uri`` for the ``with`` block.

    MLflow's SQL registry resolves a ``models:/m-...`` source through the process-wide
    tracking URI, not the client's (a TODO in MLflow's ``create_model_version``). Its
    default, ``./mlflow.db``, is the project's store only when the stage runs in the repo
    root, not in a queued DVC experiment's temporary workspace. ``set_tracking_uri`` also
    sets ``$MLFLOW_TRACKING_URI``; afterwards both go back to what that variable said.
    """
    import mlflow  # lazy: optional dependency (see the module docstring)

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # type: ignore[arg-type]  # None unsets
