"""The worker processes (``gpu_check.py --worker spec.json``): one training job each."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from train_throughput import (
    plain_images_per_second,
    random_split,
    steady_images_per_second,
    write_pngs,
)

from gpucheck.settings import (
    AGREEMENT_TARGET,
    COMPILE_MODE,
    MODES,
    Sizes,
    config,
    states_equal,
    write_json,
)
from mr2unet.data.prepared import PreparedSplit, load_split
from mr2unet.training.loop import TrainConfig, train


class _Stop(Exception):  # noqa: N818 - a signal, not an error
    """Raised from ``on_epoch_end`` to end a run at its deadline."""


def timed_train(cfg: TrainConfig, split: PreparedSplit, deadline: float, min_epochs: int,
                checkpoint_dir: Path | None = None, lookahead: bool = False
                ) -> tuple[Any, list[dict[str, float]]]:
    """Train, stopping after the epoch that ends past ``deadline`` (once ``min_epochs``
    are done); (result or None when stopped, history rows with wall-clock ``end``).

    With ``lookahead``, it stops one epoch sooner: after the epoch past which another as
    long would end past ``deadline`` (so a run in this process ends by its deadline).
    """
    rows: list[dict[str, float]] = []

    def on_epoch_end(row: dict[str, float]) -> None:
        rows.append({**row, "end": time.time()})
        late = time.time() + (row["seconds"] if lookahead else 0.0) > deadline
        if len(rows) >= min_epochs and late and row["epoch"] < cfg.epochs:
            raise _Stop

    try:
        return train(cfg, split, checkpoint_dir=checkpoint_dir, on_epoch_end=on_epoch_end,
                     progress=False), rows
    except _Stop:
        return None, rows


def _kill_at_last(row: dict[str, float]) -> None:
    """Stop a run before the end of its last epoch is saved (a kill after epoch N - 1)."""
    if row["epoch"] >= 2:
        raise _Stop


def _scores(model: torch.nn.Module, split: PreparedSplit, device: torch.device) -> dict[str, Any]:
    from mr2unet.evaluation.evaluate import evaluate
    from mr2unet.metrics.segmentation import mean_scores

    result = evaluate(model, split, device, batch_size=32, progress=False)
    return {**mean_scores(result.counts), "device": str(device)}


def agreement(model: torch.nn.Module, images: np.ndarray, device: torch.device) -> float:
    """Share of pixels whose predicted mask is the same on ``device`` and on the CPU."""
    from mr2unet.evaluation.evaluate import predict_masks

    on_device = predict_masks(copy.deepcopy(model), images, device, progress=False)
    on_cpu = predict_masks(copy.deepcopy(model).float(), images, torch.device("cpu"),
                           progress=False)
    return float((on_device == on_cpu).mean())


def nondeterministic_ops(caught: list[warnings.WarningMessage]) -> list[str]:
    """The kernels PyTorch warned have no deterministic implementation (warn_only mode)."""
    ops = set()
    for w in caught:
        text = str(w.message)
        if "does not have a deterministic implementation" in text:
            ops.add(text.split(" does not have")[0].strip())
    return sorted(ops)


def work_correctness(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    """Phase a for one network (see the module docstring)."""
    from mr2unet.deploy.predict import LoadedModel, predict_images

    sizes, arch = Sizes(**spec["sizes"]), spec["arch"]
    train_split, test_split = load_split(spec["train"]), load_split(spec["test"])
    cfg = dataclasses.replace(config(arch, sizes), epochs=sizes.correctness_epochs,
                              checkpoint_every=1)
    device = torch.device(sizes.device)
    res: dict[str, Any] = {"arch": arch, "settings": {k: getattr(cfg, k) for k in (
        "precision", "channels_last", "deterministic", "compile", "adam_impl", "cuda_graphs")}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = train(cfg, train_split, progress=False)
        losses = [row["loss"] for row in first.history]
        res.update(loss=losses, finite=all(math.isfinite(v) for v in losses),
                   falling=losses[-1] < losses[0])
        write_json(out, res)
        second = train(cfg, train_split, progress=False)
        res["repeat_identical"], res["repeat_max_abs_diff"] = states_equal(first.model,
                                                                           second.model)
        with tempfile.TemporaryDirectory() as tmp:
            # Killed during epoch 2's bookkeeping: epoch 1's checkpoint is there.
            with contextlib.suppress(_Stop):
                train(cfg, train_split, checkpoint_dir=Path(tmp), on_epoch_end=_kill_at_last,
                      progress=False)
            resumed = train(cfg, train_split, checkpoint_dir=Path(tmp), progress=False)
        res["resumed_from_epoch"] = resumed.resumed_from_epoch
        res["resume_identical"], res["resume_max_abs_diff"] = states_equal(first.model,
                                                                           resumed.model)
        # The CUDA-graph lever must compute what the eager loop computes (on the CPU it is
        # a no-op, so the smoke run checks only the plumbing).
        graphed = train(dataclasses.replace(cfg, cuda_graphs=True), train_split, progress=False)
        res["graphs_identical"], res["graphs_max_abs_diff"] = states_equal(first.model,
                                                                           graphed.model)
        res["graphs_loss"] = [row["loss"] for row in graphed.history]
    res["nondeterministic_ops"] = nondeterministic_ops(caught)
    write_json(out, res)
    res["evaluate"] = _scores(first.model, test_split, device)
    with tempfile.TemporaryDirectory() as tmp:
        pngs = [Path(tmp) / f"{i}.png" for i in range(min(3, len(test_split)))]
        for path, image in zip(pngs, test_split.images, strict=False):
            from PIL import Image

            Image.fromarray(image).save(path)
        written = predict_images(LoadedModel(copy.deepcopy(first.model), sizes.image_size,
                                             "gpu_check"), pngs, Path(tmp) / "out", device)
        res["predict"] = {"device": str(device), "written": len(written.written),
                          "failed": len(written.failed)}
    res["cuda_cpu_agreement"] = agreement(first.model, test_split.images, device)
    res["agreement_ok"] = res["cuda_cpu_agreement"] >= AGREEMENT_TARGET
    return res


def work_throughput(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    """Phase b for one network: images/s of ``ours``, each lever set and the plain loop."""
    sizes, arch = Sizes(**spec["sizes"]), spec["arch"]
    split = random_split(sizes.bench_images, sizes.image_size)
    res: dict[str, Any] = {"arch": arch, "images": len(split), "timed_epochs": sizes.bench_epochs,
                           "modes": {}, "errors": {}}
    modes = dict(MODES, **({"compile": COMPILE_MODE} if spec.get("try_compile") else {}))
    measured = spec.get("measured") or {}  # an earlier call's (--previous): not again
    with tempfile.TemporaryDirectory() as tmp:
        write_pngs(split, Path(tmp))
        # The expected winner first after the two references: a kill keeps what was measured.
        for name in ("ours", "plain", *reversed([m for m in modes if m != "ours"])):
            if name in measured:
                continue
            try:
                if name == "plain":
                    speed = plain_images_per_second(config(arch, sizes), Path(tmp), len(split),
                                                    sizes.bench_epochs)
                else:
                    cfg = dataclasses.replace(config(arch, sizes, **modes[name]),
                                              epochs=sizes.bench_epochs + 1)
                    speed = steady_images_per_second(train(cfg, split, progress=False).history,
                                                     len(split))
                res["modes"][name] = speed
            except Exception as exc:  # noqa: BLE001 - record it, measure the others
                res["errors"][name] = f"{type(exc).__name__}: {exc}"[:500]
            write_json(out, res)
    return res


def work_protocol(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    """Phase c for one network: the paper's epochs on 1006 random images, until the deadline."""
    sizes, arch = Sizes(**spec["sizes"]), spec["arch"]
    split = random_split(sizes.protocol_images, sizes.image_size)
    cfg = dataclasses.replace(config(arch, sizes, **spec["mode"]), epochs=sizes.protocol_epochs)
    result, rows = timed_train(cfg, split, spec["deadline"], sizes.min_steady_epochs + 1)
    return {"arch": arch, "mode": spec["mode_name"], "images": len(split),
            "epochs_done": len(rows), "finished": result is not None,
            "epoch_seconds": [row["seconds"] for row in rows],
            "epoch_ends": [row["end"] for row in rows]}


