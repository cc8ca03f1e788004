"""The CPU kernel routes of mr2unet.models.kernels (issue #24): the same function as
PyTorch's own kernels, to the rounding, on the layouts and widths they are meant for,
and no change anywhere else."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from mr2unet.models import build_model
from mr2unet.models.kernels import (
    BatchNorm2d,
    like_layout,
    narrow_channels,
    narrow_norms_in_nchw,
    onednn_1x1_convs,
)
from mr2unet.models.mr2unet import MultiScaleRecurrentResidualBlock

CL = torch.channels_last


def _norm_pass(norm: nn.Module, x: torch.Tensor, grad: torch.Tensor
               ) -> tuple[torch.Tensor, ...]:
    x = x.detach().clone().requires_grad_()
    y = norm(x)
    y.backward(grad)
    return (y, x.grad, norm.weight.grad, norm.bias.grad, norm.running_mean.clone(),
            norm.running_var.clone())


def _pair(channels: int) -> tuple[BatchNorm2d, BatchNorm2d]:
    torch.manual_seed(0)
    direct = BatchNorm2d(channels)
    with torch.no_grad():
        direct.weight.uniform_(0.5, 1.5)
        direct.bias.uniform_(-0.5, 0.5)
    routed = BatchNorm2d(channels)
    routed.load_state_dict(direct.state_dict())
    routed.narrow_in_nchw = True
    return direct, routed


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_narrow_widths_follow_the_thread_count() -> None:
    assert list(narrow_channels(1)) == [2, 3, 4, 5]
    assert list(narrow_channels(2)) == list(narrow_channels(16)) == [2, 3, 4, 5, 6, 7, 8]


@pytest.mark.parametrize("channels", list(narrow_channels(1)))
def test_a_narrow_channels_last_norm_through_nchw_is_the_same_function(
        channels: int, one_thread: None) -> None:
    direct, routed = _pair(channels)
    x = (torch.randn(4, channels, 24, 20) * 3 + 1).contiguous(memory_format=CL)
    grad = torch.randn(4, channels, 24, 20).contiguous(memory_format=CL)
    want, got = _norm_pass(direct, x, grad), _norm_pass(routed, x, grad)
    assert got[0].is_contiguous(memory_format=CL) and not got[0].is_contiguous()
    assert got[1].is_contiguous(memory_format=CL)
    for a, b in zip(got, want, strict=True):  # the parameters' gradients sum 1920 terms
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    # and in evaluation, with the running statistics
    direct.eval(), routed.eval()
    torch.testing.assert_close(routed(x), direct(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("channels, layout", [(8, CL), (6, CL), (1, CL),
                                              (3, torch.contiguous_format)])
def test_other_inputs_take_the_direct_path_to_the_bit(
        channels: int, layout: torch.memory_format, one_thread: None) -> None:
    """On one thread: 6 and 8 channels are narrow only on more threads."""
    direct, routed = _pair(channels)
    x = torch.randn(4, channels, 16, 16).contiguous(memory_format=layout)
    grad = torch.randn(4, channels, 16, 16).contiguous(memory_format=layout)
    for a, b in zip(_norm_pass(routed, x, grad), _norm_pass(direct, x, grad), strict=True):
        assert torch.equal(a, b)


def test_the_norm_keeps_torchs_parameters_and_state_dict() -> None:
    ours, torchs = BatchNorm2d(4), nn.BatchNorm2d(4)
    assert isinstance(ours, nn.BatchNorm2d)
    assert ours.state_dict().keys() == torchs.state_dict().keys()
    ours.load_state_dict(torchs.state_dict())
    assert not ours.narrow_in_nchw


@pytest.mark.parametrize("arch, narrow", [("unet", 5), ("resunet", 5), ("attention_unet", 9),
                                          ("mr2unet", 61)])
def test_the_switch_reaches_exactly_the_narrow_norms(arch: str, narrow: int) -> None:
    """At width 8 the first level is 8 wide: U-Net's two blocks there have 2 norms each
    and the up-convolution into it 1 (ResUNet: the same count); Attention U-Net adds
    W_g's and W_x's norms of its first two gates (4 and 8 wide).  MR2U-Net, per block:
    level 0 (units 1, 3, 4 wide, t + 1 = 4 norms each) 8 + its 8-wide norm and shortcut,
    level 1 (3, 5, 8) 12, level 2's 5-wide unit 4; times 2 blocks, plus the 4 residual
    units of the first skip (2 norms each) and the up-convolution: 20 + 24 + 8 + 8 + 1."""
    model = build_model(arch, base_width=8)
    assert narrow_norms_in_nchw(model) == narrow
    on = [m for m in model.modules() if isinstance(m, BatchNorm2d) and m.narrow_in_nchw]
    assert len(on) == narrow and all(m.num_features in narrow_channels(2) for m in on)
    assert narrow_norms_in_nchw(model, enabled=False) == narrow
    assert not any(getattr(m, "narrow_in_nchw", False) for m in model.modules())
    assert narrow_norms_in_nchw(build_model(arch, base_width=64)) == 0  # full size: none


def _conv_pass(conv: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The output and the gradients (input, weight, bias) of a fresh pass."""
    conv.zero_grad()
    x = x.clone().requires_grad_()
    y = conv(x)
    y.backward(torch.ones_like(y))
    return y, [x.grad, *(p.grad.clone() for p in conv.parameters())]


