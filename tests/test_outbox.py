"""The on-disk outbox of a training run that tracks to a server (mr2unet.tracking.outbox),
without a server: what goes in comes back out, a resumed run reopens its box, a metric line
cut off by a crash is skipped, and the boxes still owed are listed oldest first."""

from __future__ import annotations

import os
from pathlib import Path

from mr2unet.tracking.outbox import METRICS, PENDING_DIR, Outbox, pending


def test_an_outbox_round_trip(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    box = Outbox.for_run("r1", root, run={"name": "unet"}, params={"lr": 0.1})
    assert box.directory == root / PENDING_DIR / "r1" and box.exists()
    box.update(params={"epochs": 3}, status="RUNNING")
    box.add_metrics([("loss", 0.5, 1000, 0), ("loss", 0.25, 2000, 1)])
    box.add_metrics([("iou", 0.125, 3000, 1)])
    with (box.directory / METRICS).open("a") as fh:
        fh.write('{"key": "lo')  # the process died while writing a line
    weights = tmp_path / "unet.pt"
    weights.write_bytes(b"weights")
    assert Path(box.attach(weights)).read_bytes() == b"weights"

    reopened = Outbox.for_run("r1", root, status="FINISHED")  # a resumed run: the same box
    assert reopened.record() == {"run_id": "r1", "run": {"name": "unet"},
                                 "params": {"lr": 0.1, "epochs": 3}, "status": "FINISHED"}
    assert reopened.metrics() == [
        {"key": "loss", "value": 0.5, "timestamp": 1000, "step": 0},
        {"key": "loss", "value": 0.25, "timestamp": 2000, "step": 1},
        {"key": "iou", "value": 0.125, "timestamp": 3000, "step": 1}]

    other = Outbox.for_run("r0", root)
    os.utime(other.directory / "record.json", (10, 10))  # r0 written before r1
    (root / PENDING_DIR / "empty").mkdir()  # a folder without a record is not owed
    assert [b.directory.name for b in pending(root)] == ["r0", "r1"]
    os.utime(other.directory / "record.json")  # now r0 is the newer one
    assert [b.directory.name for b in pending(root)] == ["r1", "r0"]
    box.remove()
    assert not box.exists() and [b.directory.name for b in pending(root)] == ["r0"]
