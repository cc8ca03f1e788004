"""What `auto` means on each device: the one table (mr2unet.training.speed.AUTO) and the
function that resolves a config's speed values (issue #22)."""

from __future__ import annotations

import pytest
import torch

from mr2unet.config import params
from mr2unet.errors import UserError
from mr2unet.training.speed import AUTO, RunSettings, run_settings

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


def test_auto_on_the_cpu_is_the_loop_as_committed() -> None:
    run = run_settings(CPU)
    assert run == RunSettings(CPU, None, True, None, "auto", False, True, False, True, True)
    assert run.describe() == ("cpu, fp32, channels_last, compile off, adam auto, "
                              "cuda_graphs off, fused_convs off, narrow_norms_nchw on, "
                              "onednn_1x1_convs on, deterministic")
    assert run_settings(CPU, fused_convs=True).fused_convs
    assert run_settings(CPU, fused_convs="auto").fused_convs is AUTO["cpu"]["fused_convs"]
    # cuda_graphs: auto and true are off on the CPU whatever AUTO's CUDA row says
    assert not run_settings(CPU, cuda_graphs="auto").cuda_graphs
    assert not run_settings(CPU, cuda_graphs=True).cuda_graphs
    # the kernel routes are channels-last ones, and oneDNN's a CPU one
    nchw = run_settings(CPU, channels_last=False, narrow_norms_nchw=True, onednn_1x1_convs=True)
    assert not nchw.narrow_norms_nchw and not nchw.onednn_1x1_convs
    off = run_settings(CPU, narrow_norms_nchw=False, onednn_1x1_convs=False)
    assert not off.narrow_norms_nchw and not off.onednn_1x1_convs


def test_the_cpu_kernel_routes_stay_off_on_cuda() -> None:
    assert not run_settings(CUDA).narrow_norms_nchw and not run_settings(CUDA).onednn_1x1_convs
    forced = run_settings(CUDA, narrow_norms_nchw=True, onednn_1x1_convs=True)
    assert forced.narrow_norms_nchw  # BatchNorm2d itself takes the route on CPU tensors only
    assert not forced.onednn_1x1_convs


def test_auto_on_cuda_follows_the_table() -> None:
    run = run_settings(CUDA, cuda_graphs="auto")
    assert run.amp_dtype is torch.bfloat16 and run.channels_last
    assert run.cuda_graphs is AUTO["cuda"]["cuda_graphs"]
    assert run.adam_impl == AUTO["cuda"]["adam_impl"]
    # other device types: fp32, contiguous
    other = run_settings(MPS)
    assert other.amp_dtype is None and not other.channels_last


def test_explicit_values_override_auto_and_graphs_need_one_eager_cuda_process() -> None:
    run = run_settings(CUDA, precision="fp32", channels_last=False, adam_impl="fused",
                       cuda_graphs=True, deterministic=False)
    assert (run.amp_dtype, run.channels_last, run.adam_impl, run.cuda_graphs,
            run.deterministic) == (None, False, "fused", True, False)
    assert not run_settings(CUDA, cuda_graphs=True, world=2).cuda_graphs
    assert not run_settings(CUDA, cuda_graphs=True, compile=True).cuda_graphs
    assert run_settings(CUDA, compile=True).compile_mode == "default"
    assert run_settings(CPU, precision="bf16").amp_dtype is torch.bfloat16


def test_a_table_change_reaches_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """AUTO is the only place the choice lives: flipping its CUDA row flips the run."""
    monkeypatch.setitem(AUTO, "cuda", {**AUTO["cuda"], "cuda_graphs": True,
                                       "adam_impl": "fused"})
    run = run_settings(CUDA, cuda_graphs="auto")
    assert run.cuda_graphs and run.adam_impl == "fused"
    assert not run_settings(CUDA, cuda_graphs=False).cuda_graphs


