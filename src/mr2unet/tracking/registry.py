"""The MLflow side of evaluation: test metrics on runs and versions, aliases, model URIs.

After the report stage:

- ``models:/<prefix><arch>@champion`` / ``@challenger`` exist on the per-architecture
  registered models of the best and second-best architectures (by mean test IOU);
- ``models:/<prefix>best@champion`` (and ``@challenger``) always name the best (second)
  model whatever its architecture: the winners' versions are mirrored into the one
  registered model ``<prefix>best``.

MLflow is imported inside the functions, so importing this module (e.g. from
``mr2unet predict`` with a ``.pt`` path) does not need it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mr2unet.errors import UserError
from mr2unet.evaluation.verdict import rank_models
from mr2unet.models import MODEL_NAMES
from mr2unet.tracking.connection import client as store_client
from mr2unet.tracking.connection import locked_write, process_tracking_uri

log = logging.getLogger(__name__)

BEST_SUFFIX = "best"
SOURCE_TAG = "source_version"


# ----------------------------------------------------------------------- test metrics


def with_version(run_info: dict[str, Any]) -> dict[str, Any]:
    """``run_info`` with its registered version, looked up by run id when the train stage
    could not register it (the server was down at its end; ``mr2unet tracking sync``)."""
    if not run_info.get("tracking") or run_info.get("model_version"):
        return run_info
    name, run_id = run_info["registered_model"], run_info["run_id"]
    found = store_client(run_info["tracking_uri"]).search_model_versions(
        f"name = '{name}' and run_id = '{run_id}'")
    if not found:
        raise UserError(f"the model of run {run_id} is not in the registry ({name}) yet: the "
                        "tracking server was down when its training ended. Run `mr2unet "
                        "tracking sync` once the server answers, then `dvc repro` again.")
    return {**run_info, "model_version": str(max(int(v.version) for v in found))}


def log_evaluation(run_info: dict[str, Any], metrics: dict[str, float],
                   tags: dict[str, str] | None = None) -> None:
    """Add test metrics to the model's training run and as tags on its registered version;
    ``tags`` (e.g. the verdict) go on both as they are."""
    from mlflow.entities import Metric  # lazy: optional dependency (module docstring)

    run_info = with_version(run_info)
    uri = run_info["tracking_uri"]
    client = store_client(uri)
    stamp = int(time.time() * 1000)
    batch = [Metric(k, float(v), stamp, 0) for k, v in sorted(metrics.items())]
    for i in range(0, len(batch), 500):  # MLflow takes at most 1000 metrics a batch
        chunk = batch[i:i + 500]
        locked_write(uri, lambda c=chunk: client.log_batch(run_info["run_id"], metrics=c))
    name, version = run_info["registered_model"], str(run_info["model_version"])
    for key, value in sorted(metrics.items()):
        locked_write(uri, lambda k=key, v=value: client.set_model_version_tag(
            name, version, k, f"{v:.6f}"))
    for key, text in sorted((tags or {}).items()):
        locked_write(uri, lambda k=key, t=text: client.set_tag(run_info["run_id"], k, t))
        locked_write(uri, lambda k=key, t=text: client.set_model_version_tag(
            name, version, k, t))
    log.info("MLflow: %d test metrics on run %s and %s version %s", len(metrics),
             run_info["run_id"], name, version)


# -------------------------------------------------------------------------- aliases


@dataclass(frozen=True)
class AliasAssignment:
    """One alias the report stage set: ``models:/<registered_model>@<alias>``."""

    alias: str
    arch: str
    registered_model: str
    version: str
    mean_iou: float

    @property
    def uri(self) -> str:
        return f"models:/{self.registered_model}@{self.alias}"


def set_aliases(runs: dict[str, dict[str, Any]], mean_iou: dict[str, float], prefix: str,
                champion: str = "champion", challenger: str = "challenger"
                ) -> list[AliasAssignment]:
    """Point ``champion``/``challenger`` at the two best models by mean test IOU.

    ``runs`` maps architecture -> its run info (``data/models/<arch>.run.json``); models
    without tracking are left out.  On the per-architecture registered models, the two
    aliases move to the winners' versions (and are removed from the other architectures,
    so a stale ``@champion`` never survives).  The winners' versions are also mirrored
    into ``<prefix>best`` (once per source version: rerunning the report adds nothing).
    """
    runs = {arch: with_version(info) for arch, info in runs.items()}
    ranked = [a for a in rank_models(mean_iou) if runs.get(a, {}).get("tracking")]
    if not ranked:
        tracked = [info for info in runs.values() if info.get("tracking")]
        if tracked:  # no eligible network: a deployment must not find last run's @champion
            drop_all_aliases(tracked[0]["tracking_uri"], prefix, (champion, challenger))
        log.info("no eligible tracked model: registry aliases not set")
        return []
    uri = runs[ranked[0]]["tracking_uri"]
    client = store_client(uri)
    best = f"{prefix}{BEST_SUFFIX}"
    roles = dict(zip((champion, challenger), ranked, strict=False))  # alias -> arch
    assignments = []
    for alias, arch in roles.items():
        name, version = runs[arch]["registered_model"], str(runs[arch]["model_version"])
        mirrored = _mirror_version(client, uri, name, version, best,
                                   {"arch": arch, "test_iou_mean": f"{mean_iou[arch]:.6f}"})
        for target, target_version in ((name, version), (best, mirrored)):
            locked_write(uri, lambda t=target, a=alias, v=target_version:
                         client.set_registered_model_alias(t, a, v))
            assignments.append(AliasAssignment(alias, arch, target, target_version,
                                               mean_iou[arch]))
    # An alias stays only where it points now; e.g. last run's champion loses it.
    holders = {alias: runs[arch]["registered_model"] for alias, arch in roles.items()}
    for name in (f"{prefix}{arch}" for arch in MODEL_NAMES):
        _drop_aliases(client, uri, name,
                      tuple(a for a in (champion, challenger) if holders.get(a) != name))
    _drop_aliases(client, uri, best, tuple(a for a in (champion, challenger) if a not in roles))
    log.info("champion: %s (mean IOU %.4f)", ranked[0], mean_iou[ranked[0]])
    return assignments


def drop_all_aliases(uri: str, prefix: str, aliases: tuple[str, ...]) -> None:
    """Remove ``aliases`` from every architecture's registered model and from ``<prefix>best``."""
    client = store_client(uri)
    for name in (*(f"{prefix}{arch}" for arch in MODEL_NAMES), f"{prefix}{BEST_SUFFIX}"):
        _drop_aliases(client, uri, name, aliases)


