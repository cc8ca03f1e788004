"""The expert speed levers of ``RunOptions`` on the CPU (formerly in tests/test_gpu_check.py,
whose GPU-check phases measured them): CUDA graphs are a no-op here, fused and foreach Adam
take the same step, ``run.compile`` reaches ``torch.compile``, and the fast mode switches
determinism off again.  The CUDA side is tests/test_cuda.py (the device call)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import CFG, states_equal, tiny_split

from mr2unet.errors import UserError
from mr2unet.models import build_model
from mr2unet.training.loop import train
from mr2unet.training.options import RunOptions, compile_mode
from mr2unet.training.setup import make_optimizer

CPU = RunOptions(device="cpu", cpu_threads=1)


@pytest.mark.slow
def test_cuda_graphs_are_a_no_op_on_the_cpu() -> None:
    split = tiny_split()
    plain = train(CFG, split, progress=False, options=CPU)
    graphed = train(CFG, split, progress=False,
                    options=dataclasses.replace(CPU, cuda_graphs=True))
    assert states_equal(plain.model, graphed.model)


def test_fused_and_foreach_adam_take_the_same_step() -> None:
    x = torch.rand(2, 3, 32, 32)
    stepped = {}
    for impl in ("auto", "foreach", "fused"):
        torch.manual_seed(0)
        model = build_model("unet", base_width=4)
        optimizer = make_optimizer(model, CFG, impl)
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
        train(CFG, tiny_split(), progress=False,
              options=dataclasses.replace(CPU, adam_impl="sgd"))


@pytest.mark.parametrize("weight_decay", [0.0, 1e-4])
def test_auto_adam_is_the_per_tensor_loop_to_the_bit_on_the_cpu(weight_decay: float) -> None:
    # `auto` updates a list of tensors at a time (faster on the CPU); it must stay the
    # update PyTorch's per-tensor loop computes, to the bit, or every CPU run would change.
    cfg = dataclasses.replace(CFG, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(3)
    batches = [(torch.rand(2, 3, 32, 32, generator=generator),
                torch.randint(0, 2, (2, 32, 32), generator=generator)) for _ in range(4)]
    models = []
    for make in (lambda m: make_optimizer(m, cfg, "auto"),
                 lambda m: torch.optim.Adam(m.parameters(), lr=cfg.lr,
                                            weight_decay=cfg.weight_decay, foreach=False)):
        torch.manual_seed(0)
        model = build_model("mr2unet", base_width=4)
        optimizer = make(model)
        for x, y in batches:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        models.append(model)
    assert states_equal(*models)


def test_compile_modes_reach_torch_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [compile_mode(v) for v in (False, True, "reduce-overhead")] == [
        None, "default", "reduce-overhead"]
    with pytest.raises(UserError, match="run.compile"):
        compile_mode("fastest")
    seen = []
    monkeypatch.setattr(torch, "compile", lambda model, mode: seen.append(mode) or model)
    train(dataclasses.replace(CFG, epochs=1), tiny_split(), progress=False,
          options=dataclasses.replace(CPU, compile="reduce-overhead"))
    assert seen == ["reduce-overhead"]


@pytest.mark.slow
def test_fast_mode_switches_determinism_off_again() -> None:
    one = dataclasses.replace(CFG, epochs=1)
    train(one, tiny_split(), progress=False, options=CPU)
    assert torch.are_deterministic_algorithms_enabled()
    train(one, tiny_split(), progress=False,
          options=dataclasses.replace(CPU, deterministic=False))
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    torch.backends.cudnn.benchmark = False
