"""The four networks: shapes, errors, gradients, determinism, pinned sizes, learning."""

from __future__ import annotations

import pytest
import torch

from mr2unet.errors import UserError
from mr2unet.models import MODEL_NAMES, build_model
from mr2unet.models.blocks import RecurrentConv, multiscale_widths

# Full-size (base_width=64, 3 -> 2 channels) parameter counts; a change here is an
# architecture change: update docs/models.md (benchmarks/model_summary.py) with it.
FULL_SIZE_PARAMS = {
    "unet": 34_520_258,
    "resunet": 8_907_778,
    "attention_unet": 34_870_826,
    "mr2unet": 23_978_676,
}


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize(("batch", "height", "width"), [(1, 32, 32), (2, 64, 48), (3, 16, 80)])
def test_output_shape_and_dtype(name: str, batch: int, height: int, width: int) -> None:
    model = build_model(name, base_width=4).eval()
    with torch.no_grad():
        out = model(torch.rand(batch, 3, height, width))
    assert out.shape == (batch, 2, height, width)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_sizes_not_multiple_of_16_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="36x36 is not a multiple of (16|8)"):
        build_model(name, base_width=4)(torch.rand(1, 3, 36, 36))


def test_unknown_model_lists_the_valid_ones() -> None:
    with pytest.raises(UserError, match="unet, resunet, attention_unet, mr2unet"):
        build_model("segformer")
    with pytest.raises(UserError, match="bad options"):
        build_model("unet", recurrent_steps=2)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_gradients_reach_every_parameter(name: str) -> None:
    model = build_model(name, base_width=4)
    model(torch.rand(2, 3, 32, 32)).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_eval_mode_is_deterministic(name: str) -> None:
    model = build_model(name, base_width=4).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_full_size_parameter_counts_are_pinned(name: str) -> None:
    model = build_model(name)
    assert sum(p.numel() for p in model.parameters()) == FULL_SIZE_PARAMS[name]


def test_multiscale_split_follows_multiresunet() -> None:
    assert multiscale_widths(64) == (11, 21, 32)
    assert multiscale_widths(8) == (1, 3, 4)
    assert multiscale_widths(1) == (1, 1, 1)


def test_recurrent_layer_matches_a_hand_unrolled_computation() -> None:
    torch.manual_seed(0)
    layer = RecurrentConv(3, 5, steps=3).eval()
    for norm in layer.norms:  # non-trivial statistics so each step's BN matters
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
    x = torch.rand(2, 3, 16, 16)
    conv = torch.nn.functional.conv2d

    def bn(k: int, t: torch.Tensor) -> torch.Tensor:
        n = layer.norms[k]
        return torch.nn.functional.batch_norm(t, n.running_mean, n.running_var, n.weight,
                                              n.bias, training=False, eps=n.eps)

    drive = conv(x, layer.feed_forward.weight, padding=1)
    h = torch.relu(bn(0, drive))
    for k in (1, 2, 3):  # h(k) = ReLU(BN_k(w_f * x + w_r * h(k-1) + b))
        h = torch.relu(bn(k, drive + conv(h, layer.recurrent.weight, layer.recurrent.bias,
                                          padding=1)))
    with torch.no_grad():
        assert torch.allclose(layer(x), h, atol=1e-6)
        fewer = RecurrentConv(3, 5, steps=2).eval()
        fewer.load_state_dict({k: v for k, v in layer.state_dict().items()
                               if not k.startswith("norms.3")})
        assert not torch.allclose(fewer(x), h)  # the 3rd step really changes the output


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_tiny_model_overfits_a_few_pairs(name: str) -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32) * 0.3
    y = torch.zeros(4, 32, 32, dtype=torch.long)
    for i in range(4):
        y[i, 4 + 3 * i:12 + 3 * i, 6:14 + 2 * i] = 1
        x[i, :, 4 + 3 * i:12 + 3 * i, 6:14 + 2 * i] += 0.6
    model = build_model(name, base_width=8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 5
