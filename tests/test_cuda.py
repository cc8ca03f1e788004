"""The training loop on CUDA (issue #22): CUDA graphs against eager, repeat and resume bit
for bit, graphs with fused Adam, bf16 against fp32, channels-last gradients, torch.compile.

Every test is marked ``cuda`` and skips without a GPU; on the device they run with
``PYTHONPATH=src python3 -m pytest -m cuda tests/test_cuda.py`` (benchmarks/device_call.sh).
Tiny networks (base_width 8, 32-64 px, a few steps); nothing here needs MLflow or DVC.

Where a result is expected to the bit, the weights are compared bit for bit and the loss
history to 1e-6: cross-entropy's forward sums with atomics on CUDA
(``nll_loss2d_forward_out_cuda_template``, the one kernel PyTorch warned about on an H100
in deterministic mode), so the logged loss may differ in its last bits while its gradient,
and so every weight, does not.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import briefly_trained, states_equal, tiny_split

from mr2unet.data.transforms import to_input
from mr2unet.deploy.export import random_images
from mr2unet.models import MODEL_NAMES, build_model
from mr2unet.training import setup
from mr2unet.training.config import TrainConfig
from mr2unet.training.loop import TrainResult, train
from mr2unet.training.options import RunOptions, configure_determinism

# Deterministic cuBLAS reads this at its first call in the process; train() sets it too,
# but only when it is the first to use CUDA.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA GPU: these check the CUDA paths (on the device: benchmarks/device_call.sh)")]

# 14 images, batch 4: three full batches (graphed) and one of 2 (eager) an epoch.
CFG = TrainConfig(arch="unet", epochs=3, batch_size=4, lr=3e-3, base_width=8, seed=3)
RUN = RunOptions(device="cuda", checkpoint_every=1, log_every=1)
ARCHS = ("unet", "mr2unet")
LOSS_RTOL = 1e-6  # the loss's atomics (module docstring)


@pytest.fixture(scope="module")
def split():
    return tiny_split(14, 32)


@pytest.fixture(autouse=True)
def kernel_settings() -> Iterator[None]:
    """Each test leaves the process's kernel settings as it found them."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32)
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved[2:]


@pytest.fixture
def fp32() -> None:
    """True fp32 (no TF32, which rounds convolution inputs to 10 bits) and the loop's
    deterministic kernels, for comparisons of fp32 results."""
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    configure_determinism(True, torch.device("cuda"))


