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
    assert run == RunSettings(CPU, None, True, None, "auto", False, True, False)
    assert run.describe() == ("cpu, fp32, channels_last, compile off, adam auto, "
                              "cuda_graphs off, fused_convs off, deterministic")
    assert run_settings(CPU, fused_convs=True).fused_convs
    assert run_settings(CPU, fused_convs="auto").fused_convs is AUTO["cpu"]["fused_convs"]
    # cuda_graphs: auto and true are off on the CPU whatever AUTO's CUDA row says
    assert not run_settings(CPU, cuda_graphs="auto").cuda_graphs
    assert not run_settings(CPU, cuda_graphs=True).cuda_graphs


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
