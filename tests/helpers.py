"""Helpers that several test modules share: tiny data, stand-in and briefly trained
networks, and a throw-away copy of the project. Test modules import them with
``from helpers import ...`` (pytest puts tests/ on ``sys.path``, as it does for conftest)."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from mr2unet.config import profiles
from mr2unet.config.params import load_params
from mr2unet.config.workspace import PREPARED, ModelFiles
from mr2unet.data.prepared import PreparedSplit
from mr2unet.data.transforms import to_input
from mr2unet.deploy.export import random_images
from mr2unet.models import build_model
from mr2unet.models.checkpoint import save_model
from mr2unet.training.config import TrainConfig
from mr2unet.training.options import RunOptions

REPO = Path(__file__).resolve().parents[1]

# A tiny U-Net run: 4 epochs of 12 images at 32 px.
CFG = TrainConfig(arch="unet", epochs=4, batch_size=4, lr=3e-3, base_width=4, seed=3)
# ...on the CPU, a checkpoint every epoch (the resume tests stop it between epochs)
RUN = RunOptions(device="cpu", checkpoint_every=1, log_every=1)


def tiny_split(n: int = 12, size: int = 32, seed: int = 0) -> PreparedSplit:
    """Bright squares on noise; the mask is the square."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        y, x = rng.integers(0, size - 10, 2)
        h, w = rng.integers(4, 10, 2)
        masks[i, y:y + h, x:x + w] = 1
        images[i, y:y + h, x:x + w] = 220
    cats = np.array(["a", "b"] * (n // 2))
    names = np.array([f"{i}.png" for i in range(n)])
    return PreparedSplit(images, masks, cats, np.array(["d"] * n), names)


def states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class RedThreshold(nn.Module):
    """Stand-in network: a pixel is a defect where its red channel exceeds 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = x[:, 0] - 0.5
        return torch.stack([torch.zeros_like(red), red], dim=1)


def briefly_trained(arch: str, size: int = 64, steps: int = 12, width: int = 8) -> nn.Module:
    """A network after a few Adam steps on a learnable task (defect = strongly red pixel),
    its head's bias then set so that the median pixel sits on the decision boundary."""
    torch.manual_seed(0)
    model = build_model(arch, base_width=width)
    images = random_images(16, size, seed=1)
    x = to_input(torch.from_numpy(images))
    target = torch.from_numpy((images[..., 0] > 180).astype(np.int64))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        batch = torch.arange(4 * step, 4 * step + 4) % len(images)
        loss = nn.functional.cross_entropy(model(x[batch]), target[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        z = model.eval()(x)
        model.head.bias[1] -= (z[:, 1] - z[:, 0]).median()
    return model


def stage_module(name: str, monkeypatch: Any) -> ModuleType:
    """``pipeline/<name>.py`` imported as a module (to call a stage's own functions):
    pipeline/ on the path for its ``_common`` import, and the module registered (its
    dataclasses look it up), both undone by ``monkeypatch`` after the test."""
    monkeypatch.syspath_prepend(str(REPO / "pipeline"))
    spec = importlib.util.spec_from_file_location(f"stage_{name}", REPO / "pipeline" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                          text=True).stdout.strip()


def project_copy(dest: Path, profile: dict[str, Any]) -> Path:
    """A git repository holding this project's files (tracked and untracked but not
    ignored) with ``profile`` (an overlay like profiles/*.yaml) applied to params.yaml as
    the profile ``tiny``, all committed."""
    dest.mkdir(parents=True, exist_ok=True)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    (dest / "profiles" / "tiny.yaml").write_text(yaml.safe_dump(profile))
    profiles.apply("tiny", dest / "params.yaml", dest)
    for args in (["init", "-q"], ["config", "user.email", "t@t"], ["config", "user.name", "t"],
                 ["add", "-A"], ["commit", "-qm", "tiny project"]):
        git(dest, *args)
    return dest


# ------------------------------------------ evaluation and report fixtures (fake project)

SIZE = 32
# Defect areas (pixels) of the fake test images: 3 "bottle" (a paper category), 3 "weave".
AREAS = {"bottle": [16, 64, 4], "weave": [100, 1, 36]}


def constant_model(arch: str, defect: bool) -> nn.Module:
    """A real (tiny) architecture whose output is the head's bias: all defect or none."""
    model = build_model(arch, base_width=4)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([0.0, 1.0] if defect else [1.0, 0.0]))
    return model


def fake_split() -> PreparedSplit:
    """Six test images whose defects are squares of the areas in AREAS, top-left."""
    rng = np.random.default_rng(0)
    images, masks, categories, types = [], [], [], []
    for category, areas in AREAS.items():
        for i, area in enumerate(areas):
            side = int(area ** 0.5)
            mask = np.zeros((SIZE, SIZE), np.uint8)
            mask[:side, :side] = 1
            images.append(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
            masks.append(mask)
            categories.append(category)
            types.append("crack" if i % 2 else "hole")
    return PreparedSplit(np.stack(images), np.stack(masks), np.array(categories),
                         np.array(types), np.array([f"{c}/test/{i}.png" for i, c in
                                                    enumerate(categories)]))


def stage_params(models: list[str]) -> dict[str, Any]:
    params = copy.deepcopy(load_params(REPO / "params.yaml"))
    params["train"]["models"] = models
    params["run"]["device"] = "cpu"
    params["evaluate"].update(batch_size=4, report_samples=2)
    params["tracking"]["enabled"] = False
    return params


def fake_project(root: Path, models: dict[str, nn.Module]) -> Path:
    """The files `evaluate` and `report` read: test split, checkpoints, histories."""
    fake_split().save(root / PREPARED.test)
    fake_split().save(root / "data/prepared/train.npz")  # the verdict's intensity baseline
    for arch, model in models.items():
        files = ModelFiles(arch, root)
        save_model(files.checkpoint, model, arch, {"base_width": 4}, SIZE,
                   meta={"device": "cpu", "epochs": 3, "git_commit": "abc123"})
        files.history.parent.mkdir(parents=True, exist_ok=True)
        files.history.write_text("epoch,loss,train_iou,train_dice,lr,seconds\n" + "".join(
            f"{e},{1 / e:.4f},{e / 10:.4f},{e / 8:.4f},0.001,1.0\n" for e in (1, 2, 3)))
    return root


# ------------------------------------------------- DVC projects (tests/test_pipeline.py)

BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_NO_UPDATE_CHECK": "1",
       "PYTHONHASHSEED": "0", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
ENV.pop("MLFLOW_TRACKING_URI", None)

TINY = {
    "data": {"source": "synthetic"},
    "synthetic": {"images_per_defect": 2},
    "train": {"epochs": 3, "batch_size": 8, "base_width": 4, "lr": 3.0e-3},
    "run": {"checkpoint_every": 1, "device": "cpu"},
    "evaluate": {"report_samples": 1},
}


def run(cmd: list[str], cwd: Path, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env or ENV, capture_output=True, text=True, **kw)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def make_project(dest: Path, models: list[str], tracking: bool = False) -> Path:
    """A git repo holding the tracked files of this project, params.yaml at tiny values."""
    return project_copy(dest, {**TINY, "tracking": {"enabled": tracking},
                               "train": {**TINY["train"], "models": models}})


def set_param(project: Path, dotted: str, value: object) -> None:
    """Change one value of params.yaml as a user would, keeping the file's comments."""
    text = (project / "params.yaml").read_text()
    section, key = dotted.split(".")
    pattern = re.compile(rf"(?ms)(^{section}:\n.*?^  {key}: )[^\n]*")
    new, count = pattern.subn(lambda m: m.group(1) + yaml.safe_dump(value).split("\n")[0],
                              text, count=1)
    assert count == 1, dotted
    (project / "params.yaml").write_text(new)


def stale_stages(project: Path) -> set[str]:
    """The stages `dvc status` reports as changed."""
    out = run([DVC, "status", "--json"], project).stdout
    return set(json.loads(out or "{}"))


def register_version(client: Any, uri: str, arch: str, checkpoint: Path, experiment: str
              ) -> dict[str, Any]:
    """A version of mr2unet-<arch> whose artifacts hold ``checkpoint``, and its run info."""
    run = client.create_run(experiment)
    client.log_artifact(run.info.run_id, str(checkpoint), "model")
    name = f"mr2unet-{arch}"
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, f"{run.info.artifact_uri}/model",
                                          run_id=run.info.run_id)
    return {"tracking": True, "tracking_uri": uri, "run_id": run.info.run_id,
            "registered_model": name, "model_version": str(version.version)}


def checkpoint_epoch(path: Path) -> int:
    """The epoch a training checkpoint holds; 0 while it is not (completely) written."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # noqa: BLE001 - not written yet, or being replaced
        return 0


def project_processes(project: Path) -> list[str]:
    """The command lines of the live processes whose working directory is ``project``."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cwd", "cmdline", "status"]):
        try:
            if proc.info["cwd"] == str(project) and proc.info["status"] != "zombie":
                found.append(" ".join(proc.info["cmdline"] or []))
        except psutil.Error:
            continue
    return found


def line_sheet(root: Path, n: int, size: int, line_value: int | tuple[int, int, int],
               seed: int = 0, margin: int = 20) -> Path:
    """An MVTec tree ``sheet/test/line/*.png``: grey noise (mean 150, sd 12) and one line
    2 px wide of ``line_value`` (a grey level, or an RGB colour on a 3-channel image) at a
    random place and angle, its mask in ``sheet/ground_truth/line/<stem>_mask.png``."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for i in range(n):
        image = rng.normal(150, 12, (size, size)).clip(0, 255)
        if isinstance(line_value, tuple):
            image = np.repeat(image[..., None], 3, axis=2)
        mask = Image.new("L", (size, size), 0)
        x0, y0 = rng.integers(margin, size - margin, 2)
        angle, length = rng.uniform(0, np.pi), rng.integers(size // 3, size // 2)
        ImageDraw.Draw(mask).line(
            [(x0, y0), (x0 + length * np.cos(angle), y0 + length * np.sin(angle))],
            fill=255, width=2)
        image[np.asarray(mask) > 0] = line_value
        for sub, array, name in (("test", image, f"{i:03d}.png"),
                                 ("ground_truth", np.asarray(mask), f"{i:03d}_mask.png")):
            path = root / "sheet" / sub / "line" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array.astype(np.uint8)).save(path)
    return root
