"""The shared tracking server of docs/deploy.md: ``mlflow server --app-name basic-auth`` on
PostgreSQL with a proxied artifact store, on 127.0.0.1.

- the admin password is the recipe's own (``MLFLOW_AUTH_ADMIN_PASSWORD``); the one older
  MLflow versions shipped (admin / password1234) is refused;
- the admin creates the pipeline's user; with ``MLFLOW_TRACKING_USERNAME`` /
  ``MLFLOW_TRACKING_PASSWORD`` the pipeline's tracking code logs a run, registers its model,
  sets the aliases and attaches the champion's ONNX file;
- without credentials, or with a wrong password, the REST API and the artifact store
  answer 401, and nothing of those requests is written.

Skipped, with the reason, where PostgreSQL's server binaries are absent (tests/conftest.py).
"""

from __future__ import annotations

import base64
import configparser
import contextlib
import json
import os
import secrets
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import http_service, postgres_cluster

from mr2unet.errors import UserError
from mr2unet.models import build_model
from mr2unet.models.checkpoint import save_model

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("flask_wtf")  # the mlflow[auth] extra
pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 180
SHIPPED_ADMIN = ("admin", "password1234")  # what MLflow < 3.x shipped in basic_auth.ini


def auth_config(path: Path, database_uri: str) -> Path:
    """The recipe's basic_auth.ini: users in their own PostgreSQL database."""
    config = configparser.ConfigParser()
    config["mlflow"] = {
        "default_permission": "READ",
        "database_uri": database_uri,
        "admin_username": "admin",
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
    }
    with path.open("w") as fh:
        config.write(fh)
    return path


def call(url: str, body: dict[str, Any] | None = None,
         user: tuple[str, str] | None = None, method: str | None = None,
         data: bytes | None = None) -> tuple[int, str]:
    """One HTTP request; (status, body text). ``user`` adds HTTP basic authentication."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if user:
        token = base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    payload = json.dumps(body).encode() if body is not None else data
    request = urllib.request.Request(url, data=payload, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def auth_server(backend_uri: str, artifacts: Path, env: dict[str, str],
                log_path: Path) -> contextlib.AbstractContextManager[str]:
    """``mlflow server --app-name basic-auth`` on 127.0.0.1; yields its URL."""
    return http_service(
        [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
         "--port", "{port}", "--backend-store-uri", backend_uri,
         "--artifacts-destination", str(artifacts), "--workers", "1"],
        env, log_path, "/health", "mlflow server", START_TIMEOUT_S)


def create_databases(cluster_uri: str, *names: str) -> None:
    import psycopg

    with psycopg.connect(cluster_uri, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')


def tracking_params(uri: str) -> dict[str, Any]:
    return {
        "profile": "demo", "data": {"source": "synthetic"},
        "split": {"test_fraction": 0.2, "seed": 1}, "prepare": {"image_size": 32},
        "train": {"epochs": 1, "lr": 0.001, "models": ["unet"], "model_options": {"unet": {}}},
        "tracking": {"enabled": True, "uri": uri, "experiment": "mr2unet",
                     "registry_prefix": "mr2unet-"},
    }


def test_only_the_servers_users_get_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from mr2unet.deploy.publish import attach_onnx
    from mr2unet.tracking.registry import set_aliases
    from mr2unet.tracking.runs import TrainingTracker

    admin = ("admin", secrets.token_urlsafe(18))
    pipeline = ("mr2unet-pipeline", secrets.token_urlsafe(18))
    artifacts = tmp_path / "artifacts"
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(postgres_cluster())
        create_databases(cluster, "mlflow", "mlflow_auth")
        base = cluster.rsplit("/", 1)[0]
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
               "MLFLOW_AUTH_CONFIG_PATH": str(auth_config(tmp_path / "basic_auth.ini",
                                                          f"{base}/mlflow_auth")),
               "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1],
               "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32)}
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME",
                     "MLFLOW_TRACKING_PASSWORD"):
            env.pop(name, None)
        url = stack.enter_context(auth_server(f"{base}/mlflow", artifacts, env,
                                              tmp_path / "server.log"))
        api = f"{url}/api/2.0/mlflow"

        # The admin: the recipe's password works, the formerly shipped one does not.
        assert call(f"{api}/users/get?username=admin", user=admin)[0] == 200
        assert call(f"{api}/users/get?username=admin", user=SHIPPED_ADMIN)[0] == 401
        status, text = call(f"{api}/users/create", {"username": pipeline[0],
                                                    "password": pipeline[1]}, user=admin)
        assert status == 200, text

        # Refused: no credentials, a wrong password, an unknown user; nothing written.
        wrong = (pipeline[0], pipeline[1] + "x")
        for user in (None, wrong, ("nobody", pipeline[1])):
            status, _ = call(f"{api}/experiments/create", {"name": "intruder"}, user=user)
            assert status == 401, user
            status, _ = call(f"{url}/api/2.0/mlflow-artifacts/artifacts/0/intruder.txt",
                             user=user, method="PUT", data=b"written?")
            assert status == 401, user
            status, _ = call(f"{api}/registered-models/create", {"name": "intruder"}, user=user)
            assert status == 401, user
        # ... and through the MLflow client the pipeline uses
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", wrong[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", wrong[1])
        # one clear error that names the refusal and what to set, not "does not answer"
        with pytest.raises(UserError, match=r"refused the request \(.*401.*MLFLOW_TRACKING_"
                                            r"USERNAME"):
            TrainingTracker(tracking_params(url), "unet", root=tmp_path)
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
        # one clear error that names the refusal and what to set, not "does not answer"
        with pytest.raises(UserError, match=r"refused the request \(.*401.*MLFLOW_TRACKING_"
                                            r"USERNAME"):
            TrainingTracker(tracking_params(url), "unet", root=tmp_path)

        # The pipeline, with its user's credentials from the environment.
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", pipeline[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", pipeline[1])
        checkpoint = tmp_path / "unet.pt"
        save_model(checkpoint, build_model("unet", base_width=4), "unet", {"base_width": 4}, 32)
        (tmp_path / "unet.csv").write_text("epoch,loss\n1,0.5\n")
        (tmp_path / "train.npz").write_bytes(b"data")
        try:
            tracker = TrainingTracker(tracking_params(url), "unet", root=tmp_path)
            tracker.start("train@unet")
            tracker.log_epoch({"epoch": 1, "loss": 0.5})
            info = tracker.finish(checkpoint, tmp_path / "unet.csv", tmp_path / "train.npz",
                                  system={"device": "cpu"})
            assignments = set_aliases({"unet": info}, {"unet": 0.5}, "mr2unet-")
            images = np.zeros((2, 32, 32, 3), np.uint8)
            note = attach_onnx(assignments, {"unet": info}, "champion",
                               {"unet": checkpoint}, images)
        finally:
            mlflow.set_tracking_uri(None)
        assert note and "model.onnx attached" in note
        client = mlflow.MlflowClient(url, url)
        champion = client.get_model_version_by_alias("mr2unet-best", "champion")
        assert champion.run_id == info["run_id"]
        assert client.get_run(info["run_id"]).info.status == "FINISHED"

        # Nothing of the refused requests was written.
        names = {e.name for e in client.search_experiments()}
        assert "intruder" not in names and "mr2unet" in names
        assert {m.name for m in client.search_registered_models()} == \
            {"mr2unet-unet", "mr2unet-best"}
        stored = [p.name for p in artifacts.rglob("*") if p.is_file()]
        assert "intruder.txt" not in stored
        assert "model.onnx" in stored and "unet.pt" in stored
