"""``mr2unet repro --jobs N``: the DVC pipeline with N networks' stages at a time.

``dvc repro`` runs one stage after another, but the stages of different networks
(``train@X``, ``evaluate@X``) do not depend on each other. DVC lets independent stages
run at once from separate ``dvc repro`` processes: it holds the repository lock while
it checks and records a stage, not while the stage's command runs, and
``dvc --wait-for-lock`` waits for that lock instead of failing. So this runs

1. ``dvc repro <last upstream stage>``: the data every network needs (download, prepare);
2. for each network, ``dvc --wait-for-lock repro --single-item train@X evaluate@X``,
   ``jobs`` networks at a time, the costliest first;
3. ``dvc repro --single-item <the remaining stages>`` (the report, then promote).

Extra arguments (``--force``...) go to every ``dvc repro``. Each stage runs the same
command with the same parameters as under a plain ``dvc repro``, so its outputs are the
same; only the order of the MLflow runs differs. Jobs share the machine: on a CPU give
each its share of the cores (``run.cpu_threads``); on one GPU they share the device
(docs/performance.md measured 1.8x sooner for the four networks at once on an H100).

SIGTERM or Ctrl-C stops every ``dvc`` process it started (each runs in its own process
group, which gets SIGTERM, then SIGKILL after ``STOP_GRACE_S``), waits for them and exits
128 + the signal; the stages' checkpoints stay, so the next run resumes them.
"""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from mr2unet.config.params import read_mapping
from mr2unet.errors import UserError
from mr2unet.models import REGISTRY

log = logging.getLogger(__name__)

NETWORK_STAGES = ("train", "evaluate")
# How often a lane echoes a progress bar's redrawn line (tqdm's carriage returns).
PROGRESS_EVERY_S = 10.0
# After SIGTERM, how long the stages get to stop before SIGKILL.
STOP_GRACE_S = 20.0

# The dvc processes running now, and the signal that stops the run once one arrived.
_children: set[subprocess.Popen] = set()
_children_lock = threading.RLock()  # the signal handler may interrupt its holder
_stopping: list[int] = []


@dataclass(frozen=True)
class Plan:
    """The three steps of a parallel repro (see the module docstring)."""

    upstream: str | None
    chains: tuple[tuple[str, ...], ...]
    rest: tuple[str, ...]


def plan(stages: Sequence[str]) -> Plan:
    """Split ``dvc stage list`` names (in dvc.yaml's order) into the three steps."""
    networks = list(dict.fromkeys(
        s.split("@", 1)[1] for s in stages if s.split("@", 1)[0] in NETWORK_STAGES and "@" in s))
    if not networks:
        raise UserError("dvc.yaml has no train@<model> stages: nothing to run in parallel; "
                        "use `dvc repro`.")
    # the costliest network first, so that it does not run alone at the end (the registry's
    # relative_cost); stable: dvc.yaml order on ties
    networks.sort(key=lambda n: -(REGISTRY[n].relative_cost if n in REGISTRY else 1.0))
    chains = tuple(tuple(f"{kind}@{n}" for kind in NETWORK_STAGES if f"{kind}@{n}" in stages)
                   for n in networks)
    in_chains = {s for chain in chains for s in chain}
    first = min(stages.index(s) for s in in_chains)
    upstream = [s for s in stages[:first] if s not in in_chains]
    rest = tuple(s for s in stages[first:] if s not in in_chains)
    return Plan(upstream[-1] if upstream else None, chains, rest)


def _dvc() -> str:
    """The ``dvc`` beside this Python (the venv's), else the one on PATH."""
    local = Path(sys.executable).parent / "dvc"
    return str(local) if local.is_file() else "dvc"


