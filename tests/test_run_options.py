"""Run options (``params.yaml: run``, mr2unet.training.options): what `auto` means on each
device (the one table AUTO), how the options reach the run, and that they are neither
in the resume fingerprint nor DVC dependencies (issues #22, #34)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml
from helpers import CFG, REPO, RUN, tiny_split

from mr2unet.config import params
from mr2unet.errors import UserError
from mr2unet.training import setup
from mr2unet.training.loop import train
from mr2unet.training.options import AUTO, RunOptions, RunSettings, run_settings

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


def test_auto_on_the_cpu_is_the_loop_as_committed() -> None:
    run = run_settings(CPU)
    assert run == RunSettings(CPU, None, True, None, "auto", False, True, False, True, True)
    assert run.describe() == ("cpu, fp32, channels_last, compile off, adam auto, "
                              "cuda_graphs off, fused_convs off, narrow_norms_nchw on, "
                              "onednn_1x1_convs on, deterministic")
    assert run_settings(CPU, RunOptions(fused_convs=True)).fused_convs
    assert not run_settings(CPU, RunOptions(cuda_graphs=True)).cuda_graphs  # CUDA only
    # the kernel routes are channels-last ones, and oneDNN's a CPU one
    nchw = run_settings(CPU, RunOptions(channels_last=False, narrow_norms_nchw=True,
                                        onednn_1x1_convs=True))
    assert not nchw.narrow_norms_nchw and not nchw.onednn_1x1_convs
    off = run_settings(CPU, RunOptions(narrow_norms_nchw=False, onednn_1x1_convs=False))
    assert not off.narrow_norms_nchw and not off.onednn_1x1_convs


def test_the_cpu_kernel_routes_stay_off_on_cuda() -> None:
    assert not run_settings(CUDA).narrow_norms_nchw and not run_settings(CUDA).onednn_1x1_convs
    forced = run_settings(CUDA, RunOptions(narrow_norms_nchw=True, onednn_1x1_convs=True))
    assert forced.narrow_norms_nchw  # BatchNorm2d itself takes the route on CPU tensors only
    assert not forced.onednn_1x1_convs


def test_auto_on_cuda_follows_the_table() -> None:
    run = run_settings(CUDA)
    assert run.amp_dtype is torch.bfloat16 and run.channels_last and not run.cuda_graphs
    other = run_settings(MPS)  # other device types: fp32, contiguous
    assert other.amp_dtype is None and not other.channels_last


def test_explicit_values_override_auto_and_graphs_need_one_eager_cuda_process() -> None:
    fast = RunOptions(precision="fp32", channels_last=False, adam_impl="fused",
                      cuda_graphs=True, deterministic=False)
    run = run_settings(CUDA, fast)
    assert (run.amp_dtype, run.channels_last, run.adam_impl, run.cuda_graphs,
            run.deterministic) == (None, False, "fused", True, False)
    assert not run_settings(CUDA, fast, world=2).cuda_graphs
    assert not run_settings(CUDA, dataclasses.replace(fast, compile=True)).cuda_graphs
    assert run_settings(CUDA, RunOptions(compile=True)).compile_mode == "default"
    assert run_settings(CUDA, RunOptions(compile="max-autotune")).compile_mode == "max-autotune"
    assert run_settings(CPU, RunOptions(precision="bf16")).amp_dtype is torch.bfloat16


def test_a_table_change_reaches_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """AUTO is the only place the choice lives: flipping its CUDA row flips the run."""
    monkeypatch.setitem(AUTO, "cuda", {**AUTO["cuda"], "precision": "fp16"})
    assert run_settings(CUDA).amp_dtype is torch.float16


def _committed() -> dict:
    return params.load_params(REPO / "params.yaml")


def test_params_validate_the_run_section() -> None:
    values = _committed()
    assert RunOptions.from_params(values) == RunOptions()  # params.yaml: the defaults
    values["run"].update(cuda_graphs=True, compile=True)
    with pytest.raises(UserError, match="run.cuda_graphs"):
        params.validate(values)
    for key, bad in (("compile", "reduce-overhead"), ("cuda_graphs", "auto"),
                     ("cpu_threads", 0), ("device", "gpu"), ("adam_impl", "sgd")):
        values = _committed()
        values["run"][key] = bad
        with pytest.raises(UserError, match=f"run.{key}"):
            params.validate(values)


@pytest.mark.parametrize("key", ["cpu_threads", "device", "checkpoint_every"])
def test_a_run_key_under_train_says_where_it_moved(key: str) -> None:
    values = _committed()
    values["train"][key] = values["run"].pop(key)
    with pytest.raises(UserError, match=rf"`train.{key}` moved to `run.{key}`"):
        params.check_known_keys(values)


@pytest.mark.parametrize("key", ["fused_convs", "narrow_norms_nchw", "onednn_1x1_convs"])
def test_a_removed_speed_lever_is_one_clear_error(key: str) -> None:
    values = _committed()
    values["train"][key] = "auto"
    with pytest.raises(UserError, match=rf"`train.{key}` was removed"):
        params.check_known_keys(values)
    values = _committed()
    values["run"][key] = "auto"  # benchmarks only: not a params key
    with pytest.raises(UserError, match=rf"unknown key `run.{key}`"):
        params.check_known_keys(values)


def test_dvc_watches_neither_run_nor_tracking() -> None:
    """dvc.yaml's train and evaluate stages list no run.* or tracking.* param (changing the
    device, a speed lever or the MLflow server retrains nothing), every train key but
    `models` is a train dependency, and the stage reads its options from `run:`."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name in ("train", "evaluate"):
        listed = [p for p in stages[name]["params"] if isinstance(p, str)]
        assert not [p for p in listed if p.split(".")[0] in ("run", "tracking")], name
    listed = stages["train"]["params"]
    for key in params.KNOWN_KEYS["train"]:
        if key != "models":
            assert any(p.startswith(f"train.{key}") for p in listed), key
    stage = (REPO / "pipeline" / "train.py").read_text()
    assert "options=RunOptions.from_params(params)" in stage


