"""The four networks: shapes, errors, gradients, determinism, memory formats, precision,
torch.compile, pinned sizes, learning, and the recurrent and multi-scale blocks."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from mr2unet.errors import UserError
from mr2unet.models import MODEL_NAMES, InputSizeError, build_model, model_options
from mr2unet.models.mr2unet import (
    MultiScaleRecurrentResidualBlock,
    RecurrentConv,
    ResidualPath,
    multiscale_widths,
)

# Full-size (base_width=64, 3 -> 2 channels) parameter counts; a change here is an
# architecture change: rerun benchmarks/model_summary.py to update docs/models.md with it.
FULL_SIZE_PARAMS = {
    "unet": 34_520_258,
    "resunet": 8_219_650,
    "attention_unet": 34_870_826,
    "mr2unet": 23_975_732,
}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """These tiny networks run fastest on one thread, and far faster than on two when the
    cores are shared with other jobs (OpenMP threads then wait on each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(name: str, **options: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, base_width=4, **options)


def batch(n: int = 2, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, size, size, generator=gen)
    y = (torch.rand(n, size, size, generator=gen) > 0.8).long()
    return x, y


# --- the contract: shapes, sizes, names, options -------------------------------------------

@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize(("n", "height", "width"), [(1, 32, 32), (2, 64, 48), (3, 16, 80)])
def test_output_shape_and_dtype(name: str, n: int, height: int, width: int) -> None:
    model = tiny(name).eval()
    with torch.no_grad():
        out = model(torch.rand(n, 3, height, width))
    assert out.shape == (n, 2, height, width)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_channel_counts_are_configurable() -> None:
    model = build_model("mr2unet", in_channels=1, num_classes=3, base_width=4).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 32, 32)).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize(("height", "width"), [(36, 36), (32, 40), (24, 24)])
def test_sizes_not_multiple_of_16_are_rejected(name: str, height: int, width: int) -> None:
    # 24x24 would fit ResUNet's 3 down-samplings: every network applies the same rule.
    with pytest.raises(InputSizeError, match=f"{height}x{width} is not a multiple of 16"):
        tiny(name)(torch.rand(1, 3, height, width))
    assert issubclass(InputSizeError, UserError) and issubclass(InputSizeError, ValueError)


def test_unknown_model_lists_the_valid_ones() -> None:
    with pytest.raises(UserError, match="valid models: unet, resunet, attention_unet, mr2unet"):
        build_model("segformer")


def test_registry_lists_the_four_networks_in_the_papers_order() -> None:
    assert MODEL_NAMES == ("unet", "resunet", "attention_unet", "mr2unet")


def test_options_are_checked() -> None:
    assert model_options("unet") == {}
    assert model_options("mr2unet") == {
        "recurrent_steps": 3, "respath_lengths": (4, 3, 2, 1), "width_multiplier": 1.0,
        "recurrent_kernels": "separate", "step_norms": "per_step", "unit_split": (1, 2, 3)}
    with pytest.raises(UserError, match="unknown option.*recurrent_steps.*valid options: none"):
        build_model("unet", recurrent_steps=2)
    with pytest.raises(UserError, match="valid options: recurrent_steps, respath_lengths, "
                                        "width_multiplier, recurrent_kernels"):
        build_model("mr2unet", steps=2)
    for bad, match in (({"width_multiplier": 0}, "width_multiplier must be a number > 0"),
                       ({"width_multiplier": True}, "width_multiplier must be a number > 0"),
                       ({"recurrent_kernels": "shared"}, "recurrent_kernels must be one of "
                                                         "separate, tied"),
                       ({"step_norms": "one"}, "step_norms must be one of per_step, shared"),
                       ({"unit_split": [1, 2]}, "unit_split must be three numbers > 0"),
                       ({"unit_split": [1, 0, 3]}, "unit_split must be three numbers > 0"),
                       ({"width_multiplier": 0.5}, "first level at least 3 wide")):
        with pytest.raises(UserError, match=match):
            build_model("mr2unet", base_width=4, **bad)
    with pytest.raises(UserError, match="recurrent_steps must be an integer >= 1"):
        build_model("mr2unet", base_width=4, recurrent_steps=0)
    with pytest.raises(UserError, match="respath_lengths must be 4 integers"):
        build_model("mr2unet", base_width=4, respath_lengths=[4, 3, 2])
    with pytest.raises(UserError, match="base_width must be an integer >= 1"):
        build_model("unet", base_width=0)


