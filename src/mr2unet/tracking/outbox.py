"""What a training run owes a tracking server, kept on disk until the server has it.

With a tracking server (``http(s)://``) a training stage writes everything it tracks here
first: ``data/tracking/pending/<run_id>/`` at the project root holds ``record.json`` (the
run, its params and tags, and at the end the model and its registry entry), one line per
logged metric in ``metrics.jsonl``, and copies of the model file and history CSV. The
metrics go to the server from a background thread; whatever did not arrive is sent by
:func:`mr2unet.tracking.sync.sync_outbox` at the end of the stage or by
``mr2unet tracking sync``, which removes the folder once the server has all of it.
Nothing here imports MLflow.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mr2unet.config.workspace import project_root

PENDING_DIR = Path("data") / "tracking" / "pending"
RECORD = "record.json"
METRICS = "metrics.jsonl"


def pending_root(root: str | Path = ".") -> Path:
    """Where the outboxes of ``root``'s project live (the repo's, also from a DVC exp)."""
    return project_root(root) / PENDING_DIR


@dataclass(frozen=True)
class Outbox:
    """One run's outbox folder (see the module docstring)."""

    directory: Path

    @classmethod
    def for_run(cls, run_id: str, root: str | Path = ".", **record: Any) -> Outbox:
        """The outbox of ``run_id`` (created, or reopened for a resumed run), updated."""
        box = cls(pending_root(root) / run_id)
        box.directory.mkdir(parents=True, exist_ok=True)
        box.update(run_id=run_id, **record)
        return box

    @property
    def lock_path(self) -> Path:
        """Held while the outbox is synced, so that two processes never send it twice."""
        return self.directory.parent / f"{self.directory.name}.lock"

    def exists(self) -> bool:
        return (self.directory / RECORD).is_file()

    def record(self) -> dict[str, Any]:
        path = self.directory / RECORD
        return json.loads(path.read_text()) if path.is_file() else {}

    def update(self, **fields: Any) -> None:
        """Merge ``fields`` into the record (dicts one level deep), atomically."""
        record = self.record()
        for key, value in fields.items():
            if isinstance(value, dict) and isinstance(record.get(key), dict):
                record[key] = {**record[key], **value}
            else:
                record[key] = value
        tmp = self.directory / f"{RECORD}.tmp"
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.directory / RECORD)

    def add_metrics(self, metrics: Iterable[tuple[str, float, int, int]]) -> None:
        """Append ``(key, value, timestamp_ms, step)`` rows (one JSON line each)."""
        lines = "".join(json.dumps({"key": k, "value": v, "timestamp": t, "step": s}) + "\n"
                        for k, v, t, s in metrics)
        with (self.directory / METRICS).open("a") as fh:
            fh.write(lines)
            fh.flush()

    def metrics(self) -> list[dict[str, Any]]:
        """The logged metrics, in order; a line cut off by a crash is left out."""
        path = self.directory / METRICS
        rows = []
        for line in path.read_text().splitlines() if path.is_file() else []:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    def attach(self, source: Path) -> str:
        """Copy ``source`` into the outbox (its name kept); the path to record."""
        target = self.directory / source.name
        shutil.copy2(source, target)
        return str(target)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def pending(root: str | Path = ".") -> list[Outbox]:
    """The outboxes still waiting for a server, oldest first."""
    base = pending_root(root)
    boxes = [Outbox(d) for d in base.iterdir() if d.is_dir()] if base.is_dir() else []
    return sorted((b for b in boxes if b.exists()),
                  key=lambda b: (b.directory / RECORD).stat().st_mtime)
