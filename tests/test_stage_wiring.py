"""The stages wired together as the pipeline runs them (issue #33): the evaluate, report and
promote stage scripts run as `dvc repro` calls them (``python pipeline/<stage>.py`` in a
copy of the project, tracking to its SQLite store) on models registered as the train stage
registers them, and what they leave in MLflow is read back. The report only reads; the
promote stage sets the aliases.

Who gets an alias: a network that learned (a tiny U-Net trained in this process on red
squares, which a grey-level threshold cannot find) and one that cannot learn (a real
MR2U-Net whose head outputs "defect everywhere": not collapsed, so only its verdict keeps
it from an alias). Only the first becomes `champion`;
the second loses the `challenger` alias a previous run gave it, on its own registered model
and on `mr2unet-best`; each run and version carries its `verdict` tag. Then a run where
neither learned removes every alias from every registered model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import ENV, constant_model, project_copy, register_version
from torch import nn

from mr2unet.config.workspace import PREPARED, ModelFiles
from mr2unet.data.prepared import PreparedSplit
from mr2unet.data.transforms import to_input
from mr2unet.models import build_model
from mr2unet.models.checkpoint import save_model

pytestmark = pytest.mark.slow
mlflow = pytest.importorskip("mlflow")

SIZE = 32
WIDTH = 4
NETWORKS = ("unet", "mr2unet")


def red_squares(n: int, seed: int) -> PreparedSplit:
    """Grey noise with one pure-red square per image, the square the mask. Its grey level
    (85) lies inside the noise's range, so the verdict's grey-threshold baseline finds it
    poorly, while a network sees red against grey at once. Two categories."""
    rng = np.random.default_rng(seed)
    images = np.repeat(rng.integers(0, 256, (n, SIZE, SIZE, 1), dtype=np.uint8), 3, axis=3)
    masks = np.zeros((n, SIZE, SIZE), np.uint8)
    for i in range(n):
        y, x = rng.integers(0, SIZE - 12, 2)
        h, w = rng.integers(5, 12, 2)
        masks[i, y:y + h, x:x + w] = 1
        images[i, y:y + h, x:x + w] = (255, 0, 0)
    categories = np.array(["bottle", "grid"] * (n // 2))
    return PreparedSplit(images, masks, categories, np.array(["crack"] * n),
                         np.array([f"{c}/test/crack/{i:03d}.png" for i, c in
                                   enumerate(categories)]))


def trained_unet(train: PreparedSplit, steps: int = 150) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("unet", base_width=WIDTH)
    x = to_input(torch.from_numpy(train.images))
    y = torch.from_numpy(train.masks.astype(np.int64))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        batch = torch.arange(8 * step, 8 * step + 8) % len(x)
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def stage(project: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, *args], cwd=project, env=ENV,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


def place_models(project: Path, client: Any, uri: str, experiment: str,
                 models: dict[str, nn.Module]) -> dict[str, dict[str, Any]]:
    """Model files, histories and run infos as the train stages leave them."""
    runs = {}
    for arch, model in models.items():
        files = ModelFiles(arch, project)
        save_model(files.checkpoint, model, arch, {"base_width": WIDTH}, SIZE,
                   meta={"device": "cpu", "epochs": 3, "git_commit": "abc123"})
        files.history.parent.mkdir(parents=True, exist_ok=True)
        files.history.write_text("epoch,loss,train_iou,train_dice,lr,seconds\n" + "".join(
            f"{e},{1 / e:.4f},{e / 10:.4f},{e / 8:.4f},0.001,1.0\n" for e in (1, 2, 3)))
        runs[arch] = register_version(client, uri, arch, files.checkpoint, experiment)
        client.set_terminated(runs[arch]["run_id"])  # as the train stage leaves it
        files.run_info.write_text(json.dumps(runs[arch]))
    return runs


def evaluate_and_report(project: Path) -> dict[str, str]:
    """Both evaluate stages, then report; each network's verdict from its pooled file."""
    for arch in NETWORKS:
        stage(project, "pipeline/evaluate.py", arch)
    stage(project, "pipeline/report.py")
    return {arch: json.loads((project / f"metrics/evaluation/{arch}.json").read_text())
            ["verdict"]["verdict"] for arch in NETWORKS}