# --- training properties --------------------------------------------------------------------

@pytest.mark.parametrize("name", MODEL_NAMES)
def test_gradients_reach_every_parameter(name: str) -> None:
    model = tiny(name)
    x, y = batch()
    F.cross_entropy(model(x), y).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert dead == []


def batch_norm_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    return [b.clone() for n, b in model.named_buffers() if n.endswith(("running_mean",
                                                                       "running_var"))]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_eval_mode_uses_the_running_statistics(name: str) -> None:
    """In eval mode an image's output does not depend on the rest of its batch (BatchNorm
    normalises with the running statistics), and a forward pass leaves them alone; in train
    mode it normalises with the batch's statistics and updates the running ones."""
    model = tiny(name)
    x, _ = batch(n=3)
    before = batch_norm_buffers(model)
    assert before, "every network has BatchNorm layers"
    with torch.no_grad():
        model.eval()
        alone, together = model(x[:1]), model(x)[:1]
        assert torch.allclose(alone, together, atol=1e-5)
        assert all(torch.equal(a, b) for a, b in zip(before, batch_norm_buffers(model),
                                                     strict=True))
        model.train()
        assert not torch.allclose(model(x[:1]), model(x)[:1], atol=1e-3)
        moved = batch_norm_buffers(model)
        assert all(not torch.equal(a, b) for a, b in zip(before, moved, strict=True))
        model.eval()
        assert not torch.allclose(model(x[:1]), alone, atol=1e-3)  # the new statistics count


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_a_training_step_is_bit_identical_twice(name: str, device: str) -> None:
    """Two backward passes of one batch give bit-identical gradients.

    On a CPU every PyTorch kernel these networks use is deterministic with or without
    ``torch.use_deterministic_algorithms``, so there this checks only that the networks
    draw no randomness of their own (no dropout, no run-time initialisation). On CUDA,
    where cuDNN and atomics may reorder sums, it checks the deterministic kernels, and
    ``use_deterministic_algorithms(True)`` raises on an op that has none.
    """
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU: the deterministic-kernel check needs one")
    model = tiny(name).to(device)
    x, y = (t.to(device) for t in batch())
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # raises on ops without a deterministic kernel
    try:
        grads = []
        for _ in range(2):
            clone = copy.deepcopy(model)
            F.cross_entropy(clone(x), y).backward()
            grads.append([p.grad for p in clone.parameters()])
    finally:
        torch.use_deterministic_algorithms(before)
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_channels_last_gives_the_same_result(name: str) -> None:
    model = tiny(name)
    x, y = batch()
    twin = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    # The backward pass once crashed (strided 1x1 convolution, oneDNN, ResUNet).
    F.cross_entropy(twin(x_cl), y).backward()
    F.cross_entropy(model(x), y).backward()
    with torch.no_grad():
        assert torch.allclose(twin.eval()(x_cl), model.eval()(x), atol=1e-5)
    # The gradients, in float64: in float32 MR2U-Net's one-channel first units amplify the
    # rounding differences of the two layouts to a few per cent at initialisation.
    model64, twin64 = model.double().train(), twin.double().train()
    for net in (model64, twin64):
        net.zero_grad()
    F.cross_entropy(twin64(x_cl.double()), y).backward()
    F.cross_entropy(model64(x.double()), y).backward()
    pairs = list(zip(twin64.named_parameters(), model64.parameters(), strict=True))
    assert [n for (n, a), b in pairs if not torch.allclose(a.grad, b.grad, rtol=1e-7,
                                                          atol=1e-9)] == []


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_bf16_autocast_runs_forward_and_backward(name: str) -> None:
    model = tiny(name)
    x, y = batch()
    with torch.no_grad():  # about half of the pixels defects: masks that can disagree
        z = model(x)
        model.head.bias[1] -= (z[:, 1] - z[:, 0]).median()
        margin = model(x).diff(dim=1)[:, 0]  # fp32 logit of defect minus background
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    assert logits.dtype == torch.bfloat16 and logits.shape == (2, 2, 32, 32)
    same = (logits.float().diff(dim=1)[:, 0] > 0) == (margin > 0)
    # bf16 keeps 8 bits of mantissa: masks differ only near the decision boundary.
    assert same.float().mean() > 0.85
    clear = margin.abs() > margin.std()
    assert clear.float().mean() > 0.15 and same[clear].float().mean() > 0.99
    F.cross_entropy(logits.float(), y).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.slow