@pytest.fixture
def captures(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The batch shapes CUDA graphs were captured at: proof that a run used them."""
    seen: list[tuple[int, ...]] = []
    original = setup.CudaGraphedForward.capture

    def capture(self: setup.CudaGraphedForward, sample: torch.Tensor) -> None:
        seen.append(tuple(sample.shape))
        original(self, sample)

    monkeypatch.setattr(setup.CudaGraphedForward, "capture", capture)
    return seen


def losses(result: TrainResult) -> list[float]:
    return [row["loss"] for row in result.history]


def assert_same_run(a: TrainResult, b: TrainResult) -> None:
    assert states_equal(a.model, b.model), "the weights differ"
    assert losses(b) == pytest.approx(losses(a), rel=LOSS_RTOL)


# ----------------------------------------------------------------- CUDA graphs vs eager

# (network, precision, the loss history's tolerance; None: the same run to the bit).
GRAPH_CASES = [
    ("unet", "fp32", None), ("mr2unet", "fp32", None), ("unet", "bf16", None),
    # Measured on an H100 (docs/performance.md, GPU a.): MR2U-Net's graphed bf16 training
    # differs from eager at the level of rounding (the loss agreed to 3 digits after 2
    # epochs at full width). The next test pins the likely cause. bf16 keeps 8 bits of
    # mantissa (0.4 %); 2 % over 3 epochs is that rounding, not a wrong batch or a lost
    # update (those move the loss by tens of per cent, and the fp32 case is exact).
    ("mr2unet", "bf16", 2e-2),
]


@pytest.mark.parametrize(("arch", "precision", "loss_rtol"), GRAPH_CASES)
def test_cuda_graphs_train_as_eager_does(arch: str, precision: str, loss_rtol: float | None,
                                         split, fp32, captures) -> None:
    cfg, run = dataclasses.replace(CFG, arch=arch), dataclasses.replace(RUN, precision=precision)
    eager = train(cfg, split, progress=False, options=run)
    assert captures == []
    graphed = train(cfg, split, progress=False,
                    options=dataclasses.replace(run, cuda_graphs=True))
    assert captures == [(4, 3, 32, 32)]  # once, at the first full batch
    if loss_rtol is None:
        assert_same_run(eager, graphed)
    else:
        assert losses(graphed) == pytest.approx(losses(eager), rel=loss_rtol)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_graphed_step_is_the_eager_step_without_the_autocast_cache(arch: str) -> None:
    """The graphs run autocast without its weight cache (they need it off). With the cache,
    a weight used several times is cast to bf16 once and its gradient summed in bf16; without
    it, each use's gradient is cast back to fp32 and summed there. MR2U-Net's recurrent
    units apply each recurrent kernel t = 3 times, so its gradients differ with the cache on
    (measured on the CPU: up to 0.03; U-Net's, whose weights are used once, do not). So a
    graphed bf16 step should be, to the bit, the eager step with the cache off."""
    configure_determinism(True, torch.device("cuda"))
    torch.manual_seed(0)
    model = build_model(arch, base_width=8).cuda().to(memory_format=torch.channels_last)
    gen = torch.Generator(device="cuda").manual_seed(1)
    x = torch.rand(4, 3, 32, 32, generator=gen, device="cuda").contiguous(
        memory_format=torch.channels_last)
    y = (torch.rand(4, 32, 32, generator=gen, device="cuda") > 0.8).long()
    eager, graphed = copy.deepcopy(model), copy.deepcopy(model)
    with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
        F.cross_entropy(eager(x).float(), y).backward()
    step = setup.CudaGraphedForward(graphed, torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):  # the loop's, around the graphs
        logits = step(x)
    F.cross_entropy(logits.float(), y).backward()
    assert step.shape == (4, 3, 32, 32)  # captured, and this call was a replay
    assert states_equal(eager, graphed)  # the capture's warm-up left the statistics alone
    pairs = zip(graphed.named_parameters(), eager.parameters(), strict=True)
    assert [name for (name, a), b in pairs if not torch.equal(a.grad, b.grad)] == []


# ------------------------------------------------------------------ repeat and resume

@pytest.mark.parametrize("arch", ARCHS)
def test_deterministic_runs_repeat_bit_for_bit(arch: str, split) -> None:
    """The committed settings on CUDA (bf16 autocast, channels_last, deterministic)."""
    cfg = dataclasses.replace(CFG, arch=arch, augment="flips_rot90")
    first = train(cfg, split, progress=False, options=RUN)
    assert_same_run(first, train(cfg, split, progress=False, options=RUN))
    other = train(dataclasses.replace(cfg, seed=4), split, progress=False, options=RUN)
    assert not states_equal(first.model, other.model)  # the comparison can tell runs apart


# The committed loop, and issue #22's combination: CUDA graphs + fused Adam, deterministic.
MODES = {"committed": {}, "graphs_fused": {"cuda_graphs": True, "adam_impl": "fused"}}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", ARCHS)
def test_an_interrupted_run_resumes_bit_for_bit(arch: str, mode: str, split,
                                                tmp_path: Path) -> None:
    """As tests/test_train.py on the CPU: killed during epoch 3 of 4, resumed from epoch 2's
    checkpoint (weights, Adam, the CPU shuffle and CUDA augmentation generators)."""
    cfg = dataclasses.replace(CFG, arch=arch, epochs=4, augment="flips_rot90")
    run = dataclasses.replace(RUN, **MODES[mode])
    reference = train(cfg, split, progress=False, options=run)

    def crash(row: dict[str, float]) -> None:
        if row["epoch"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, split, checkpoint_dir=tmp_path, on_epoch_end=crash, progress=False,
              options=run)
    resumed = train(cfg, split, checkpoint_dir=tmp_path, progress=False, options=run)
    assert resumed.resumed_from_epoch == 2 and len(resumed.history) == cfg.epochs
    assert_same_run(reference, resumed)


@pytest.mark.parametrize("arch", ARCHS)
def test_graphs_with_fused_adam_repeat_bit_for_bit(arch: str, split, captures) -> None:
    """Issue #22's combination: CUDA graphs, fused Adam and deterministic kernels."""
    cfg = dataclasses.replace(CFG, arch=arch, augment="flips_rot90")
    run = dataclasses.replace(RUN, **MODES["graphs_fused"])
    first = train(cfg, split, progress=False, options=run)
    assert_same_run(first, train(cfg, split, progress=False, options=run))
    assert len(captures) == 2


# ---------------------------------------------------------------------------- numerics

@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_masks_agree_with_fp32(arch: str, fp32) -> None:
    """bf16 autocast in channels_last (the loop's forward on CUDA) against fp32, on a
    briefly trained network whose median pixel sits on the decision boundary. bf16 keeps 8
    bits of mantissa, so masks may differ only where the fp32 margin is tiny. Thresholds from
    CPU bf16 at these sizes: 99.2-99.7 % of all pixels agree, 99.92-100 % of those whose
    margin exceeds 5 % of its standard deviation. Those were 46-96 % of the pixels: the 12
    training steps end elsewhere with the rounding of another thread count."""
    model = briefly_trained(arch, size=64, steps=12, width=8).cuda().eval()
    low = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = to_input(torch.from_numpy(random_images(8, 64, seed=5))).cuda()
    with torch.no_grad():
        margin = model(x).diff(dim=1)[:, 0]  # fp32 logit of defect minus background
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = low(x.contiguous(memory_format=torch.channels_last))
    assert logits.dtype == torch.bfloat16
    same = (logits.float().diff(dim=1)[:, 0] > 0) == (margin > 0)
    clear = margin.abs() > 0.05 * margin.std()
    assert clear.float().mean() > 0.2  # not a check of a few pixels
    assert same[clear].float().mean() >= 0.99
    assert same.float().mean() >= 0.97


def layout_gradient_errors(arch: str, dtype: torch.dtype, rtol: float,
                           floor: float) -> list[str]:
    """The parameters whose gradient in channels_last differs from the contiguous one by
    more than ``rtol`` of its norm plus ``floor`` of the largest gradient norm (biases
    before a BatchNorm have a gradient of 0 up to rounding: only the floor applies)."""
    torch.manual_seed(0)
    model = build_model(arch, base_width=8).to("cuda", dtype)
    twin = copy.deepcopy(model).to(memory_format=torch.channels_last)
    gen = torch.Generator(device="cuda").manual_seed(1)
    x = torch.rand(2, 3, 32, 32, generator=gen, device="cuda", dtype=dtype)
    y = (torch.rand(2, 32, 32, generator=gen, device="cuda") > 0.8).long()
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(twin(x.contiguous(memory_format=torch.channels_last)), y).backward()
    scale = max(float(p.grad.norm()) for p in model.parameters())
    return [name for (name, a), b in zip(twin.named_parameters(), model.parameters(),
                                         strict=True)
            if float((a.grad - b.grad).norm()) > rtol * float(b.grad.norm()) + floor * scale]


@pytest.mark.parametrize("arch", [a for a in MODEL_NAMES if a != "mr2unet"])
def test_channels_last_gradients_match_contiguous_fp32(arch: str, fp32) -> None:
    """fp32, TF32 off: the two layouts sum in other orders. On the CPU at this size the
    worst tensor differed by 6e-5 (U-Net) to 1.3e-4 (Attention U-Net) of its norm; a wrong
    gradient differs by its whole norm. MR2U-Net is left to the float64 test: its
    one-channel first units amplify fp32 rounding to 18 % of a tensor's norm (CPU)."""
    assert layout_gradient_errors(arch, torch.float32, rtol=1e-3, floor=1e-5) == []


@pytest.mark.parametrize("arch", MODEL_NAMES)
def test_channels_last_gradients_match_contiguous_float64(arch: str, fp32) -> None:
    """float64, where rounding is 1e-16: CPU differences were at most 2e-10 of a tensor's
    norm (MR2U-Net). PyTorch runs cuDNN's float64 convolutions in NCHW whatever the layout,
    so on CUDA this checks the layers around them (BatchNorm, pooling, upsampling, adds)."""
    assert layout_gradient_errors(arch, torch.float64, rtol=1e-7, floor=1e-12) == []


# ------------------------------------------------------------------------ torch.compile

MISSING_COMPILER = ("Cannot find a working triton installation", "No working C++ compiler",
                    "InvalidCxxCompiler")


def test_torch_compile_matches_eager_after_one_step(fp32) -> None:
    """U-Net, fp32, TF32 off, one step an epoch: epoch 1's loss is the initial weights' and
    epoch 2's the loss after one Adam step. Inductor fuses BatchNorm and ReLU into other
    kernels, which round differently: 1e-4 before the step, 1e-3 after it (an Adam step
    moves each weight by about lr, in the direction of its gradient's sign, which rounding
    flips only where the gradient is about 0); a wrong gradient changes the step itself."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("torch.compile on CUDA needs triton, which is not installed")
    split = tiny_split(4, 32)
    cfg = dataclasses.replace(CFG, epochs=2)
    run = dataclasses.replace(RUN, precision="fp32", checkpoint_every=10)
    eager = train(cfg, split, progress=False, options=run)
    torch._dynamo.reset()
    try:
        compiled = train(cfg, split, progress=False,
                         options=dataclasses.replace(run, compile=True))
    except Exception as exc:
        chain, text = exc, ""
        while chain is not None:
            text += f"{type(chain).__name__}: {chain}\n"
            chain = chain.__cause__ or chain.__context__
        if any(marker in text for marker in MISSING_COMPILER):
            pytest.skip(f"torch.compile cannot build its kernels here: {text.splitlines()[0]}")
        raise
    finally:
        torch._dynamo.reset()
    before, after = losses(compiled)
    assert before == pytest.approx(losses(eager)[0], rel=1e-4)
    assert after == pytest.approx(losses(eager)[1], rel=1e-3)
    assert after < before  # the step was taken


# ------------------------------------------------------------ fused MR2U-Net convolutions

@pytest.mark.parametrize("options", [{}, {"recurrent_kernels": "tied"}])
def test_fused_mr2unet_convolutions_match_the_reference_on_cuda(options: dict, fp32) -> None:
    """RunOptions.fused_convs on CUDA: the same function as the reference (float64, fixed BN
    statistics: 1e-12), and one fp32 training step of each within rounding."""
    from mr2unet.models.mr2unet import fuse_convolutions

    torch.manual_seed(0)
    model = build_model("mr2unet", base_width=8, **options).cuda().double().eval()
    x = torch.rand(2, 3, 32, 32, device="cuda", dtype=torch.float64)
    reference = model(x)
    fuse_convolutions(model)
    fused = model(x)
    assert ((fused - reference).norm() / reference.norm()).item() < 1e-12
    split = tiny_split(8, 32)
    cfg = dataclasses.replace(CFG, arch="mr2unet", epochs=1, batch_size=8,
                              model_options=options)
    run = dataclasses.replace(RUN, precision="fp32")
    plain = train(cfg, split, progress=False, options=run)
    quick = train(cfg, split, progress=False, options=dataclasses.replace(run, fused_convs=True))
    assert losses(quick) == pytest.approx(losses(plain), rel=1e-5)
