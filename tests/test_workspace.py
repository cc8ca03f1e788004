"""Paths of the project seen from a DVC experiment's temporary workspace; file locks."""

from __future__ import annotations

import fcntl
import threading
import time
from pathlib import Path

import pytest
import yaml

from mr2unet.config.params import load_params
from mr2unet.config.workspace import file_lock, project_path, project_root
from mr2unet.errors import UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """``<tmp>/repo/.dvc/tmp/exps/tmpk2x9``, where DVC runs a queued experiment."""
    path = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpk2x9"
    path.mkdir(parents=True)
    return path


def test_project_root(tmp_path: Path, workspace: Path) -> None:
    repo = (tmp_path / "repo").resolve()
    assert project_root(workspace) == repo
    assert project_root(workspace / "sub") == repo
    assert project_root(repo) == repo
    assert project_root(repo / ".dvc" / "tmp") == repo / ".dvc" / "tmp"  # not a workspace


def test_project_path(tmp_path: Path, workspace: Path) -> None:
    repo = (tmp_path / "repo").resolve()
    assert project_path("../shared/x.tar", workspace) == repo / "../shared/x.tar"
    assert project_path("data/downloads", repo) == repo / "data/downloads"
    assert project_path("/abs/x.tar", workspace) == Path("/abs/x.tar")


def test_relative_archive_is_found_from_an_experiment_workspace(
        tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "bottle.tar.xz").write_bytes(b"x")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"].update(source="archive", archive="../shared/bottle.tar.xz", sha256=None)
    (workspace / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(workspace)
    assert load_params("params.yaml")["data"]["archive"] == "../shared/bottle.tar.xz"
    raw["data"]["archive"] = "../shared/missing.tar.xz"
    (workspace / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match="`data.archive`.*relative to the repository root"):
        load_params("params.yaml")


def test_file_lock_excludes_a_second_holder(tmp_path: Path) -> None:
    lock = tmp_path / "sub" / "x.lock"
    order: list[str] = []

    def second() -> None:
        with file_lock(lock):
            order.append("second")

    with file_lock(lock):
        with lock.open("a") as fh, pytest.raises(BlockingIOError):
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.2)
        order.append("first")
    thread.join(timeout=10)
    assert order == ["first", "second"]
