"""The MLflow side of evaluation: metrics on runs, tags on versions, aliases, model URIs.

After the report stage, ``models:/<prefix><arch>@champion`` / ``@challenger`` name the
best and second-best architectures' versions (each architecture is its own registered
model), and ``models:/<prefix>best@champion`` always resolves to the single best model.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from mr2unet.errors import UserError
from mr2unet.tracking import locked_write

log = logging.getLogger(__name__)


def log_evaluation(run_info: dict[str, Any], metrics: dict[str, float]) -> None:
    """Add test metrics to the model's training run and as tags on its registered version."""
    import mlflow
    from mlflow.entities import Metric

    uri = run_info["tracking_uri"]
    client = mlflow.MlflowClient(uri)
    batch = [Metric(k, float(v), 0, 0) for k, v in sorted(metrics.items())]
    for i in range(0, len(batch), 500):
        locked_write(uri, lambda b=batch[i:i + 500]: client.log_batch(run_info["run_id"],
                                                                      metrics=b))
    name, version = run_info["registered_model"], run_info["model_version"]
    for key in ("test_iou_mean", "test_dice_mean"):
        if key in metrics:
            locked_write(uri, lambda k=key: client.set_model_version_tag(
                name, version, k, f"{metrics[k]:.6f}"))


def set_aliases(runs: dict[str, dict[str, Any]], mean_iou: dict[str, float],
                prefix: str, champion: str = "champion", challenger: str = "challenger"
                ) -> dict[str, str]:
    """Point ``champion``/``challenger`` at the best two models by mean test IOU.

    ``runs`` maps architecture -> its run info (``data/models/<arch>.run.json``). The
    champion's version is also registered under ``<prefix>best`` with the champion alias.
    Returns ``{alias: "models:/..."}``.
    """
    import mlflow

    ranked = sorted((a for a in mean_iou if runs.get(a, {}).get("tracking")),
                    key=lambda a: (-mean_iou[a], a))
    if not ranked:
        return {}
    uri = runs[ranked[0]]["tracking_uri"]
    client = mlflow.MlflowClient(uri)
    result = {}
    for alias, arch in zip((champion, challenger), ranked, strict=False):
        info = runs[arch]
        locked_write(uri, lambda i=info, a=alias: client.set_registered_model_alias(
            i["registered_model"], a, i["model_version"]))
        result[alias] = f"models:/{info['registered_model']}@{alias}"
    best = runs[ranked[0]]
    source = client.get_model_version(best["registered_model"], best["model_version"]).source
    best_name = f"{prefix}best"
    version = locked_write(uri, lambda: mlflow.register_model(
        source, best_name, tags={"arch": ranked[0], "test_iou_mean": f"{mean_iou[ranked[0]]:.6f}",
                                 "from": f"{best['registered_model']}/{best['model_version']}"}))
    locked_write(uri, lambda: client.set_registered_model_alias(best_name, champion,
                                                                 version.version))
    result["best"] = f"models:/{best_name}@{champion}"
    log.info("champion: %s (mean IOU %.4f)", ranked[0], mean_iou[ranked[0]])
    return result


def checkpoint_from_uri(model_uri: str, dest: Path | None = None) -> Path:
    """Download a ``models:/`` or ``runs:/`` model and return its ``.pt`` checkpoint."""
    try:
        import mlflow
    except ImportError:
        raise UserError("MLflow is not installed: pass a path to a .pt file instead of "
                        f"{model_uri!r}.") from None
    from mr2unet.tracking import resolve_tracking_uri

    mlflow.set_tracking_uri(resolve_tracking_uri({}, Path.cwd()))
    dest = dest or Path(tempfile.mkdtemp(prefix="mr2unet-model-"))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri,
                                                         dst_path=str(dest)))
    except Exception as exc:  # noqa: BLE001 - MLflow raises several types here
        raise UserError(f"cannot load {model_uri!r} from the MLflow store "
                        f"({mlflow.get_tracking_uri()}): {exc}. Check the name/alias with "
                        f"`make ui`, or set MLFLOW_TRACKING_URI.") from None
    found = sorted(local.rglob("*.pt")) if local.is_dir() else [local]
    if not found:
        raise UserError(f"{model_uri!r} holds no .pt checkpoint; was it logged by mr2unet?")
    return found[0]