def test_params_accept_cuda_graphs_auto() -> None:
    from pathlib import Path

    values = params.load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    values["train"]["cuda_graphs"] = "auto"
    values["train"]["compile"] = "default"
    params.validate(values)  # auto beside compile: run_settings turns the graphs off
    values["train"]["cuda_graphs"] = True
    with pytest.raises(UserError, match="train.cuda_graphs"):
        params.validate(values)
    values["train"]["cuda_graphs"] = "sometimes"
    values["train"]["compile"] = False
    with pytest.raises(UserError, match="train.cuda_graphs"):
        params.validate(values)


@pytest.mark.parametrize("key", ["narrow_norms_nchw", "onednn_1x1_convs"])
def test_params_take_the_cpu_kernel_routes_as_booleans_or_auto(key: str) -> None:
    from pathlib import Path

    values = params.load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    assert values["train"][key] == "auto"
    for good in (True, False, "auto"):
        values["train"][key] = good
        params.validate(values)
    values["train"][key] = "yes"
    with pytest.raises(UserError, match=f"train.{key}"):
        params.validate(values)


def test_fused_convs_train_mr2unet_along_the_same_path() -> None:
    """train.fused_convs reaches the network, stays out of the fingerprint (a run resumes
    with it switched either way) and follows the reference's trajectory up to rounding."""
    import dataclasses

    from helpers import CFG, tiny_split

    from mr2unet.training.loop import train

    # one step per epoch: epoch 1's loss is the untouched network's, where only rounding
    # can differ; Adam's first step (about lr x sign(g)) amplifies it in a net this narrow
    cfg = dataclasses.replace(CFG, arch="mr2unet", epochs=2, batch_size=12, cpu_threads=1)
    fused_cfg = dataclasses.replace(cfg, fused_convs=True)
    assert cfg.fingerprint() == fused_cfg.fingerprint()
    split = tiny_split()
    reference = train(cfg, split, progress=False)
    fused = train(fused_cfg, split, progress=False)
    assert fused.model.encoder[0].fused_convs and not reference.model.encoder[0].fused_convs
    losses = [[row["loss"] for row in r.history] for r in (reference, fused)]
    assert losses[0] != losses[1]  # really another summation order...
    assert losses[1][0] == pytest.approx(losses[0][0], rel=1e-6)  # ...of the same function
    assert losses[1][1] == pytest.approx(losses[0][1], rel=1e-2)


def test_cpu_kernel_routes_reach_the_network_and_leave_it_as_built(monkeypatch) -> None:
    """train.narrow_norms_nchw and train.onednn_1x1_convs switch the network's modules for
    the run only (the returned network runs PyTorch's own kernels, as its checkpoint will),
    stay out of the fingerprint, and change only the rounding: epoch 1's loss is the
    untouched network's."""
    import dataclasses

    from helpers import CFG, tiny_split

    from mr2unet.models import build_model, kernels
    from mr2unet.training import loop

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

    monkeypatch.setattr(loop, "build_model", spied_build)
    cfg = dataclasses.replace(CFG, arch="mr2unet", epochs=2, batch_size=12, cpu_threads=1,
                              base_width=8)
    plain = dataclasses.replace(cfg, narrow_norms_nchw=False, onednn_1x1_convs=False)
    assert cfg.fingerprint() == plain.fingerprint()
    split = tiny_split(12, 32)
    routed = loop.train(cfg, split, progress=False)
    # width 8: 61 norms of 2-8 channels (tests/test_kernels.py); 20 1x1 convolutions
    # (9 block shortcuts, 10 residual-path units, the classifier)
    assert set(seen) == {(61, 20)}
    seen.clear()
    reference = loop.train(plain, split, progress=False)
    assert set(seen) == {(0, 0)}
    for model in (routed.model, reference.model):
        assert routes(model) == (0, 0)
    losses = [[row["loss"] for row in r.history] for r in (routed, reference)]
    assert losses[0] != losses[1]  # other kernels...
    assert losses[0][0] == pytest.approx(losses[1][0], rel=1e-5)  # ...of the same function
    assert losses[0][1] == pytest.approx(losses[1][1], rel=1e-2)
