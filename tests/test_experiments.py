"""Aggregating experiment commits (refs/exps) into mean +/- std."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from mr2unet.tracking.experiments import (
    collect,
    group_by_config,
    spread,
    spread_markdown,
    write_spread,
)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                          text=True).stdout.strip()


def make_experiment(repo: Path, seed: int, iou: dict[str, float], lr: float = 0.001,
                    name: str | None = None) -> None:
    """Commit params + metrics on a detached branch and point refs/exps/... at it."""
    (repo / "params.yaml").write_text(
        f"profile: demo\ntrain: {{seed: 0, lr: 0.1}}\n"
        f"profiles: {{demo: {{train: {{seed: {seed}, lr: {lr}}}}}}}\n")
    (repo / "metrics").mkdir(exist_ok=True)
    per_cat = {c: {"iou": v, "dice": 2 * v / (1 + v)} for c, v in iou.items()}
    mean = {k: sum(p[k] for p in per_cat.values()) / len(per_cat) for k in ("iou", "dice")}
    (repo / "metrics" / "unet.json").write_text(json.dumps({"mean": mean,
                                                            "per_category": per_cat}))
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


def test_write_spread_reports_nothing_without_experiments(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    assert write_spread(tmp_path, tmp_path / "out.md") == 0
    assert not (tmp_path / "out.md").exists()