def work_bottle(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    """Phase d for one network and seed: train with the paper's protocol, test on bottle."""
    sizes, arch = Sizes(**spec["sizes"]), spec["arch"]
    train_split, test_split = load_split(spec["train"]), load_split(spec["test"])
    cfg = dataclasses.replace(config(arch, sizes, **spec["mode"]), epochs=spec["epochs"],
                              seed=spec["seed"])
    device = torch.device(sizes.device)
    result, rows = timed_train(cfg, train_split, spec["deadline"], 1)
    if result is None:  # stopped at the deadline: no weights to evaluate
        return {"arch": arch, "seed": spec["seed"], "epochs_done": len(rows),
                "finished": False, "final_loss": rows[-1]["loss"] if rows else None}
    res = {"arch": arch, "seed": spec["seed"], "epochs_done": len(rows), "finished": True,
           "final_loss": result.history[-1]["loss"], "seconds": result.seconds,
           **_scores(result.model, test_split, device)}
    if spec.get("agreement"):
        res["cuda_cpu_agreement"] = agreement(result.model, test_split.images, device)
    return res


WORKERS: dict[str, Callable[[dict[str, Any], Path], dict[str, Any]]] = {
    "correctness": work_correctness, "throughput": work_throughput,
    "protocol": work_protocol, "bottle": work_bottle}


def run_worker(spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    out = Path(spec["out"])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    result = WORKERS[spec["kind"]](spec, out)
    write_json(out, {**result, "complete": True})

