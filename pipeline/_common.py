"""Shared start-up for the stage scripts: logging, params, and clean user errors."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from mr2unet.config.params import load_params
from mr2unet.errors import UserError
from mr2unet.models import check_model_params

REPO_ROOT = Path(__file__).resolve().parent.parent


def in_finalizer(frame: FrameType | None) -> bool:
    """Whether ``frame`` (where a signal interrupted the program) runs inside a ``__del__``."""
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def stop_on_sigterm() -> None:
    """SIGTERM raises SystemExit(143): ``finally`` blocks run (the run is marked FAILED,
    the checkpoint written so far stays) instead of the process vanishing mid-write.

    Also when the parent goes away (``kill <dvc pid>`` leaves its stage orphaned): a
    watcher thread sees the parent change and sends this process SIGTERM.
    """
    def handler(signum: int, frame: FrameType | None) -> None:
        if in_finalizer(frame):
            # An exception raised inside __del__ (tqdm's, a tensor's) is printed as
            # "Exception ignored" and dropped, and training would go on: ask again shortly,
            # once the finalizer has returned.
            threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
            return
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        print(f"error: the parent process {parent} ended: stopping", file=sys.stderr)
        os.kill(os.getpid(), signal.SIGTERM)

    if parent > 1:
        threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run_stage(body: Callable[[dict[str, Any]], None], params_path: str = "params.yaml") -> None:
    """Load and validate params (the model names against the registry too), run
    ``body(params)``; a UserError exits 2 with its message."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop_on_sigterm()
    try:
        params = load_params(params_path)
        check_model_params(params)
        body(params)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def _parser(doc: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml",
                        help="the params file (default: %(default)s)")
    return parser


def run_stage_cli(body: Callable[[dict[str, Any]], None], doc: str | None) -> None:
    """Command line of a stage that takes no argument (``download``, ``prepare``, ...)."""
    run_stage(body, _parser(doc).parse_args().params)


def run_model_stage(body: Callable[[dict[str, Any], Any], None], doc: str | None,
                    verb: str) -> None:
    """Command line of a per-model stage (``train@<model>``, ``evaluate@<model>``)."""
    parser = _parser(doc)
    parser.add_argument("model", help=f"architecture to {verb} (one of params.yaml train.models)")
    args = parser.parse_args()
    run_stage(lambda params: body(params, args.model), args.params)
