"""benchmarks/gpu_check.py, the device call's protocol run: rehearsed on the CPU at tiny
sizes (--smoke), and its projections."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_check  # noqa: E402


@pytest.mark.slow
def test_protocol_run_measures_the_networks_one_after_another(tmp_path: Path) -> None:
    """The committed settings, every network to its last epoch."""
    args = ["--smoke", "--protocol-epochs", "2", "--protocol-images", "8",
            "--models", "unet", "mr2unet", "--out", str(tmp_path)]
    assert gpu_check.main(args) == 0
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    run = data["protocol_run"]
    assert data["phases_done"] == ["e"] and (run["epochs"], run["images"]) == (2, 8)
    assert run["settings"]["deterministic"] is True and run["settings"]["batch_size"] == 8
    assert run["full_protocol_measured"] is data["full_protocol_measured"] is True
    assert run["projected_s"] is None
    assert data["full_protocol_wall_s"] == run["full_protocol_wall_s"] > 0
    assert list(run["per_network_s"]) == ["unet", "mr2unet"]
    assert run["full_protocol_wall_s"] >= sum(run["per_network_s"].values())
    for row in run["networks"].values():
        assert row["finished"] and row["epochs_done"] == 2 and len(row["epoch_seconds"]) == 2
        assert row["seconds"] == row["wall_s"] > 0
        assert row["vs_plain"] == pytest.approx(row["plain_protocol_s"] / row["seconds"])
    plain = sum(row["plain_protocol_s"] for row in run["networks"].values())
    assert run["vs_plain"] == pytest.approx(plain / run["full_protocol_wall_s"])


@pytest.mark.slow
def test_protocol_run_stops_at_the_budget_and_projects(tmp_path: Path) -> None:
    args = ["--smoke", "--protocol-epochs", "100000", "--budget-s", "6", "--models", "unet",
            "--out", str(tmp_path)]
    assert gpu_check.main(args) == 0
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    run = data["protocol_run"]
    row = run["networks"]["unet"]
    assert not row["finished"] and 1 <= row["epochs_done"] < 100000
    assert run["full_protocol_measured"] is data["full_protocol_measured"] is False
    assert run["full_protocol_wall_s"] is data["full_protocol_wall_s"] is None
    assert run["projected_s"] == row["seconds"] > row["wall_s"]
    assert data["elapsed_s"] < 6


def test_protocol_run_projections() -> None:
    # 2 of 5 epochs done in 7 s (warm-up 4 s, then 2 s): 7 + 3 * 2.
    assert gpu_check.run_seconds(7.0, [4.0, 2.0], 5) == 13.0
    assert gpu_check.run_seconds(7.0, [4.0, 2.0], 2) == 7.0
    done = {"seconds": 10.0, "measured": True, "plain_protocol_s": 20.0}
    cut = {"seconds": 30.0, "measured": False, "plain_protocol_s": 40.0}
    assert gpu_check.totals({"a": done, "b": done}, wall_s=21.0) == {
        "full_protocol_measured": True, "full_protocol_wall_s": 21.0, "projected_s": None,
        "per_network_s": {"a": 10.0, "b": 10.0}, "vs_plain": 40.0 / 21.0}
    assert gpu_check.totals({"a": done, "b": cut}, wall_s=15.0) == {
        "full_protocol_measured": False, "full_protocol_wall_s": None, "projected_s": 40.0,
        "per_network_s": {"a": 10.0, "b": 30.0}, "vs_plain": 60.0 / 40.0}
    unknown = gpu_check.totals({"a": done, "b": {**cut, "seconds": None}}, 15.0)
    assert unknown["projected_s"] is None and unknown["vs_plain"] is None
