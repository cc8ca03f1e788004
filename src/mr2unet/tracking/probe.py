"""Does the tracking store answer? A bounded check before a stage does any work.

A local SQLite file needs no check. An ``http(s)://`` server is asked for ``/health``
(MLflow answers it without authentication); a database URI (``postgresql://...``) gets a
TCP connection. Any HTTP answer but a gateway error counts as "there": a 401 still means
the server runs. :func:`bound_http_requests` caps MLflow's own retries, which otherwise
wait about four minutes on a server that is gone (7 retries, back-off factor 2).
"""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from mr2unet.errors import UserError

PROBE_TIMEOUT_S = 5.0
REMOTE_SCHEMES = ("http", "https")
DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
# Gateway errors: a proxy answers, the tracking server behind it does not.
GATEWAY_ERRORS = (502, 503, 504)
# MLflow's HTTP settings for a stage (the user's own values win): a refused connection
# fails after ~3 s instead of ~4 min; a request that hangs gives up after 30 s.
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def is_remote(uri: str) -> bool:
    """True for a tracking server (``http(s)://``), whose outages training must survive."""
    return urlsplit(uri).scheme in REMOTE_SCHEMES


def bound_http_requests() -> None:
    """Cap MLflow's HTTP retries and timeout in this process, unless the user set them."""
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)


def unreachable_reason(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Why ``uri`` does not answer within ``timeout_s``, or None when it does (or is local)."""
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+", 1)[0]  # postgresql+psycopg -> postgresql
    if parts.scheme in REMOTE_SCHEMES:
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
                return None
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}" if exc.code in GATEWAY_ERRORS else None
        except (urllib.error.URLError, OSError) as exc:
            return str(getattr(exc, "reason", exc))
    if scheme in DATABASE_PORTS and parts.hostname:
        try:
            with socket.create_connection(
                    (parts.hostname, parts.port or DATABASE_PORTS[scheme]), timeout=timeout_s):
                return None
        except OSError as exc:
            return str(exc)
    return None


def unreachable_message(uri: str, reason: str) -> str:
    """The one message for a tracking store that does not answer: the URI and the ways out."""
    return (f"the MLflow tracking server {uri} does not answer ({reason}). Start it (e.g. "
            f"`mlflow server --host 127.0.0.1 --port <port> ...`) or fix the URI, or train "
            "without it: `tracking.enabled: false` in params.yaml (no tracking), or unset "
            "MLFLOW_TRACKING_URI and `tracking.uri` (the local sqlite:///mlflow.db).")


def check_reachable(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise one UserError when the tracking store at ``uri`` does not answer in time."""
    reason = unreachable_reason(uri, timeout_s)
    if reason is not None:
        raise UserError(unreachable_message(uri, f"{reason}; waited up to {timeout_s:.0f} s"))