def _mirror_version(client: Any, uri: str, name: str, version: str, target: str,
                    tags: dict[str, str]) -> str:
    """The version of ``target`` holding ``name``/``version``'s model, created if needed."""
    from mlflow.exceptions import MlflowException  # lazy: optional dependency

    source_id = f"{name}/{version}"
    tags = {**tags, SOURCE_TAG: source_id}
    try:
        existing = client.search_model_versions(f"name = '{target}'")
    except MlflowException:
        existing = []
    for mv in existing:
        if mv.tags.get(SOURCE_TAG) == source_id:
            for key, value in tags.items():  # e.g. the model was re-evaluated
                locked_write(uri, lambda k=key, v=value, n=mv.version:
                             client.set_model_version_tag(target, n, k, v))
            return str(mv.version)
    if not existing:
        try:
            locked_write(uri, lambda: client.create_registered_model(
                target, description="The best mr2unet model by mean test IOU: "
                                    f"models:/{target}@champion."))
        except MlflowException as exc:
            if "already exists" not in str(exc).lower():
                raise
    source = client.get_model_version(name, version)
    with process_tracking_uri(uri):
        created = locked_write(uri, lambda: client.create_model_version(
            target, source.source, run_id=source.run_id, tags=tags,
            description=f"Copy of {source_id}", model_id=logged_model_id(source)))
    return str(created.version)


def logged_model_id(version: Any) -> str | None:
    """The logged model (``m-...``) behind a model version, or None.

    A version read through an MLflow server's REST API has ``model_id`` None (MLflow
    3.17); its source, ``models:/m-...``, still names the logged model, and the server
    refuses a copy of the version whose ``model_id`` does not match that source.
    """
    model_id = getattr(version, "model_id", None)
    source = str(getattr(version, "source", "") or "")
    if not model_id and source.startswith("models:/m-") and "/" not in source[8:]:
        model_id = source.removeprefix("models:/")
    return model_id or None


def _drop_aliases(client: Any, uri: str, name: str, aliases: tuple[str, ...]) -> None:
    """Remove ``aliases`` from registered model ``name`` where present (if it exists)."""
    from mlflow.exceptions import MlflowException  # lazy: optional dependency

    try:
        present = client.get_registered_model(name).aliases
    except MlflowException:
        return  # this architecture was never registered
    for alias in aliases:
        if alias in present:
            locked_write(uri, lambda a=alias: client.delete_registered_model_alias(name, a))
            log.info("removed stale alias %s@%s", name, alias)


