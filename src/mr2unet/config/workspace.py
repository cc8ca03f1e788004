"""Where the project is, also from inside a DVC experiment's temporary workspace.

``dvc exp run --queue`` and ``--temp`` run the pipeline in a copy of the repository under
``<repo>/.dvc/tmp/exps/<tmpdir>`` that DVC deletes afterwards.  Stage outputs belong in
that copy, but some things belong to the project: the MLflow store, a downloaded 5 GB
archive, and paths that the user wrote in ``params.yaml`` relative to the repository (the
bottle-sample profile's ``../shared/...``).  These helpers resolve them to the repository,
and :func:`file_lock` serialises the experiments that share one of them.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Where DVC runs queued and --temp experiments, relative to the repository root.
DVC_EXP_WORKSPACE = (".dvc", "tmp", "exps")


def project_root(path: str | Path = ".") -> Path:
    """``path`` resolved; for a DVC experiment's temporary workspace, the repo it came from."""
    parts = Path(path).resolve().parts
    n = len(DVC_EXP_WORKSPACE)
    for i in range(len(parts) - n, 0, -1):
        if parts[i:i + n] == DVC_EXP_WORKSPACE:
            return Path(*parts[:i])
    return Path(*parts)


def project_path(value: str | Path, cwd: str | Path = ".") -> Path:
    """A path from ``params.yaml``: absolute as given, else relative to the project root.

    Run from the repository root (as every stage is) this is the plain relative path made
    absolute; from a DVC experiment's workspace it points into the repository instead.
    """
    path = Path(value).expanduser()
    return path if path.is_absolute() else project_root(cwd) / path


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block.

    For state that concurrent stages share: two queued experiments writing one SQLite
    store, or downloading one archive.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
