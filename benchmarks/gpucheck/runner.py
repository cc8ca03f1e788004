"""Running worker processes, a few at a time, each killed at its time limit."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpucheck.settings import ENTRY, REPO


@dataclasses.dataclass
class Job:
    """One worker process: its spec, files and the time it must be killed at."""

    name: str
    spec: dict[str, Any]
    kill_at: float
    proc: subprocess.Popen | None = None


def run_jobs(jobs: list[Job], work: Path, parallel: int, threads: int,
             on_done: Callable[[Job, dict[str, Any]], None] | None = None
             ) -> dict[str, dict[str, Any]]:
    """Run ``jobs`` as worker processes, ``parallel`` at a time, each with ``threads`` CPU
    threads; a job still running at its ``kill_at`` is killed (its partial result kept).

    Returns each job's result by name: what the worker wrote (``complete`` when it ended
    normally), plus ``error`` and the tail of its log when it failed or was killed.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
        "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "TQDM_DISABLE": "1"}
    pending, running, results = list(jobs), [], {}
    while pending or running:
        while pending and len(running) < parallel:
            job = pending.pop(0)
            spec_file, log_file = work / f"{job.name}.spec.json", work / f"{job.name}.log"
            job.spec.update(out=str(work / f"{job.name}.json"), threads=threads)
            spec_file.write_text(json.dumps(job.spec))
            with log_file.open("w") as log:
                job.proc = subprocess.Popen(
                    [sys.executable, str(ENTRY), "--worker", str(spec_file)],
                    stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                    start_new_session=True)
            running.append(job)
        time.sleep(0.1)
        for job in list(running):
            code = job.proc.poll()
            if code is None and time.time() < job.kill_at:
                continue
            if code is None:
                os.killpg(job.proc.pid, signal.SIGKILL)  # the worker's own process group
                job.proc.wait()
            running.remove(job)
            out = work / f"{job.name}.json"
            result = json.loads(out.read_text()) if out.is_file() else {}
            if not result.get("complete"):
                tail = (work / f"{job.name}.log").read_text()[-1500:]
                result.update(error="killed at its time limit" if code is None
                              else f"exit code {code}", log_tail=tail)
            results[job.name] = result
            if on_done:
                on_done(job, result)
    return results


