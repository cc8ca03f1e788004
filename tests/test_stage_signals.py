"""A stage's SIGTERM handler (pipeline/_common.py): SIGTERM ends the stage with 143 through
its ``finally`` blocks, also when the signal lands inside a finalizer (``__del__``), where
a raised exception would be printed as "Exception ignored" and dropped (CI saw it once in
tqdm's ``__del__``: the training stage went on after its SIGTERM)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from helpers import REPO

SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, "pipeline")
    from _common import stop_on_sigterm

    stop_on_sigterm()

    class Finalised:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while __del__ still runs
            for _ in range(50):
                time.sleep(0.001)

    try:
        {body}
        for _ in range(300):  # 3 s: the stage "going on" after its SIGTERM
            time.sleep(0.01)
        print("went on")
    finally:
        print("finally ran")
""")


def run_script(body: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT.format(body=body)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_sigterm_inside_a_finalizer_still_stops_the_stage() -> None:
    done = run_script("del_me = Finalised(); del del_me")
    assert done.returncode == 143, done.stdout + done.stderr
    assert "went on" not in done.stdout
    assert "finally ran" in done.stdout
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr


def test_sigterm_elsewhere_stops_the_stage_at_once() -> None:
    done = run_script("os.kill(os.getpid(), signal.SIGTERM)")
    assert done.returncode == 143
    assert "went on" not in done.stdout and "finally ran" in done.stdout