def _stream(cmd: list[str], cwd: Path, prefix: str, lock: threading.Lock,
            progress_every_s: float = PROGRESS_EVERY_S) -> int:
    """Run ``cmd``, echoing its output lines with ``prefix``; its exit code.

    A progress bar redraws its line with carriage returns, which a pipe would hold back
    until the bar closes: such a line is echoed at most every ``progress_every_s`` seconds,
    so each lane shows its progress while several run at once.
    """
    with _children_lock:
        if _stopping:
            return 128 + _stopping[0]
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        _children.add(proc)
    assert proc.stdout is not None
    buffer, last_progress = b"", -math.inf

    def echo(segment: bytes) -> None:
        with lock:
            sys.stdout.write(f"{prefix}{segment.decode(errors='replace')}\n")
            sys.stdout.flush()

    while chunk := proc.stdout.read1(65536):
        buffer = (buffer + chunk).replace(b"\r\n", b"\n")
        *segments, buffer = re.split(rb"(\r|\n)", buffer)
        for text, end in zip(segments[::2], segments[1::2], strict=True):
            if end == b"\n":
                echo(text)
            elif text.strip() and time.monotonic() - last_progress >= progress_every_s:
                last_progress = time.monotonic()
                echo(text)
    if buffer.strip():
        echo(buffer)
    code = proc.wait()
    with _children_lock:
        _children.discard(proc)
    return code


def _signal_children(sig: int) -> None:
    with _children_lock:
        for proc in _children:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)


@contextmanager
def _stop_children_on_signals() -> Iterator[None]:
    """While the ``with`` block runs, SIGTERM/SIGINT stop the children (module docstring)."""
    _stopping.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if not _stopping:
            log.warning("%s: stopping the running stages", signal.Signals(signum).name)
            _stopping.append(signum)
            killer = threading.Timer(STOP_GRACE_S, _signal_children, (signal.SIGKILL,))
            killer.daemon = True
            killer.start()
        _signal_children(signal.SIGTERM)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def check_threads(params_path: Path, jobs: int, cores: int | None = None) -> str | None:
    """A warning when ``jobs`` trainings at ``run.cpu_threads`` each oversubscribe the CPU."""
    cores = cores or os.cpu_count() or 1
    run = read_mapping(params_path).get("run") or {}
    if str(run.get("device", "auto")).startswith("cuda") or jobs <= 1:
        return None
    threads = run.get("cpu_threads") or cores
    if jobs * threads <= cores:
        return None
    return (f"{jobs} jobs x run.cpu_threads {threads} > {cores} CPU cores: CPU trainings "
            f"will slow each other down (measured >10x); set run.cpu_threads to "
            f"{max(1, cores // jobs)} or use fewer jobs (the GPU case is unaffected)")


def run(project: Path, jobs: int, repro_args: Sequence[str] = ()) -> int:
    """The pipeline of ``project`` with ``jobs`` networks at a time; 0 when all succeeded."""
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    dvc, args = _dvc(), list(repro_args)
    try:
        listed = subprocess.run([dvc, "stage", "list", "--name-only"], cwd=project,
                                capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError("dvc not found: run `make install` and use the venv "
                        "(`source .venv/bin/activate`)") from None
    if listed.returncode != 0:
        raise UserError(f"`dvc stage list` failed in {project}: {listed.stderr.strip()}")
    steps = plan(listed.stdout.split())
    warning = check_threads(project / "params.yaml", jobs)
    if warning:
        log.warning(warning)
    with _stop_children_on_signals():
        code = _run_steps(project, dvc, args, steps, jobs)
    if _stopping:
        log.error("interrupted: every stage stopped; the checkpoints written so far are kept: "
                  "run `mr2unet repro` again to resume")
        return 128 + _stopping[0]
    return code


def _run_steps(project: Path, dvc: str, args: list[str], steps: Plan, jobs: int) -> int:
    lock = threading.Lock()
    if steps.upstream and _stream([dvc, "repro", *args, steps.upstream], project, "", lock):
        return 1
    failed: list[str] = []

    def lane(chain: tuple[str, ...]) -> None:
        if failed:  # a stage failed: start nothing new
            return
        network = chain[0].split("@", 1)[1]
        cmd = [dvc, "--wait-for-lock", "repro", *args, "--single-item", *chain]
        if _stream(cmd, project, f"[{network}] ", lock):
            failed.append(network)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(lane, steps.chains))
    if failed:
        log.error("stages of %s failed (output above); the other networks' results are "
                  "recorded: fix it and run again", ", ".join(failed))
        return 1
    if steps.rest:
        return int(bool(_stream([dvc, "repro", *args, "--single-item", *steps.rest], project,
                                "", lock)))
    return 0
