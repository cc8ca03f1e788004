"""Where a result comes from: git commit, library versions, file digests, run records.

Plain helpers with no MLflow: the training and report code records provenance whether or
not tracking is on.  ``data/models/<model>.run.json`` (:func:`write_run_info`) says where a
model's MLflow run and registered version live, or ``{"tracking": false}``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any


def write_run_info(path: str | Path, info: dict[str, Any]) -> None:
    """Record where a stage's MLflow run and model version live (a DVC output)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def read_run_info(path: str | Path) -> dict[str, Any]:
    """The dict written by :func:`write_run_info`; ``{}`` when tracking was off."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}


def git_commit(root: str | Path = ".") -> str:
    """HEAD's commit, with ``-dirty`` when tracked files differ; ``unknown`` outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def torch_version() -> str:
    import torch

    return str(torch.__version__)
