"""Constants, run sizes and the committed training settings of the GPU check."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

import torch
import yaml
from train_throughput import PAPER_EPOCHS, PAPER_TRAIN_IMAGES

from mr2unet.training.loop import TrainConfig

REPO = Path(__file__).resolve().parents[2]
# The script the worker processes run (and the one entry point).
ENTRY = REPO / "benchmarks" / "gpu_check.py"
ARCHIVE = REPO.parent / "shared" / "data" / "mvtec_ad_bottle_test.tar.xz"
DEFAULT_DATA = REPO / "device_data" / "bottle"
MODELS = ("unet", "resunet", "attention_unet", "mr2unet")
# The paper's Table 1, bottle row: (IOU, Dice).
PAPER_BOTTLE = {"unet": (0.5976, 0.7298), "resunet": (0.7052, 0.8117),
                "attention_unet": (0.6476, 0.7532), "mr2unet": (0.6547, 0.7608)}
# Lever sets measured in phase b, each on top of the committed settings; cumulative, so
# the table shows what each lever adds.
MODES: dict[str, dict[str, Any]] = {
    "ours": {},
    "fused_adam": {"adam_impl": "fused"},
    "no_determinism": {"adam_impl": "fused", "deterministic": False},
    "cuda_graphs": {"adam_impl": "fused", "deterministic": False, "cuda_graphs": True},
}
COMPILE_MODE = {"adam_impl": "fused", "deterministic": False, "compile": "reduce-overhead"}
AGREEMENT_TARGET = 0.999
# Relative cost of a phase-b worker (MR2U-Net's many narrow convolutions are the slowest):
# its share of the phase's time.
COST = {"unet": 1.0, "resunet": 0.9, "attention_unet": 1.1, "mr2unet": 2.0}
BOTTLE_NOTE = ("The paper trained each network once on all 15 MVTec AD categories "
               "(1006 training images) and reports the bottle row of that model; these "
               "networks trained on the 50 bottle images alone, so the rows compare the "
               "protocol, not the training data.")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What a run trains: full size on the GPU, tiny for the CPU smoke test."""

    base_width: int = 64
    image_size: int = 128
    device: str = "cuda"
    models: tuple[str, ...] = MODELS
    bench_images: int = 192  # phase b: images per epoch (1 warm-up + bench_epochs timed)
    bench_epochs: int = 2
    protocol_images: int = PAPER_TRAIN_IMAGES
    protocol_epochs: int = PAPER_EPOCHS
    min_steady_epochs: int = 5
    bottle_epochs: int = PAPER_EPOCHS
    correctness_epochs: int = 2
    startup_s: float = 20.0  # a phase-d worker's start, capture and evaluation


SMOKE = Sizes(base_width=4, image_size=32, device="cpu", models=("unet",),
              bench_images=8, bench_epochs=1, protocol_images=8, min_steady_epochs=2,
              bottle_epochs=2, startup_s=3.0)


# --------------------------------------------------------------------------- settings


def committed_train_params(path: Path = REPO / "params.yaml") -> dict[str, Any]:
    """The base ``train`` values of params.yaml: the paper's protocol as committed."""
    return dict(yaml.safe_load(path.read_text())["train"])


def config(arch: str, sizes: Sizes, **overrides: Any) -> TrainConfig:
    """The committed config of ``arch`` at ``sizes``, with ``overrides`` (a MODES entry...)."""
    cfg = TrainConfig.from_params({"train": committed_train_params()}, arch)
    return dataclasses.replace(cfg, base_width=sizes.base_width, device=sizes.device,
                               cpu_threads=None, **overrides)


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> tuple[bool, float]:
    """(bit-identical, largest absolute difference) of two networks' state dicts."""
    sa, sb = a.state_dict(), b.state_dict()
    diff = max((float((sa[k].double() - sb[k].double()).abs().max()) if sa[k].numel() else 0.0)
               for k in sa)
    return all(torch.equal(sa[k], sb[k]) for k in sa), diff


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None where undefined)."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` at once (a killed process leaves the old file or the new)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)
