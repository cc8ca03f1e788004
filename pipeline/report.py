"""Stage `report`: reports/report.{md,html} + registry aliases (champion, challenger)."""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import run_stage

from mr2unet.data.prepared import load_split
from mr2unet.errors import UserError
from mr2unet.report import ReportInputs, read_history, write_report
from mr2unet.tracking import git_commit, read_run_info


def main(params: dict[str, Any]) -> None:
    models = params["train"]["models"]
    metrics, histories, predictions, runs = {}, {}, {}, {}
    for m in models:
        path = Path("metrics") / f"{m}.json"
        if not path.is_file():
            raise UserError(f"{path} not found: run `dvc repro evaluate@{m}` first.")
        metrics[m] = json.loads(path.read_text())
        histories[m] = read_history(Path("metrics/history") / f"{m}.csv")
        with np.load(Path("data/eval") / f"{m}_pred.npz") as data:
            predictions[m] = data["predictions"]
        runs[m] = read_run_info(Path("data/models") / f"{m}.run.json")
    split = load_split("data/prepared/test.npz")

    aliases: dict[str, str] = {}
    tracking = params["tracking"]
    if tracking["enabled"] and any(r.get("tracking") for r in runs.values()):
        from mr2unet.registry import set_aliases

        aliases = set_aliases(runs, {m: metrics[m]["mean"]["iou"] for m in models},
                              tracking["registry_prefix"], tracking["champion_alias"],
                              tracking["challenger_alias"])
    provenance = {
        "git commit": git_commit(),
        "params sha256": hashlib.sha256(json.dumps(params, sort_keys=True).encode())
        .hexdigest()[:16],
        "profile": params["profile"],
        "data source": params["data"]["source"],
        "epochs / lr / batch / base width": f"{params['train']['epochs']} / "
        f"{params['train']['lr']} / {params['train']['batch_size']} / "
        f"{params['train']['base_width']}",
        "test images": str(len(split)),
        "device (training)": str(torch.load(Path(f"data/models/{models[0]}.pt"),
                                            weights_only=True)["meta"].get("device", "?")),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    write_report(ReportInputs(metrics, histories, split.images, split.masks, split.categories,
                              predictions, provenance,
                              params["evaluate"]["report_samples"], aliases), Path("reports"))
    best = max(models, key=lambda m: metrics[m]["mean"]["iou"])
    print(f"report: reports/report.html (best: {best}, mean IOU "
          f"{metrics[best]['mean']['iou']:.4f})" + (f"; {aliases['best']}" if aliases else ""))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    run_stage(main, parser.parse_args().params)
