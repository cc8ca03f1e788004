"""benchmarks/gpu_check.py (the package benchmarks/gpucheck/): the GPU check's --smoke run
on the CPU, its projections, and the speed levers it measures (mr2unet.training.loop:
adam_impl, cuda_graphs, compile modes)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import CFG, states_equal, tiny_split

from mr2unet.config.params import load_params
from mr2unet.errors import UserError
from mr2unet.training.loop import TrainConfig, make_optimizer, train
from mr2unet.training.speed import compile_mode

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPT = BENCHMARKS / "gpu_check.py"
sys.path.insert(0, str(BENCHMARKS))
from gpucheck import cli, projections, settings  # noqa: E402


@pytest.mark.slow
def test_the_script_is_the_entry_point() -> None:
    """`python benchmarks/gpu_check.py --help` works without PYTHONPATH and describes the
    phases (the package's docstring); the worker processes start the same script."""
    result = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True,
                            text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    for text in ("--smoke", "--previous", "--budget-s", "a. correctness", "d. the real bottle"):
        assert text in result.stdout, text
    assert settings.ENTRY == SCRIPT


@pytest.mark.slow
def test_smoke_run_writes_every_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["--smoke", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["phases_done"] == ["a", "b", "c", "d"]
    assert isinstance(data["device"], str) and data["torch"] == torch.__version__
    assert isinstance(data["full_protocol_minutes"], float) and data["full_protocol_minutes"] > 0
    assert data["full_protocol_measured"] is False  # the smoke window is far too short
    assert data["full_protocol"]["enough_steady_epochs"] is True
    (arch,) = data["models"]
    speed = data["throughput"][arch]
    for key in ("ours", "fastest", "plain"):
        assert isinstance(speed[key], float) and speed[key] > 0, key
    assert speed["errors"] == {}
    assert set(speed["modes"]) == {"ours", "plain", *settings.MODES}
    assert speed["fastest"] == max(v for k, v in speed["modes"].items() if k != "plain")
    a = data["correctness"][arch]
    assert a["finite"] and a["falling"] and len(a["loss"]) == 2
    # On the CPU a resumed run is bit-identical to an uninterrupted one.
    assert a["resumed_from_epoch"] == 1
    assert a["resume_identical"] and a["resume_max_abs_diff"] == 0.0
    assert a["repeat_identical"] and a["nondeterministic_ops"] == []
    assert a["predict"] == {"device": "cpu", "written": 3, "failed": 0}
    assert a["graphs_identical"] and len(a["graphs_loss"]) == 2  # a no-op on the CPU
    assert a["cuda_cpu_agreement"] == 1.0 and a["agreement_ok"]
    bottle = data["bottle"][arch]
    assert bottle["seeds"] == [0, 1] and len(bottle["per_seed"]) == 2
    for key in ("iou_mean", "iou_std", "dice_mean", "dice_std"):
        assert isinstance(bottle[key], float) and 0 <= bottle[key] <= 1, key
    assert bottle["paper_iou"] == 0.5976 and "15" in data["bottle_note"]
    assert bottle["protocol_complete"] is False and data["bottle_epochs"] >= 1
    table = capsys.readouterr().out.strip().splitlines()
    assert table[-1].startswith("paper protocol (4 x 200 epochs x 1006 images)")
    assert table[-2].startswith(arch)
    assert (tmp_path / "gpu_check.log").read_text().count("phase") >= 4


@pytest.mark.slow
def test_previous_call_is_kept_and_only_the_gaps_are_filled(tmp_path: Path) -> None:
    """--previous: a second device call measures what the first one lacked, nothing else."""
    first, second = tmp_path / "first", tmp_path / "second"
    assert cli.main(["--smoke", "--phases", "bd", "--out", str(first)]) == 0
    earlier = json.loads((first / "gpu_check.json").read_text())
    (arch,) = earlier["models"]
    modes = earlier["throughput"][arch]["modes"]
    del modes["cuda_graphs"]  # as if the first call was killed before this mode
    earlier["throughput"][arch]["modes"] = modes
    earlier["bottle"][arch]["seeds"] = []  # ... and before its bottle runs finished
    (first / "gpu_check.json").write_text(json.dumps(earlier))
    args = ["--smoke", "--phases", "db", "--previous", str(first / "gpu_check.json"),
            "--bottle-epochs", "3", "--out", str(second)]
    assert cli.main(args) == 0
    data = json.loads((second / "gpu_check.json").read_text())
    again = data["throughput"][arch]["modes"]
    assert set(again) == set(modes) | {"cuda_graphs"}
    assert {m: again[m] for m in modes} == modes  # kept, not measured again
    assert data["bottle"][arch]["seeds"] == [0, 1] and data["bottle_epochs"] == 3
    assert [r["epochs_done"] for r in data["bottle"][arch]["per_seed"]] == [3, 3]
    assert data["previous_calls"][0]["phases_done"] == ["b", "d"]
    earlier["device"] = "another GPU"
    (first / "gpu_check.json").write_text(json.dumps(earlier))
    with pytest.raises(SystemExit, match="measured on 'another GPU'"):
        cli.main(args)


def test_protocol_time_measured_or_projected() -> None:
    runs = {"a": {"finished": True, "epoch_seconds": [3.0, 1.0, 1.0], "epoch_ends": [13, 14, 15]},
            "b": {"finished": True, "epoch_seconds": [2.0, 2.0, 2.0], "epoch_ends": [12, 14, 16]}}
    measured = projections.protocol_time(runs, launched=10.0, epochs=3, alone={}, images=4)
    assert measured == {"measured": True, "seconds": 6.0, "strategy": "concurrent"}
    runs["b"]["finished"] = False
    projected = projections.protocol_time(runs, launched=10.0, epochs=201,
                                        alone={"a": 4.0, "b": 2.0}, images=4)
    # concurrent: a = 3 + 200 * 1, b = 2 + 200 * 2; sequential: 201 * (1 + 2)
    assert projected["concurrent_projection_s"] == 402.0
    assert projected["sequential_projection_s"] == 603.0
    assert (projected["measured"], projected["seconds"], projected["strategy"]) == (
        False, 402.0, "concurrent")


def test_bottle_epochs_fit_the_time_left() -> None:
    plan = projections.plan_bottle_epochs
    # 2 networks at 100 and 50 images/s, 3 runs of 50 images: 4.5 s per epoch alone.
    assert plan({"a": 100.0, "b": 50.0}, None, 3, 50, seconds=900, full=200) == 200
    assert plan({"a": 100.0, "b": 50.0}, None, 3, 50, seconds=450, full=200) == 100
    assert plan({"a": 100.0, "b": 50.0}, 1.5, 3, 50, seconds=450, full=200) == 150
    assert plan({"a": 100.0, "b": 50.0}, 1.0, 3, 50, seconds=1, full=200) == 1
    assert plan({}, None, 3, 50, seconds=1, full=200) == 200  # no speeds: the deadline decides


@pytest.mark.slow
def test_protocol_run_measures_the_networks_one_after_another(tmp_path: Path) -> None:
    """Phase e, rehearsed: the committed settings, every network to its last epoch."""
    args = ["--smoke", "--phases", "e", "--protocol-epochs", "2", "--protocol-images", "8",
            "--models", "unet", "mr2unet", "--out", str(tmp_path)]
    assert cli.main(args) == 0
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    run = data["protocol_run"]
    assert data["phases_done"] == ["e"] and (run["epochs"], run["images"]) == (2, 8)
    assert run["settings"]["deterministic"] is True and run["settings"]["cuda_graphs"] is False
    assert run["full_protocol_measured"] is data["full_protocol_measured"] is True
    assert run["projected_s"] is None
    assert data["full_protocol_wall_s"] == run["full_protocol_wall_s"] > 0
    assert list(run["per_network_s"]) == ["unet", "mr2unet"]
    assert run["full_protocol_wall_s"] >= sum(run["per_network_s"].values())
    for arch, row in run["networks"].items():
        assert row["finished"] and row["epochs_done"] == 2 and len(row["epoch_seconds"]) == 2
        assert row["seconds"] == row["wall_s"] > 0
        assert run["plain"][arch]["source"] == "phase e"  # no phase b in this call
        assert row["vs_plain"] == pytest.approx(row["plain_protocol_s"] / row["seconds"])
    plain = sum(row["plain_protocol_s"] for row in run["networks"].values())
    assert run["vs_plain"] == pytest.approx(plain / run["full_protocol_wall_s"])


@pytest.mark.slow
def test_protocol_run_stops_at_the_budget_and_projects(tmp_path: Path) -> None:
    args = ["--smoke", "--phases", "e", "--protocol-epochs", "100000", "--budget-s", "6",
            "--out", str(tmp_path)]
    assert cli.main(args) == 0
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    run, (arch,) = data["protocol_run"], data["models"]
    row = run["networks"][arch]
    assert not row["finished"] and 1 <= row["epochs_done"] < 100000
    assert run["full_protocol_measured"] is data["full_protocol_measured"] is False
    assert run["full_protocol_wall_s"] is data["full_protocol_wall_s"] is None
    assert run["projected_s"] == row["seconds"] > row["wall_s"]
    assert data["elapsed_s"] < 6


def test_protocol_run_projections() -> None:
    # 2 of 5 epochs done in 7 s (warm-up 4 s, then 2 s): 7 + 3 * 2.
    assert projections.run_seconds(7.0, [4.0, 2.0], 5) == 13.0
    assert projections.run_seconds(7.0, [4.0, 2.0], 2) == 7.0
    done = {"seconds": 10.0, "measured": True, "plain_protocol_s": 20.0}
    cut = {"seconds": 30.0, "measured": False, "plain_protocol_s": 40.0}
    assert projections.sequential_run({"a": done, "b": done}, wall_s=21.0) == {
        "full_protocol_measured": True, "full_protocol_wall_s": 21.0, "projected_s": None,
        "per_network_s": {"a": 10.0, "b": 10.0}, "vs_plain": 40.0 / 21.0}
    assert projections.sequential_run({"a": done, "b": cut}, wall_s=15.0) == {
        "full_protocol_measured": False, "full_protocol_wall_s": None, "projected_s": 40.0,
        "per_network_s": {"a": 10.0, "b": 30.0}, "vs_plain": 60.0 / 40.0}
    unknown = projections.sequential_run({"a": done, "b": {**cut, "seconds": None}}, 15.0)
    assert unknown["projected_s"] is None and unknown["vs_plain"] is None


@pytest.mark.slow
def test_protocol_run_reuses_the_plain_loop_of_phase_b(tmp_path: Path) -> None:
    """Phase b's plain loop of this call is reused; one from an earlier call is not."""
    from types import SimpleNamespace

    from gpucheck.phases import plain_speeds

    report = SimpleNamespace(data={"throughput": {"unet": {"plain": 5.0}}})
    ctx = SimpleNamespace(args=SimpleNamespace(previous=None), sizes=settings.SMOKE,
                          report=report, work=tmp_path)
    assert plain_speeds(ctx) == {"unet": {"images_per_second": 5.0, "source": "phase b"}}
    ctx.args.previous = tmp_path / "gpu_check.json"
    (measured,) = plain_speeds(ctx).values()
    assert measured["source"] == "phase e" and measured["images_per_second"] > 0


# ------------------------------------------------------------- the levers in train.py


def test_speed_levers_default_to_the_committed_loop() -> None:
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    cfg = TrainConfig.from_params(params, "unet")
    assert (cfg.compile, cfg.adam_impl, cfg.cuda_graphs, cfg.deterministic) == (
        False, "auto", False, True)
    fast = dataclasses.replace(cfg, compile="reduce-overhead", adam_impl="fused",
                               cuda_graphs=True)
    assert fast.fingerprint() == cfg.fingerprint()  # how to run, not what: resumes either way


@pytest.mark.slow
def test_cuda_graphs_are_a_no_op_on_the_cpu() -> None:
    split = tiny_split()
    plain = train(CFG, split, progress=False)
    graphed = train(dataclasses.replace(CFG, cuda_graphs=True), split, progress=False)
    assert states_equal(plain.model, graphed.model)


@pytest.mark.slow
def test_fused_and_foreach_adam_take_the_same_step() -> None:
    from mr2unet.models import build_model

    x = torch.rand(2, 3, 32, 32)
    stepped = {}
    for impl in ("auto", "foreach", "fused"):
        torch.manual_seed(0)
        model = build_model("unet", base_width=4)
        optimizer = make_optimizer(model, dataclasses.replace(CFG, adam_impl=impl))
        for _ in range(2):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
        stepped[impl] = model.state_dict()
    for impl in ("foreach", "fused"):
        for name, value in stepped["auto"].items():
            # Two steps move a weight by up to 2 lr (weights whose gradient is near 0 by an
            # amount the rounding decides); the implementations agree to a tenth of lr.
            assert torch.allclose(value.float(), stepped[impl][name].float(),
                                  atol=0.1 * CFG.lr), name
    torch.manual_seed(0)
    initial = build_model("unet", base_width=4).state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in stepped["fused"].items())
    with pytest.raises(UserError, match="adam_impl"):
        train(dataclasses.replace(CFG, adam_impl="sgd"), tiny_split(), progress=False)


def test_compile_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [compile_mode(v) for v in (False, True, "reduce-overhead")] == [
        None, "default", "reduce-overhead"]
    with pytest.raises(UserError, match="train.compile"):
        compile_mode("fastest")
    seen = []
    monkeypatch.setattr(torch, "compile", lambda model, mode: seen.append(mode) or model)
    train(dataclasses.replace(CFG, epochs=1, compile="reduce-overhead"), tiny_split(),
          progress=False)
    assert seen == ["reduce-overhead"]


@pytest.mark.slow
def test_fast_mode_switches_determinism_off_again() -> None:
    train(dataclasses.replace(CFG, epochs=1), tiny_split(), progress=False)
    assert torch.are_deterministic_algorithms_enabled()
    train(dataclasses.replace(CFG, epochs=1, deterministic=False), tiny_split(), progress=False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    torch.backends.cudnn.benchmark = False
