"""``gpu_check.json`` and ``gpu_check.log``, written after every phase, and the table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from train_throughput import (
    PAPER_EPOCHS,
    PAPER_TRAIN_IMAGES,
)

from gpucheck.settings import PAPER_BOTTLE, write_json


class Report:
    """``gpu_check.json`` (rewritten after every step) and the log, under ``out``."""

    def __init__(self, out: Path, data: dict[str, Any]) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.json, self.log_file, self.data = out / "gpu_check.json", out / "gpu_check.log", data
        self.log_file.write_text("")
        self.start = time.time()

    def log(self, message: str) -> None:
        line = f"[{time.time() - self.start:6.1f}s] {message}"
        print(line, flush=True)
        with self.log_file.open("a") as fh:
            fh.write(line + "\n")

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.time() - self.start, 1)
        write_json(self.json, self.data)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(data: dict[str, Any]) -> str:
    """The short table printed last."""
    lines = [f"device: {data['device']}  torch {data['torch']}  "
             f"({data['elapsed_s']} s, phases {', '.join(data['phases_done']) or 'none'})",
             "network        | ours img/s | fastest img/s (mode)     | plain | x plain | "
             "loss falls | resume identical | graphs = eager | dev/CPU masks | "
             "bottle IOU (paper)  | "
             "bottle Dice (paper)"]
    for arch in data["models"]:
        t = data["throughput"].get(arch, {})
        c = data["correctness"].get(arch, {})
        b = data["bottle"].get(arch, {})
        ratio = (t["fastest"] / t["plain"]) if t.get("fastest") and t.get("plain") else None
        lines.append(
            f"{arch:<14} | {_fmt(t.get('ours'), 1):>10} | "
            f"{_fmt(t.get('fastest'), 1):>8} ({t.get('fastest_mode') or '-':<14}) | "
            f"{_fmt(t.get('plain'), 1):>5} | {_fmt(ratio, 2):>7} | "
            f"{str(c.get('falling', '-')):>10} | {str(c.get('resume_identical', '-')):>16} | "
            f"{str(c.get('graphs_identical', '-')):>14} | "
            f"{_fmt(c.get('cuda_cpu_agreement'), 5):>13} | "
            f"{_fmt(b.get('iou_mean'))}±{_fmt(b.get('iou_std'), 3)} ({PAPER_BOTTLE[arch][0]}) | "
            f"{_fmt(b.get('dice_mean'))}±{_fmt(b.get('dice_std'), 3)} ({PAPER_BOTTLE[arch][1]})")
    minutes = data["full_protocol_minutes"]
    measured = data["full_protocol"].get("measured", False)  # phase c's (e has its line)
    lines.append(f"paper protocol (4 x {PAPER_EPOCHS} epochs x {PAPER_TRAIN_IMAGES} images): "
                 f"{_fmt(minutes, 2)} min, "
                 f"{'measured' if measured else 'projected'}"
                 f" ({data['full_protocol'].get('strategy') or '-'}); bottle epochs "
                 f"{data['bottle_epochs'] or '-'} of {PAPER_EPOCHS}")
    run = data.get("protocol_run") or {}
    if run:
        seconds = run["full_protocol_wall_s"] or run["projected_s"]
        done = sum(row["finished"] for row in run["networks"].values())
        lines.append(
            f"protocol run (params.yaml as committed, one network after another, "
            f"{run['epochs']} epochs x {run['images']} images): "
            f"{_fmt(seconds / 60 if seconds else None, 2)} min, "
            f"{'measured' if run['full_protocol_measured'] else 'projected'} ({done} of "
            f"{len(run['networks'])} networks finished); plain loop's time / ours "
            f"{_fmt(run['vs_plain'], 2)}")
    return "\n".join(lines)


