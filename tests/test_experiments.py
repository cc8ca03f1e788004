"""Aggregating experiment commits (refs/exps) into mean +/- std."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import git, project_copy

from mr2unet.reporting.significance import parse_per_image
from mr2unet.tracking.experiments import (
    collect,
    group_by_config,
    read_output,
    seed_averaged,
    spread,
    spread_markdown,
    write_spread,
)


def cache_output(repo: Path, path: str, text: str) -> dict[str, str]:
    """Put ``text`` in the DVC 3 cache as `dvc exp run` does; its dvc.lock ``outs`` entry."""
    md5 = hashlib.md5(text.encode()).hexdigest()
    cached = repo / ".dvc/cache/files/md5" / md5[:2] / md5[2:]
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(text)
    return {"path": path, "hash": "md5", "md5": md5}


def per_image_csv(iou: list[float], categories: list[str]) -> str:
    rows = [f"img{i}.png,{c},hole,0,0,0,{v:.6f},{2 * v / (1 + v):.6f}"
            for i, (v, c) in enumerate(zip(iou, categories, strict=True))]
    return "source,category,defect_type,tp,fp,fn,iou,dice\n" + "\n".join(rows) + "\n"


def make_experiment(repo: Path, seed: int, iou: dict[str, float], lr: float = 0.001,
                    name: str | None = None,
                    per_image: dict[str, tuple[list[float], list[str]]] | None = None) -> None:
    """Commit params + metrics on a detached branch and point refs/exps/... at it.

    ``per_image``: model -> (per-image IOU, categories), stored like `evaluate` and DVC do
    (data/eval/<model>.csv in the cache, its md5 in the committed dvc.lock); every model
    named there also gets the metrics ``iou`` (else only U-Net).
    """
    (repo / "params.yaml").write_text(f"train: {{seed: {seed}, lr: {lr}}}\n")
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / ".gitignore").write_text("/.dvc/cache\n")
    per_cat = {c: {"iou": v, "dice": 2 * v / (1 + v)} for c, v in iou.items()}
    mean = {k: sum(p[k] for p in per_cat.values()) / len(per_cat) for k in ("iou", "dice")}
    stages = {}
    for model in per_image or {"unet": None}:
        (repo / "metrics" / f"{model}.json").write_text(json.dumps({"mean": mean,
                                                                    "per_category": per_cat}))
        if per_image:
            path = f"data/eval/{model}.csv"
            stages[f"evaluate@{model}"] = {"outs": [
                cache_output(repo, path, per_image_csv(*per_image[model]))]}
    if stages:
        (repo / "dvc.lock").write_text(json.dumps({"schema": "2.0", "stages": stages}))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", f"seed {seed}")
    git(repo, "update-ref", f"refs/exps/ab/cdef/{name or f'exp-{seed}'}", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "t@t")
    git(tmp_path, "config", "user.name", "t")
    make_experiment(tmp_path, 0, {"bottle": 0.5, "grid": 0.2})
    make_experiment(tmp_path, 1, {"bottle": 0.7, "grid": 0.4})
    make_experiment(tmp_path, 2, {"bottle": 0.6, "grid": 0.3})
    return tmp_path


def test_collect_reads_every_experiment_with_its_seed(repo: Path) -> None:
    scores = collect(repo)
    assert sorted(s.seed for s in scores) == [0, 1, 2]
    assert {s.model for s in scores} == {"unet"}


def test_spread_is_mean_and_sample_std(repo: Path) -> None:
    table = spread(collect(repo))["unet"]
    assert table["bottle"][0] == pytest.approx(0.6)
    assert table["bottle"][1] == pytest.approx(0.1)
    assert table["grid"] == pytest.approx((0.3, 0.1, 3))
    assert table["mean"][0] == pytest.approx(0.45)
    text = spread_markdown(collect(repo))
    assert "| bottle | 0.6000 ± 0.1000 |" in text
    assert "## 3 experiments (seeds 0, 1, 2)" in text
    assert "| configuration |" not in text  # one group: no summary table


def test_experiments_are_grouped_by_their_other_params(repo: Path) -> None:
    make_experiment(repo, 0, {"bottle": 0.9, "grid": 0.8}, lr=0.01, name="fast-0")
    make_experiment(repo, 1, {"bottle": 0.7, "grid": 0.6}, lr=0.01, name="fast-1")
    scores = collect(repo)
    groups = group_by_config(scores)
    assert list(groups) == ["train.lr=0.001", "train.lr=0.01"]
    assert spread(groups["train.lr=0.01"])["unet"]["bottle"] == pytest.approx(
        (0.8, 0.1414214, 2))
    assert spread(groups["train.lr=0.001"])["unet"]["bottle"][0] == pytest.approx(0.6)
    text = spread_markdown(scores)
    assert "| train.lr=0.001 | 0, 1, 2 | 0.4500 ± 0.1000 |" in text
    assert "| train.lr=0.01 | 0, 1 | 0.7500 ± 0.1414 |" in text
    assert "## train.lr=0.01: 2 experiments (seeds 0, 1)" in text


def test_experiments_of_the_older_params_layout_get_their_profile(repo: Path) -> None:
    # Before profiles/: `profile:` + a `profiles:` block in params.yaml.
    (repo / "params.yaml").write_text("profile: demo\ntrain: {seed: 0, lr: 0.1}\n"
                                      "profiles: {demo: {train: {seed: 7, lr: 0.001}}}\n")
    git(repo, "commit", "-qam", "old layout")
    git(repo, "update-ref", "refs/exps/ab/cdef/old-7", "HEAD")
    scores = collect(repo)
    assert sorted(s.seed for s in scores) == [0, 1, 2, 7]
    assert list(group_by_config(scores)) == [""]  # lr 0.001 like the others: one group


def test_write_spread_reports_nothing_without_experiments(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    assert write_spread(tmp_path, tmp_path / "out.md") == 0
    assert not (tmp_path / "out.md").exists()


# 8 test images in 2 categories; the baseline per seed, and a symmetric per-image noise.
CATEGORIES = ["bottle", "grid"] * 4
BASE = np.linspace(0.2, 0.55, 8)
NOISE = np.array([0.01, -0.01, 0.02, -0.02, 0.03, -0.03, 0.04, -0.04])


def _sweep(repo: Path, shift: float, seeds: tuple[int, ...] = (0, 1, 2)) -> None:
    """Experiments with U-Net and MR2U-Net; per seed U-Net = BASE + seed / 100 and
    MR2U-Net = U-Net + shift + (-1)^seed NOISE, so the seed average of the difference is
    ``shift + NOISE / 3`` for 3 seeds."""
    for seed in seeds:
        unet = BASE + seed / 100
        mr2 = unet + shift + (-1) ** seed * NOISE
        make_experiment(repo, seed, {"bottle": 0.5 + seed / 10, "grid": 0.2},
                        name=f"pair-{seed}",
                        per_image={"unet": (unet.tolist(), CATEGORIES),
                                   "mr2unet": (mr2.tolist(), CATEGORIES)})


def test_per_image_scores_are_read_from_the_dvc_cache(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    _sweep(tmp_path, 0.1, seeds=(0,))
    ref = "refs/exps/ab/cdef/pair-0"
    text = read_output(tmp_path, ref, "data/eval/unet.csv")
    assert text == per_image_csv(BASE.tolist(), CATEGORIES)
    assert read_output(tmp_path, ref, "data/eval/resunet.csv") is None  # not in dvc.lock
    scores = {s.model: s for s in collect(tmp_path)}
    assert scores["mr2unet"].per_image is not None
    np.testing.assert_allclose(scores["mr2unet"].per_image.scores["iou"],
                               BASE + 0.1 + NOISE, atol=1e-6)


def test_seed_averaged_paired_comparison(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    _sweep(tmp_path, 0.1)
    scores = collect(tmp_path)
    averaged, used, note = seed_averaged(scores)
    assert len(used) == 6 and "averaged over 3 experiment(s) (seeds 0, 1, 2)" in note
    np.testing.assert_allclose(averaged["unet"].scores["iou"], BASE + 0.01, atol=1e-6)
    np.testing.assert_allclose(averaged["mr2unet"].scores["iou"] - averaged["unet"].scores["iou"],
                               0.1 + NOISE / 3, atol=2e-6)
    text = spread_markdown(scores)
    # Table 1 over seeds beside the paper: bottle U-Net 0.5976, MR2U-Net 0.6547.
    assert "| bottle | 0.6000 ± 0.1000 | 0.5976 | +0.0024 | 0.6000 ± 0.1000 | 0.6547 | " \
        "-0.0547 |" in text
    assert "| mean | 0.4000 ± 0.0500 | – | – |" in text  # 2 categories: no paper mean
    assert "### Are the differences significant? (per-image scores averaged over seeds)" in text
    # 8 positive differences: exact Wilcoxon p = 2 / 2^8
    assert "| MR2U-Net vs U-Net | IOU | 8 | +0.100 | [" in text
    assert "Wilcoxon p = 0.008, significant at 0.05; better on 8, worse on 0" in text
    write_spread(tmp_path, tmp_path / "reports/seed_spread.md")
    data = json.loads((tmp_path / "reports/seed_spread_pairwise.json").read_text())
    overall = data[""]["comparisons"][0]
    assert (overall["first"], overall["second"], overall["scope"]) == ("mr2unet", "unet", "all")
    assert overall["p_value"] == 2 / 2**8 and overall["significant"] is True
    assert data[""]["seeds"] == [0, 1, 2] and data[""]["seed_averaged"] is True


def test_no_shift_over_seeds_is_not_significant(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    _sweep(tmp_path, 0.0)
    text = spread_markdown(collect(tmp_path))
    assert "| MR2U-Net vs U-Net | IOU | 8 | +0.000 | [-" in text
    assert "not significant at 0.05" in text


def test_experiments_without_cached_scores_are_left_out(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    _sweep(tmp_path, 0.1)
    lock = json.loads(git(tmp_path, "show", "refs/exps/ab/cdef/pair-2:dvc.lock"))
    md5 = lock["stages"]["evaluate@unet"]["outs"][0]["md5"]
    (tmp_path / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).unlink()  # e.g. after `dvc gc`
    averaged, used, note = seed_averaged(collect(tmp_path))
    assert {s.seed for s in used} == {0, 1}
    assert "Left out, per-image scores not found (`dvc pull`?): pair-2." in note
    np.testing.assert_allclose(averaged["unet"].scores["iou"], BASE + 0.005, atol=1e-6)


def test_spread_says_when_there_is_nothing_to_compare(repo: Path) -> None:
    text = spread_markdown(collect(repo))  # U-Net only, no per-image scores
    assert "Fewer than two models: nothing to compare." in text


# ------------------------------------------------------------------ a real queued sweep

BIN = Path(sys.executable).parent
# Two networks, 4-wide, 16 px, 2 epochs on one synthetic image per defect type: the
# plumbing of `make sweep`, not a result.
SWEEP_PROFILE = {
    "data": {"source": "synthetic"},
    "synthetic": {"images_per_defect": 1, "good_images": 1},
    "prepare": {"image_size": 16},
    "train": {"models": ["unet", "mr2unet"], "epochs": 2, "batch_size": 8, "base_width": 4},
    "run": {"device": "cpu", "cpu_threads": 1, "checkpoint_every": 1},
    "evaluate": {"report_samples": 1},
    "tracking": {"enabled": False},
}


def run_dvc(project: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_NO_UPDATE_CHECK": "1",
           "PYTHONHASHSEED": "0", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run([str(BIN / "dvc"), *args], cwd=project, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"dvc {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.slow
def test_a_real_queued_sweep_is_read_back(tmp_path: Path) -> None:
    """`dvc exp run --queue` over two seeds, run by DVC's queue workers as `make sweep`
    does: each experiment's per-image scores come back from the DVC cache as DVC's own
    API reads them, and agree with the per-category metrics the experiment committed."""
    project = project_copy(tmp_path / "project", SWEEP_PROFILE)
    for seed in (0, 1):
        run_dvc(project, "exp", "run", "--queue", "-S", f"train.seed={seed}")
    run_dvc(project, "exp", "run", "--run-all", "-j", "1")
    status = run_dvc(project, "queue", "status")  # --run-all exits 0 even when one failed
    failed = [line.split()[1] for line in status.splitlines() if "Failed" in line]
    assert not failed, "\n".join(run_dvc(project, "queue", "logs", name) for name in failed)

    dvc_api = pytest.importorskip("dvc.api")
    scores = collect(project)
    assert sorted((s.seed, s.model) for s in scores) == [
        (0, "mr2unet"), (0, "unet"), (1, "mr2unet"), (1, "unet")]
    assert len({s.ref for s in scores}) == 2
    for s in scores:
        path = f"data/eval/{s.model}.csv"
        assert yaml.safe_load(git(project, "show", f"{s.ref}:params.yaml"))["train"]["seed"] \
            == s.seed
        assert s.per_image is not None, (s.ref, s.model)
        expected = parse_per_image(dvc_api.read(path, repo=str(project), rev=s.ref))
        assert s.per_image.sources.tolist() == expected.sources.tolist()
        assert len(expected.sources) == 4  # one test image per synthetic category
        for metric in ("iou", "dice"):
            np.testing.assert_array_equal(s.per_image.scores[metric], expected.scores[metric])
        for category, values in s.per_category.items():
            mine = s.per_image.scores["iou"][s.per_image.categories == category]
            assert mine.mean() == pytest.approx(values["iou"], abs=1e-6), category

    averaged, used, note = seed_averaged(scores)
    assert len(used) == 4 and "(seeds 0, 1)" in note
    by_seed = {(s.seed, s.model): s.per_image.scores["iou"] for s in scores}
    np.testing.assert_allclose(averaged["unet"].scores["iou"],
                               (by_seed[0, "unet"] + by_seed[1, "unet"]) / 2, atol=1e-9)
    assert write_spread(project, project / "reports/seed_spread.md") == 2
    data = json.loads((project / "reports/seed_spread_pairwise.json").read_text())
    (group,) = data.values()
    assert group["seeds"] == [0, 1] and group["seed_averaged"] is True
