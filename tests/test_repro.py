"""mr2unet.repro: how `mr2unet repro --jobs N` splits the pipeline (the run itself is
tested end to end in tests/test_pipeline.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mr2unet.errors import UserError
from mr2unet.repro import check_threads, plan

STAGES = ["download", "prepare", "train@unet", "train@resunet", "train@attention_unet",
          "train@mr2unet", "evaluate@unet", "evaluate@resunet", "evaluate@attention_unet",
          "evaluate@mr2unet", "report"]


def test_plan_runs_the_data_first_then_each_network_costliest_first_then_the_rest() -> None:
    steps = plan(STAGES)
    assert steps.upstream == "prepare"
    assert steps.chains == (("train@mr2unet", "evaluate@mr2unet"),
                            ("train@attention_unet", "evaluate@attention_unet"),
                            ("train@unet", "evaluate@unet"),
                            ("train@resunet", "evaluate@resunet"))
    assert steps.rest == ("report",)


def test_plan_keeps_unknown_networks_in_dvc_yaml_order_and_needs_a_train_stage() -> None:
    steps = plan(["prepare", "train@b", "train@a", "evaluate@a", "evaluate@b", "report"])
    assert steps.chains == (("train@b", "evaluate@b"), ("train@a", "evaluate@a"))
    assert plan(["train@a"]).upstream is None and plan(["train@a"]).rest == ()
    with pytest.raises(UserError, match="no train@<model> stages"):
        plan(["download", "prepare", "report"])


@pytest.mark.parametrize(("train", "jobs", "warns"), [
    ("  cpu_threads: 1\n", 2, False),
    ("  cpu_threads: 2\n", 2, True),
    ("  cpu_threads: null\n", 2, True),   # PyTorch's default: every core per process
    ("  cpu_threads: null\n", 1, False),
    ("  cpu_threads: 2\n  device: cuda\n", 4, False),
])
def test_thread_oversubscription_is_named(tmp_path: Path, train: str, jobs: int,
                                          warns: bool) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("run:\n" + train)
    warning = check_threads(params, jobs, cores=2)
    assert (warning is not None) == warns
    if warns:
        assert "set run.cpu_threads to 1" in warning


def test_a_failed_network_stops_new_ones_and_the_report(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    import subprocess

    from mr2unet import repro

    (tmp_path / "params.yaml").write_text("train:\n  cpu_threads: 1\n")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 0, stdout="\n".join(STAGES), stderr=""))
    started: list[list[str]] = []

    def fake_stream(cmd: list[str], cwd: Path, prefix: str, lock: object) -> int:
        started.append(cmd[cmd.index("repro") + 1:])
        return int("train@mr2unet" in cmd)

    monkeypatch.setattr(repro, "_stream", fake_stream)
    assert repro.run(tmp_path, jobs=1, repro_args=["--force"]) == 1
    assert started == [["--force", "prepare"],
                       ["--force", "--single-item", "train@mr2unet", "evaluate@mr2unet"]]
    started.clear()
    monkeypatch.setattr(repro, "_stream", lambda cmd, *a: started.append(cmd) and 0)
    assert repro.run(tmp_path, jobs=2) == 0
    # Two lanes finish in either order; the data comes first and the report last.
    assert started[0][-1] == "prepare" and started[-1][-1] == "report"
    assert sorted(c[-1] for c in started[1:-1]) == [
        "evaluate@attention_unet", "evaluate@mr2unet", "evaluate@resunet", "evaluate@unet"]
    assert started[-1][-2:] == ["--single-item", "report"]
    with pytest.raises(UserError, match="--jobs must be at least 1"):
        repro.run(tmp_path, jobs=0)


def test_stream_prefixes_lines_and_thins_out_progress_redraws(
        capsys: pytest.CaptureFixture) -> None:
    import threading

    from mr2unet.repro import _stream

    script = "printf 'bar 1%%\\rbar 2%%\\rbar 100%%\\nnext\\r\\nlast'; exit 3"
    assert _stream(["bash", "-c", script], Path("."), "[net] ", threading.Lock()) == 3
    # "bar 2%" is a redraw within PROGRESS_EVERY_S of "bar 1%": left out.
    assert capsys.readouterr().out.splitlines() == [
        "[net] bar 1%", "[net] bar 100%", "[net] next", "[net] last"]


def test_missing_dvc_is_one_clear_message(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    from mr2unet import repro

    monkeypatch.setattr(repro, "_dvc", lambda: str(tmp_path / "no-such-dvc"))
    with pytest.raises(UserError, match="dvc not found: run `make install`"):
        repro.run(tmp_path, jobs=2)