def test_compiles_as_one_graph(name: str) -> None:
    # fullgraph=True fails on any graph break (.item(), data-dependent Python branches);
    # the "eager" backend checks the capture without the cost of code generation.
    options = {"recurrent_steps": 1, "respath_lengths": (1, 1, 0, 0)} if name == "mr2unet" else {}
    model = tiny(name, **options).eval()
    x, _ = batch()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_full_size_parameter_counts_are_pinned(name: str) -> None:
    model = build_model(name)
    assert sum(p.numel() for p in model.parameters()) == FULL_SIZE_PARAMS[name]


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.slow
def test_tiny_model_overfits_a_few_pairs(name: str) -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32) * 0.3
    y = torch.zeros(4, 32, 32, dtype=torch.long)
    for i in range(4):  # one bright rectangle per image, a different one each
        y[i, 2 + 2 * i:8 + 2 * i, 3:9 + i] = 1
        x[i, :, 2 + 2 * i:8 + 2 * i, 3:9 + i] += 0.6
    model = build_model(name, base_width=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10


# --- MR2U-Net's blocks ----------------------------------------------------------------------

def test_multiscale_split_follows_multiresunet() -> None:
    assert multiscale_widths(64) == (11, 21, 32)
    assert multiscale_widths(8) == (1, 3, 4)  # the demo's first level
    assert multiscale_widths(1) == (1, 1, 1)
    for width in range(3, 300):
        parts = multiscale_widths(width)
        assert min(parts) >= 1 and sum(parts) == width
        assert parts[0] <= parts[1] <= parts[2]


def test_recurrent_layer_matches_a_hand_unrolled_computation() -> None:
    torch.manual_seed(0)
    layer = RecurrentConv(3, 5, steps=3).eval()
    for norm in layer.norms:  # distinct statistics per step, so each step's BN matters
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.uniform_(-0.2, 0.2)
    x = torch.rand(2, 3, 16, 16)

    def bn(k: int, t: torch.Tensor) -> torch.Tensor:
        n = layer.norms[k]
        return F.batch_norm(t, n.running_mean, n.running_var, n.weight, n.bias, eps=n.eps)

    with torch.no_grad():
        drive = F.conv2d(x, layer.feed_forward.weight, padding=1)  # w_f * x, once
        h = torch.relu(bn(0, drive))  # h(0)
        states = [h]
        for k in (1, 2, 3):  # h(k) = ReLU(BN_k(w_f * x + w_r * h(k-1)))
            h = torch.relu(bn(k, drive + F.conv2d(h, layer.recurrent.weight, padding=1)))
            states.append(h)
        assert torch.allclose(layer(x), states[3], atol=1e-6)
        # Each step changes the state, so t really is 3 steps deep.
        assert all(not torch.allclose(a, b) for a, b in zip(states[:-1], states[1:], strict=True))
        shorter = RecurrentConv(3, 5, steps=2).eval()
        shorter.load_state_dict(layer.state_dict(), strict=False)  # norms.3 left out
        assert torch.allclose(shorter(x), states[2], atol=1e-6)


def test_multiscale_block_chains_its_units_and_adds_the_residual() -> None:
    torch.manual_seed(0)
    block = MultiScaleRecurrentResidualBlock(5, 12, steps=2).eval()
    x = torch.rand(2, 5, 16, 16)
    with torch.no_grad():
        u1 = block.unit1(x)
        u2 = block.unit2(u1)
        u3 = block.unit3(u2)
        expected = torch.relu(block.norm(torch.cat([u1, u2, u3], 1)) + block.shortcut(x))
        assert [u.shape[1] for u in (u1, u2, u3)] == [2, 4, 6]
        assert torch.allclose(block(x), expected, atol=1e-6)


def test_mr2unet_skips_are_residual_paths_longest_at_the_top() -> None:
    model = build_model("mr2unet", base_width=4)
    # decoder stages run deepest first; level 0 (full resolution) is the last.
    lengths = [len(stage.skip) for stage in model.decoder]
    assert all(isinstance(stage.skip, ResidualPath) for stage in model.decoder)
    assert lengths == [1, 2, 3, 4]


def test_mr2unet_refuses_a_width_its_units_cannot_split() -> None:
    """Width 2 cannot be split into three units (1/6, 1/3, 1/2): one clear error, not a
    crash in the first forward pass; width 3 is the smallest that works."""
    from mr2unet.errors import UserError
    from mr2unet.models import build_model

    with pytest.raises(UserError, match="base_width >= 3"):
        build_model("mr2unet", base_width=2)
    out = build_model("mr2unet", base_width=3).eval()(torch.zeros(1, 3, 16, 16))
    assert out.shape == (1, 2, 16, 16)


# --- MR2U-Net's readings of the paper (issue #25): counts by hand, equations, defaults -----

def _hand_count_mr2unet(base: int, steps: int = 3, lengths: tuple[int, ...] = (4, 3, 2, 1),
                        multiplier: float = 1.0, kernels: str = "separate",
                        norms: str = "per_step", split: tuple[int, ...] = (1, 2, 3),
                        in_ch: int = 3, classes: int = 2) -> int:
    """MR2U-Net's parameters counted from the formulas of docs/models.md, not the modules."""
    def bn(c: int) -> int:
        return 2 * c

    def unit(i: int, o: int) -> int:
        feed = (i * o if i != o else 0) if kernels == "tied" else 9 * i * o
        return feed + 9 * o * o + bn(o) * (steps + 1 if norms == "per_step" else 1)

    def block(i: int, w: int) -> int:
        total = sum(split)
        w1 = max(1, round(w * split[0] / total))
        w2 = max(1, round(w * split[1] / total))
        w3 = w - w1 - w2
        return unit(i, w1) + unit(w1, w2) + unit(w2, w3) + bn(w) + i * w + bn(w)

    widths = [round(multiplier * base * 2**k) for k in range(5)]
    count = block(in_ch, widths[0]) + sum(block(widths[k - 1], widths[k]) for k in range(1, 5))
    for k in range(4):
        w = widths[k]
        count += 9 * widths[k + 1] * w + bn(w)          # UpConv
        count += lengths[k] * (9 * w * w + bn(w) + w * w + bn(w))  # residual path
        count += block(2 * w, w)
    return count + widths[0] * classes + classes


MR2UNET_VARIANTS: dict[str, dict[str, object]] = {
    "default": {},
    "multiresunet_widths": {"multiplier": 1.67},
    "tied_kernels": {"kernels": "tied"},
    "shared_norms": {"norms": "shared"},
    "r2unet_code": {"kernels": "tied", "norms": "shared", "steps": 2},
    "no_residual_paths": {"lengths": (0, 0, 0, 0)},
    "equal_split": {"split": (1, 1, 1)},
}
_OPTION_NAMES = {"multiplier": "width_multiplier", "kernels": "recurrent_kernels",
                 "norms": "step_norms", "steps": "recurrent_steps", "lengths": "respath_lengths",
                 "split": "unit_split"}


@pytest.mark.parametrize("variant", sorted(MR2UNET_VARIANTS))
@pytest.mark.parametrize("base", [8, 16, 64])
def test_mr2unet_variant_parameter_counts_match_a_hand_count(variant: str, base: int) -> None:
    from mr2unet.evaluation.cost import count_parameters

    hand = MR2UNET_VARIANTS[variant]
    options = {_OPTION_NAMES[k]: v for k, v in hand.items()}
    model = build_model("mr2unet", base_width=base, **options)
    assert count_parameters(model) == _hand_count_mr2unet(base, **hand)  # type: ignore[arg-type]
    if variant == "default" and base == 64:
        assert count_parameters(model) == FULL_SIZE_PARAMS["mr2unet"]


@pytest.mark.parametrize("variant", sorted(MR2UNET_VARIANTS))
def test_mr2unet_variants_keep_the_contract(variant: str) -> None:
    options = {_OPTION_NAMES[k]: v for k, v in MR2UNET_VARIANTS[variant].items()}
    model = tiny("mr2unet", **options)
    x, y = batch(2, 32)
    logits = model(x)
    assert logits.shape == (2, 2, 32, 32)
    F.cross_entropy(logits, y).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_width_multiplier_widens_every_level_like_multiresunet() -> None:
    model = build_model("mr2unet", base_width=32, width_multiplier=1.67)
    # MultiResUNet's 1.67 x 32..512 (53, 107, 214, 428, 855), each split 1/6-1/3-1/2.
    assert [b.norm.num_features for b in model.encoder] == [53, 107, 214, 428, 855]
    assert [s.block.norm.num_features for s in model.decoder] == [428, 214, 107, 53]
    assert model.head.in_channels == 53
    block = model.encoder[0]
    assert [u.recurrent.out_channels for u in (block.unit1, block.unit2, block.unit3)] == [
        9, 18, 26]


def test_tied_kernels_convolve_the_input_plus_the_state() -> None:
    """R2U-Net's code: x' = P*x, h(0) = ReLU(BN_0(w*x')), h(k) = ReLU(BN_k(w*(x'+h(k-1))))."""
    torch.manual_seed(0)
    layer = RecurrentConv(3, 5, steps=2, kernels="tied").eval()
    for norm in layer.norms:
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
    x = torch.rand(2, 3, 16, 16)
    assert not hasattr(layer, "feed_forward") and layer.project.kernel_size == (1, 1)

    def bn(k: int, t: torch.Tensor) -> torch.Tensor:
        n = layer.norms[k]
        return F.batch_norm(t, n.running_mean, n.running_var, n.weight, n.bias, eps=n.eps)

    with torch.no_grad():
        xp = F.conv2d(x, layer.project.weight)
        w = layer.recurrent.weight
        h = torch.relu(bn(0, F.conv2d(xp, w, padding=1)))
        for k in (1, 2):
            h = torch.relu(bn(k, F.conv2d(xp + h, w, padding=1)))
        assert torch.allclose(layer(x), h, atol=1e-6)
    same_width = RecurrentConv(4, 4, steps=1, kernels="tied")
    assert isinstance(same_width.project, torch.nn.Identity)


def test_shared_norms_use_one_batch_norm_at_every_step() -> None:
    torch.manual_seed(0)
    layer = RecurrentConv(3, 4, steps=3, norms="shared")
    assert len(layer.norms) == 1
    layer(torch.rand(2, 3, 8, 8))
    # train mode: the one BN saw t + 1 = 4 batches (R2U-Net's code updates it at every step)
    assert layer.norms[0].num_batches_tracked.item() == 4


def test_mr2unet_defaults_are_the_committed_network() -> None:
    """The options' defaults build the network every committed result was trained with:
    same state_dict keys (checkpoints load) and the same output bits as the explicit form."""
    default = tiny("mr2unet")
    explicit = tiny("mr2unet", width_multiplier=1.0, recurrent_kernels="separate",
                    step_norms="per_step", unit_split=[1, 2, 3], recurrent_steps=3,
                    respath_lengths=[4, 3, 2, 1])
    keys = list(default.state_dict())
    assert keys == list(explicit.state_dict())
    assert "encoder.0.unit1.feed_forward.weight" in keys
    assert "encoder.0.unit1.norms.3.running_mean" in keys
    assert not any("project" in k for k in keys)
    x, _ = batch(1, 32)
    assert torch.equal(default.eval()(x), explicit.eval()(x))


# --- MR2U-Net's fused formulation (issue #22): the same function in fewer kernels ---------

def _outputs_and_gradients(model: torch.nn.Module, x: torch.Tensor,
                           state: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    model.load_state_dict(state)  # the same running statistics for every pass
    out = model(x)
    return [out, *torch.autograd.grad(out.square().sum(), list(model.parameters()))]


def _worst_relative(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(((p - q).norm() / q.norm().clamp_min(1e-300)).item()
               for p, q in zip(a, b, strict=True))


@pytest.mark.parametrize("options", [{}, {"recurrent_kernels": "tied"},
                                     {"respath_lengths": [1, 0, 0, 2]}])
def test_fused_convolutions_compute_the_reference_function(
        options: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """fp64. With fixed BN statistics (eval) outputs and gradients agree to 1e-12; in
    training mode BN's batch statistics amplify rounding, so there the fused form may
    differ from the reference no more than the reference differs from itself in another
    memory layout (which only changes the order of the sums)."""
    from mr2unet.models.mr2unet import fuse_convolutions

    torch.manual_seed(0)
    model = build_model("mr2unet", base_width=8, **options).double()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    state = copy.deepcopy(model.state_dict())
    reference = {mode: _outputs_and_gradients(model.train(mode), x, state)
                 for mode in (False, True)}
    layout = _outputs_and_gradients(model.train(True).to(memory_format=torch.channels_last),
                                    x.contiguous(memory_format=torch.channels_last), state)
    model = model.to(memory_format=torch.contiguous_format)
    assert fuse_convolutions(model) == 9 + sum(options.get("respath_lengths", (4, 3, 2, 1)))
    assert _worst_relative(_outputs_and_gradients(model.train(False), x, state),
                           reference[False]) < 1e-12
    fused = _worst_relative(_outputs_and_gradients(model.train(True), x, state),
                            reference[True])
    noise = _worst_relative(layout, reference[True])
    assert fused < max(10 * noise, 1e-12), (fused, noise)
    # and the comparison catches a wrong fusion: the 1x1 padded into a corner of the 3x3
    import mr2unet.models.mr2unet as mr2

    def corner(x: torch.Tensor, convs: list) -> list[torch.Tensor]:
        weights = [F.pad(c.weight, [0, 2, 0, 2]) if c.kernel_size[0] == 1 else c.weight
                   for c in convs]
        out = F.conv2d(x, torch.cat(weights), padding=1)
        return list(out.split([c.out_channels for c in convs], dim=1))

    monkeypatch.setattr(mr2, "shared_input_conv", corner)
    assert _worst_relative(_outputs_and_gradients(model.train(False), x, state),
                           reference[False]) > 1e-3


def test_fused_convolutions_load_the_same_checkpoints_and_train_the_same() -> None:
    from mr2unet.models.mr2unet import fuse_convolutions

    reference = tiny("mr2unet").double()
    fused = tiny("mr2unet").double()
    assert fuse_convolutions(fused) > 0
    assert list(fused.state_dict()) == list(reference.state_dict())
    fused.load_state_dict(reference.state_dict())
    x, y = batch(2, 32)
    x = x.double()
    for model in (reference, fused):  # fp64, so that rounding stays far below the steps
        optimizer = torch.optim.Adam(model.parameters(), 1e-2)
        for _ in range(3):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for (name, a), b in zip(reference.state_dict().items(), fused.state_dict().values(),
                            strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-9), name
    assert fuse_convolutions(build_model("unet", base_width=4)) == 0
    assert fuse_convolutions(fused, enabled=False) > 0 and not fused.encoder[0].fused_convs