def promote(project: Path) -> dict[str, Any]:
    """The promote stage, which sets the aliases; what it says it set."""
    stage(project, "pipeline/promote.py")
    return json.loads((project / "data/promotion.json").read_text())


def aliases(client: Any) -> dict[str, dict[str, int]]:
    return {m.name: dict(m.aliases) for m in client.search_registered_models()}


def test_only_a_learned_network_gets_an_alias_and_none_learned_removes_them(
        tmp_path: Path) -> None:
    project = project_copy(tmp_path / "p", {
        "tracking": {"enabled": True},
        "train": {"models": list(NETWORKS), "base_width": WIDTH},
        "run": {"device": "cpu"},
        "prepare": {"image_size": SIZE},
        "evaluate": {"report_samples": 1, "batch_size": 8}})
    train, test = red_squares(32, seed=0), red_squares(12, seed=1)
    train.save(project / "data/prepared/train.npz")
    test.save(project / PREPARED.test)
    uri = f"sqlite:///{project}/mlflow.db"
    client = mlflow.MlflowClient(uri, uri)
    experiment = client.create_experiment("mr2unet", str(project / "mlruns"))

    runs = place_models(project, client, uri, experiment,
                        {"unet": trained_unet(train),
                         "mr2unet": constant_model("mr2unet", True)})
    # The previous run's aliases: MR2U-Net was the challenger, on its model and on -best.
    from mr2unet.tracking.registry import set_aliases

    set_aliases(runs, {"unet": 0.9, "mr2unet": 0.8}, "mr2unet-")
    assert aliases(client)["mr2unet-mr2unet"] == {"challenger": 1}
    assert set(aliases(client)["mr2unet-best"]) == {"champion", "challenger"}

    before = aliases(client)
    verdicts = evaluate_and_report(project)
    assert verdicts == {"unet": "learned", "mr2unet": "not learned"}
    assert aliases(client) == before  # the report only reads: promote sets the aliases
    promotion = promote(project)
    assert promotion["excluded"] == {"mr2unet": "not learned"}
    assert {(a["alias"], a["registered_model"]) for a in promotion["aliases"]} == {
        ("champion", "mr2unet-unet"), ("champion", "mr2unet-best")}
    found = aliases(client)
    assert found["mr2unet-unet"] == {"champion": int(runs["unet"]["model_version"])}
    assert found["mr2unet-mr2unet"] == {}
    assert set(found["mr2unet-best"]) == {"champion"}  # the stale challenger is gone
    best = client.get_model_version_by_alias("mr2unet-best", "champion")
    assert best.tags["arch"] == "unet"
    for arch, verdict in verdicts.items():  # the verdict tag, on the run and on the version
        assert client.get_run(runs[arch]["run_id"]).data.tags["verdict"] == verdict
        version = client.get_model_version(f"mr2unet-{arch}", runs[arch]["model_version"])
        assert version.tags["verdict"] == verdict
        assert float(version.tags["test_iou_mean"]) == pytest.approx(json.loads(
            (project / f"metrics/{arch}.json").read_text())["mean"]["iou"], abs=1e-6)
    md = (project / "reports/report.md").read_text()
    assert "**No network has learned" not in md

    # Next run: neither learned (U-Net now outputs "defect everywhere").
    runs = place_models(project, client, uri, experiment,
                        {"unet": constant_model("unet", True),
                         "mr2unet": constant_model("mr2unet", False)})
    assert evaluate_and_report(project) == {"unet": "not learned", "mr2unet": "not learned"}
    assert promote(project)["aliases"] == []
    found = aliases(client)
    assert set(found) == {"mr2unet-unet", "mr2unet-mr2unet", "mr2unet-best"}
    assert all(held == {} for held in found.values()), found
    for arch in NETWORKS:
        assert client.get_run(runs[arch]["run_id"]).data.tags["verdict"] == "not learned"
    md = (project / "reports/report.md").read_text()
    assert "**No network has learned" in md[:md.index("## Provenance")]