def _conv_ops(conv: nn.Conv2d, x: torch.Tensor) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        conv(x).sum().backward()
    return {e.key for e in prof.key_averages() if "conv" in e.key}


def test_a_dilated_1x1_convolution_is_the_same_function_through_onednn(
        one_thread: None) -> None:
    """The dilation of a 1x1 kernel computes nothing different, and sends PyTorch's
    one-thread, small-batch 1x1 convolution to oneDNN (if PyTorch changes that rule, the
    route no longer pays: this test says so)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 1, bias=True).to(memory_format=CL)
    x = torch.randn(4, 6, 16, 16).contiguous(memory_format=CL)
    before = _conv_ops(conv, x.clone().requires_grad_())
    want, want_grads = _conv_pass(conv, x)
    assert onednn_1x1_convs(conv) == 1 and conv.dilation == (2, 2)
    after = _conv_ops(conv, x.clone().requires_grad_())
    got, got_grads = _conv_pass(conv, x)
    assert "aten::_slow_conv2d_forward" in before and "aten::mkldnn_convolution" not in before
    assert "aten::mkldnn_convolution" in after and "aten::_slow_conv2d_forward" not in after
    assert got.shape == want.shape and got.is_contiguous(memory_format=CL)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    assert onednn_1x1_convs(conv, enabled=False) == 1 and conv.dilation == (1, 1)


def test_the_1x1_route_leaves_other_convolutions_alone() -> None:
    model = build_model("resunet", base_width=8)
    kernels = {name: m.kernel_size for name, m in model.named_modules()
               if isinstance(m, nn.Conv2d)}
    ones = sum(k == (1, 1) for k in kernels.values())
    assert onednn_1x1_convs(model) == ones > 0
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            assert m.dilation == ((2, 2) if kernels[name] == (1, 1) else (1, 1))
            assert m.padding == ((0, 0) if kernels[name] == (1, 1) else (1, 1))


def test_like_layout_follows_the_reference_tensor() -> None:
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=CL)
    y = torch.randn(2, 4, 8, 8)
    assert like_layout(y, x).is_contiguous(memory_format=CL)
    assert torch.equal(like_layout(y, x), y)
    assert like_layout(y, x.contiguous()) is y  # NCHW reference: untouched
    z = y.contiguous(memory_format=CL)
    assert like_layout(z, x) is z  # already channels-last: no copy


def test_mr2unet_blocks_keep_channels_last_with_a_one_channel_unit() -> None:
    """At width 8 the first unit is 1 channel wide, and torch.cat of it with the others
    gave NCHW, which the whole first level then mixed with channels-last (issue #24)."""
    torch.manual_seed(0)
    block = MultiScaleRecurrentResidualBlock(3, 8).to(memory_format=CL)
    assert block.unit1.recurrent.out_channels == 1
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=CL)
    y = block(x)
    assert y.is_contiguous(memory_format=CL) and not y.is_contiguous()
    nchw = block.to(memory_format=torch.contiguous_format)(x.contiguous())
    assert nchw.is_contiguous()
    torch.testing.assert_close(y, nchw, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_a_routed_network_computes_the_same_function() -> None:
    """In float64 (where only the rounding could tell them apart) MR2U-Net's logits and
    gradients with both routes on are those of the network as built, in training mode."""
    torch.manual_seed(0)
    model = build_model("mr2unet", base_width=8).double().to(memory_format=CL)
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64).contiguous(memory_format=CL)

    def run() -> list[torch.Tensor]:
        model.zero_grad()
        logits = model(x)
        logits.square().mean().backward()
        return [logits.detach(), *(p.grad.clone() for p in model.parameters())]

    state = {k: v.clone() for k, v in model.state_dict().items()}
    want = run()
    model.load_state_dict(state)  # the same running statistics again
    assert narrow_norms_in_nchw(model) == 61 and onednn_1x1_convs(model) == 20
    got = run()
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_the_benchmark_measures_every_part(capsys: pytest.CaptureFixture,
                                           one_thread: None) -> None:
    """benchmarks/cpu_kernels.py, the measurement behind the routes' rules, runs and prints
    a ratio per channel count, per convolution shape and per network."""
    import sys
    from pathlib import Path

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(benchmarks))
    try:
        import cpu_kernels
    finally:
        sys.path.remove(str(benchmarks))
    cpu_kernels.main(["--sizes", "16", "--repeats", "1", "--models", "unet", "mr2unet"])
    out = capsys.readouterr().out
    assert out.count(" channels  direct ") == 10
    assert out.count("  oneDNN ") == 6
    assert "unet            off" in out and "mr2unet         off" in out
    ratios = [float(line.rsplit("ratio", 1)[1]) for line in out.splitlines() if "ratio" in line]
    assert len(ratios) == 18 and all(r > 0 for r in ratios)
    # Adam's two implementations (and their weights compared) and bf16 autocast
    cpu_kernels.main(["--parts", "adam", "bf16", "--sizes", "16", "--batch", "2",
                      "--repeats", "1", "--models", "unet", "mr2unet"])
    out = capsys.readouterr().out
    assert out.count("weights bit-identical") == 2 and "DIFFER" not in out
    assert out.count(" bf16 ") == 2 + 1  # a line per network and the heading
