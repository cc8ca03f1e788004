"""Shared fixtures: the real MVTec bottle sample (../shared), synthetic data, and a
throw-away PostgreSQL cluster (:func:`postgres_cluster`)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
BOTTLE_TAR = SHARED / "data" / "mvtec_ad_bottle_test.tar.xz"
BOTTLE_SHA256 = "9be336dd3af7738f6478464652eb07309b039059f51d562377e7afe81eb99f2a"


def verified_archive(path: Path, sha256: str, what: str) -> Path:
    """``path`` when it holds the published bytes; skip when ../shared is missing; fail,
    naming both digests, when the file is another or damaged copy."""
    if not path.is_file():
        pytest.skip(f"{what} not found at {path} (../shared is missing)")
    import hashlib

    with path.open("rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    if digest != sha256:
        pytest.fail(f"{path} has sha256 {digest}, expected {sha256}: a different or damaged "
                    f"copy of {what}", pytrace=False)
    return path


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A case parametrised with ``device="cuda"`` (tests/test_models.py) is a ``cuda`` test,
    like those of tests/test_cuda.py: ``pytest -m cuda`` selects both."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("device") == "cuda":
            item.add_marker(pytest.mark.cuda)


# The fast loop (`make test-fast`, -m "not slow") stays under 3 minutes on 2 cores only while
# every long test carries the `slow` mark: a test whose setup or call takes longer than this
# without it fails, naming the mark. MR2UNET_FAST_LIMIT_S overrides it (0 turns it off).
FAST_LIMIT_S = 20.0


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo
                              ) -> Iterator[pytest.TestReport]:
    report: pytest.TestReport = yield
    limit = float(os.environ.get("MR2UNET_FAST_LIMIT_S", FAST_LIMIT_S))
    if (report.when in ("setup", "call") and report.passed and 0 < limit < report.duration
            and item.get_closest_marker("slow") is None):
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} took {report.duration:.1f} s in its {report.when} "
                           f"without the `slow` mark (limit {limit:.0f} s, tests/conftest.py "
                           "FAST_LIMIT_S): mark it @pytest.mark.slow (or make it faster), so "
                           "that `make test-fast` stays fast")
    return report


@pytest.fixture(scope="session")
def bottle_tar() -> Path:
    return verified_archive(BOTTLE_TAR, BOTTLE_SHA256, "the real MVTec sample")


NEU_TAR = SHARED / "data" / "neu_seg_test.tar.xz"
NEU_SHA256 = "3da91690a708077f3b61e03a5b9a641562f8d8e8f2653f4df8a56c96923992c1"


@pytest.fixture(scope="session")
def neu_tar() -> Path:
    """The real NEU-Seg sample (../shared), checked against its published SHA-256."""
    return verified_archive(NEU_TAR, NEU_SHA256, "the real NEU-Seg sample")


DEEPCRACK_TAR = SHARED / "data" / "deepcrack_sample.tar.xz"
DEEPCRACK_SHA256 = "4fad2af33e69b41f1c6e415f82047eb70ab04c19f5a6e260faf1b088e83ad041"


@pytest.fixture(scope="session")
def deepcrack_tar() -> Path:
    """The real DeepCrack sample (../shared), checked against its published SHA-256."""
    return verified_archive(DEEPCRACK_TAR, DEEPCRACK_SHA256, "the real DeepCrack sample")


@pytest.fixture(scope="session")
def bottle_raw(bottle_tar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mr2unet.data.extract import extract

    root = tmp_path_factory.mktemp("bottle_raw")
    extract(bottle_tar, root)
    return root


@pytest.fixture(scope="session")
def synthetic_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mr2unet.data.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic")
    generate(root, seed=0, images_per_defect=3)
    return root


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_binaries() -> tuple[str, str] | None:
    """``initdb`` and ``pg_ctl`` from PATH, else from Debian's /usr/lib/postgresql/<ver>/bin."""
    found = shutil.which("initdb"), shutil.which("pg_ctl")
    if all(found):
        return found  # type: ignore[return-value]
    for bin_dir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        initdb, pg_ctl = Path(bin_dir, "initdb"), Path(bin_dir, "pg_ctl")
        if initdb.is_file() and pg_ctl.is_file():
            return str(initdb), str(pg_ctl)
    return None


@contextlib.contextmanager
def postgres_cluster() -> Iterator[str]:
    """A throw-away PostgreSQL cluster on 127.0.0.1; yields its SQLAlchemy URI
    (``postgresql://mlflow@127.0.0.1:<port>/postgres``, trust authentication).

    Uses the server binaries of the machine (Debian's ``postgresql`` package; .ci/run
    installs it); skips, saying so, where they are absent. PostgreSQL refuses to run as
    root, so as root the cluster runs as the ``postgres`` user. Stopped and deleted on exit.
    """
    binaries = postgres_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in "
                    "/usr/lib/postgresql/*/bin: apt-get install postgresql")
    pytest.importorskip("psycopg")
    initdb, pg_ctl = binaries
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="mr2unet-pg-"))
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_port()

    def run(*cmd: str) -> None:
        result = subprocess.run([*as_user, *cmd], cwd=root, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, f"{' '.join(cmd)}:\n{result.stdout}\n{result.stderr}"

    try:
        run(initdb, "-D", str(data), "-A", "trust", "-U", "mlflow", "--no-sync")
        run(pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60", "start", "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off")
        yield f"postgresql://mlflow@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
                       cwd=root, capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def http_service(cmd: list[str], env: dict[str, str], log_path: Path, health_path: str,
                 what: str, start_timeout_s: float = 180) -> Iterator[str]:
    """Run ``cmd`` (a server that takes its port from ``{port}`` in the arguments) on
    127.0.0.1, wait until ``GET health_path`` answers 200, yield the base URL, and stop the
    whole process group at the end, whatever happened."""
    port = free_port()
    with log_path.open("w") as log:
        server = subprocess.Popen([arg.format(port=port) for arg in cmd], env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}{health_path}", server, log_path, what, start_timeout_s)
        yield url
    finally:
        stop_process_group(server)


def wait_for_http(url: str, proc: subprocess.Popen, log_path: Path, what: str,
                  timeout_s: float = 180) -> None:
    """Wait until ``GET url`` answers 200 while ``proc`` runs; fail with its log otherwise."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as answer:
            if answer.status == 200:
                return
        assert proc.poll() is None and time.monotonic() < deadline, \
            f"{what} did not start:\n{log_path.read_text()[-3000:]}"
        time.sleep(0.5)


def start_mlflow_server(backend_uri: str, artifacts: Path, port: int) -> subprocess.Popen:
    """``mlflow server`` on 127.0.0.1:``port`` in its own process group, ready (``/health``
    answers); stop it with ``os.killpg(proc.pid, ...)``."""
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    log_path = artifacts.parent / f"mlflow-server-{port}.log"
    with log_path.open("a") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
             "--port", str(port), "--backend-store-uri", backend_uri,
             "--artifacts-destination", str(artifacts), "--workers", "1"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", proc, log_path, "mlflow server")
    except BaseException:
        stop_process_group(proc)
        raise
    return proc


def stop_process_group(proc: subprocess.Popen, sig: int | None = None) -> None:
    """Send ``sig`` (default SIGTERM, then SIGKILL after 30 s) to ``proc``'s group; reap it."""
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig or signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
