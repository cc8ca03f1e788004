"""benchmarks/mr2unet_ablation.py's table: seeds every variant completed, seed-averaged
per-image IOU, paired tests Holm-adjusted over the set's family (issue #25)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import mr2unet_ablation as ablation  # noqa: E402

from mr2unet.evaluation import stats  # noqa: E402

SOURCES = [f"img{i}.png" for i in range(12)]


def _run(variant: str, seed: int, ious: list[float], data_set: str = "s") -> dict:
    return {"set": data_set, "variant": variant, "seed": seed, "width": 16, "steps": 10,
            "iou": float(np.mean(ious)), "dice": 0.0, "collapsed": False, "seconds": 1.0,
            "cpu_seconds": 1.0, "parameters": 100, "gflops": 0.1, "sources": SOURCES,
            "per_image_iou": ious}


def test_the_table_compares_seed_averaged_scores_with_holm() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.7, 12)
    runs = []
    for seed in (0, 1):
        runs.append(_run("unet", seed, list(base + 0.01 * seed)))
        runs.append(_run("mr2unet", seed, list(base - 0.2)))  # clearly worse
        runs.append(_run("tied_kernels", seed, list(base - 0.2 + 0.001 * (seed - 0.5))))
    runs.append(_run("tied_kernels", 2, list(base)))  # a seed the others lack: left out
    lines = ablation.set_table(runs, "s")
    assert lines[0].startswith("**s** (seeds 0, 1; 12 defective test images; Holm over 3")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines[4:]}
    expected = stats.adjust([stats.compare(base - 0.2, base + 0.005),
                             stats.compare(base - 0.2, base + 0.005),
                             stats.compare(base - 0.2, base - 0.2)])
    assert f"**{expected[0].mean_diff:+.4f}**" in rows["mr2unet"]
    assert f"p {expected[0].p_holm:.3g}" in rows["mr2unet"]
    assert expected[0].p_holm < 0.05
    # tied vs the default MR2U-Net: the same seed-averaged scores, nothing to test
    assert rows["tied_kernels"].split(" | ")[7] == "+0.0000 [+0.000, +0.000], p n/a"
    assert "0.0000 ± 0.0000" not in rows["unet"]


def test_a_set_without_its_baselines_says_so() -> None:
    assert "needed" in ablation.set_table([_run("tied_kernels", 0, [0.5] * 12)], "s")[0]


def test_different_test_images_between_seeds_are_refused() -> None:
    other = _run("unet", 1, [0.5] * 12)
    other["sources"] = list(reversed(SOURCES))
    with pytest.raises(SystemExit, match="test images differ"):
        ablation.seed_averaged_iou([_run("unet", 0, [0.5] * 12), other], "unet", [0, 1])