# ------------------------------------------------------------------ model files


def model_files(uri: str, name: str, version: str) -> tuple[str | None, set[str]]:
    """The logged model behind registered ``name``/``version`` and its top-level files."""
    client = store_client(uri)
    model_id = logged_model_id(client.get_model_version(name, version))
    if not model_id:  # a version registered from a run's artifacts, before MLflow 3
        return None, set()
    return model_id, {Path(f.path).name for f in client.list_logged_model_artifacts(model_id)}


def add_model_file(uri: str, model_id: str, path: Path) -> None:
    """Add the file ``path`` to the files of logged model ``model_id``."""
    client = store_client(uri)
    locked_write(uri, lambda: client.log_model_artifact(model_id, str(path)))


def tag_versions(uri: str, holders: list[AliasAssignment], tags: dict[str, str]) -> None:
    """Set ``tags`` on each registered version in ``holders``."""
    client = store_client(uri)
    for holder in holders:
        for key, value in tags.items():
            locked_write(uri, lambda h=holder, k=key, v=value: client.set_model_version_tag(
                h.registered_model, h.version, k, v))


# ---------------------------------------------------------------------- model URIs


def find_checkpoint(path: Path) -> Path:
    """The single ``.pt`` checkpoint at ``path`` (a file, or a downloaded model folder)."""
    if path.is_file():
        return path
    if not path.exists():
        raise UserError(f"model {path} not found: pass a .pt file (data/models/<arch>.pt) or "
                        "an MLflow URI such as models:/mr2unet-best@champion.")
    found = sorted(path.rglob("*.pt")) if path.is_dir() else []
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise UserError(f"{path} holds {what} .pt checkpoint(s); pass a model logged by "
                        "mr2unet or the path of one .pt file.")
    return found[0]


def download_checkpoint(model_uri: str, dest: Path, tracking_uri: str) -> Path:
    """Download a ``models:/`` or ``runs:/`` model into ``dest``; return its ``.pt``."""
    try:
        import mlflow  # lazy: optional; a .pt path works without it
    except ImportError:
        raise UserError(f"MLflow is not installed: pass a path to a .pt file instead of "
                        f"{model_uri!r}.") from None
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        if not db.is_file():
            raise UserError(f"no MLflow store at {db}: run from the project root, set "
                            "MLFLOW_TRACKING_URI or pass --tracking-uri.")
    try:
        location = storage_location(store_client(tracking_uri), model_uri)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=location, dst_path=str(dest), tracking_uri=tracking_uri)
    except Exception as exc:  # noqa: BLE001 - MLflow raises many types for a bad URI
        raise UserError(f"cannot load {model_uri!r} from the MLflow store {tracking_uri} "
                        f"({exc}). Check the name and alias (`make ui`).") from None
    return find_checkpoint(Path(local))


def storage_location(client: Any, model_uri: str) -> str:
    """Where the files of a ``models:/`` or ``runs:/`` URI are stored (others: unchanged).

    ``models:/<name>@<alias>``, ``models:/<name>/<version>`` and ``models:/<model_id>`` are
    resolved in ``client``'s registry; ``runs:/<run_id>/<name>`` is the model ``<name>``
    logged by that run (MLflow 3 logs models beside runs, not in their artifacts), else
    the run's artifact folder ``<name>``.  MLflow's own resolution of these URIs uses the
    process-wide tracking/registry URIs, whatever URI it is passed: we resolve them here.
    """
    if model_uri.startswith("models:/"):
        ref = model_uri.removeprefix("models:/").strip("/")
        if "@" in ref:
            name, alias = ref.split("@", 1)
            version = str(client.get_model_version_by_alias(name, alias).version)
        elif "/" in ref:
            name, version = ref.split("/", 1)
        else:
            return str(client.get_logged_model(ref).artifact_location)
        return str(client.get_model_version_download_uri(name, version))
    if model_uri.startswith("runs:/"):
        run_id, _, name = model_uri.removeprefix("runs:/").strip("/").partition("/")
        run = client.get_run(run_id)
        logged = client.search_logged_models(
            experiment_ids=[run.info.experiment_id],
            filter_string=f"source_run_id = '{run_id}' AND name = '{name}'")
        if logged:
            return str(logged[0].artifact_location)
        return f"{run.info.artifact_uri}/{name}"
    return model_uri