def test_fused_convs_train_mr2unet_along_the_same_path() -> None:
    """RunOptions.fused_convs (benchmarks only) reaches the network and follows the
    reference's trajectory up to rounding."""
    # one step per epoch: epoch 1's loss is the untouched network's, where only rounding
    # can differ; Adam's first step (about lr x sign(g)) amplifies it in a net this narrow
    cfg = dataclasses.replace(CFG, arch="mr2unet", epochs=2, batch_size=12)
    run = dataclasses.replace(RUN, cpu_threads=1)
    split = tiny_split()
    reference = train(cfg, split, progress=False, options=run)
    fused = train(cfg, split, progress=False,
                  options=dataclasses.replace(run, fused_convs=True))
    assert fused.model.encoder[0].fused_convs and not reference.model.encoder[0].fused_convs
    losses = [[row["loss"] for row in r.history] for r in (reference, fused)]
    assert losses[0] != losses[1]  # really another summation order...
    assert losses[1][0] == pytest.approx(losses[0][0], rel=1e-6)  # ...of the same function
    assert losses[1][1] == pytest.approx(losses[0][1], rel=1e-2)


def test_cpu_kernel_routes_reach_the_network_and_leave_it_as_built(monkeypatch) -> None:
    """The CPU kernel routes (auto: on) switch the network's modules for the run only (the
    returned network runs PyTorch's own kernels, as its checkpoint will) and change only
    the rounding: epoch 1's loss is the untouched network's."""
    from mr2unet.models import build_model, kernels

    def routes(model: torch.nn.Module) -> tuple[int, int]:
        norms = sum(m.narrow_in_nchw for m in model.modules()
                    if isinstance(m, kernels.BatchNorm2d))
        dilated = sum(m.dilation == (2, 2) for m in model.modules()
                      if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1))
        return norms, dilated

    seen: list[tuple[int, int]] = []  # the routes at every forward pass of training

    def spied_build(*args, **kwargs) -> torch.nn.Module:
        model = build_model(*args, **kwargs)
        model.register_forward_pre_hook(lambda module, _args: seen.append(routes(module)))
        return model

    monkeypatch.setattr(setup, "build_model", spied_build)
    cfg = dataclasses.replace(CFG, arch="mr2unet", epochs=2, batch_size=12, base_width=8)
    run = dataclasses.replace(RUN, cpu_threads=1)
    plain = dataclasses.replace(run, narrow_norms_nchw=False, onednn_1x1_convs=False)
    split = tiny_split(12, 32)
    routed = train(cfg, split, progress=False, options=run)
    # width 8: 61 norms of 2-8 channels (tests/test_kernels.py); 20 1x1 convolutions
    # (9 block shortcuts, 10 residual-path units, the classifier)
    assert set(seen) == {(61, 20)}
    seen.clear()
    reference = train(cfg, split, progress=False, options=plain)
    assert set(seen) == {(0, 0)}
    for model in (routed.model, reference.model):
        assert routes(model) == (0, 0)
    losses = [[row["loss"] for row in r.history] for r in (routed, reference)]
    assert losses[0] != losses[1]  # other kernels...
    assert losses[0][0] == pytest.approx(losses[1][0], rel=1e-5)  # ...of the same function
    assert losses[0][1] == pytest.approx(losses[1][1], rel=1e-2)
