"""The training core: determinism, resume, augmentation, loss (CPU, tiny models)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mr2unet.data.prepared import PreparedSplit
from mr2unet.errors import UserError
from mr2unet.train import (
    TrainConfig,
    augment_batch,
    epoch_lr,
    segmentation_loss,
    train,
    write_history,
)


def tiny_split(n: int = 12, size: int = 32, seed: int = 0) -> PreparedSplit:
    """Bright squares on noise; the mask is the square."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        y, x = rng.integers(0, size - 10, 2)
        h, w = rng.integers(4, 10, 2)
        masks[i, y:y + h, x:x + w] = 1
        images[i, y:y + h, x:x + w] = 220
    cats = np.array(["a", "b"] * (n // 2))
    return PreparedSplit(images, masks, cats, np.array(["d"] * n), np.array([f"{i}.png"
                                                                               for i in range(n)]))


CFG = TrainConfig(arch="unet", epochs=4, batch_size=4, lr=3e-3, base_width=4, seed=3,
                  device="cpu", checkpoint_every=1, log_every=1)


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_two_runs_are_bit_identical() -> None:
    split = tiny_split()
    first = train(CFG, split, progress=False)
    second = train(CFG, split, progress=False)
    assert states_equal(first.model, second.model)
    strip = [{k: v for k, v in row.items() if k not in ("seconds", "images_per_second")}
             for row in first.history]
    assert strip == [{k: v for k, v in row.items() if k not in ("seconds", "images_per_second")}
                     for row in second.history]
    other = train(dataclasses.replace(CFG, seed=4), split, progress=False)
    assert not states_equal(first.model, other.model)


def test_training_reduces_the_loss() -> None:
    result = train(dataclasses.replace(CFG, epochs=12, lr=1e-2), tiny_split(), progress=False)
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < 0.3 * losses[0]
    assert result.history[-1]["train_iou"] > 0.8
    assert [row["epoch"] for row in result.history] == list(range(1, 13))


def test_interrupted_run_resumes_to_the_same_weights(tmp_path) -> None:
    split = tiny_split()
    cfg = dataclasses.replace(CFG, augment="flips_rot90")
    reference = train(cfg, split, progress=False)

    def crash(row: dict) -> None:
        if row["epoch"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, split, checkpoint_dir=tmp_path, on_epoch_end=crash, progress=False)
    assert (tmp_path / "last.pt").is_file()
    resumed = train(cfg, split, checkpoint_dir=tmp_path, progress=False)
    assert resumed.resumed_from_epoch == 2
    assert len(resumed.history) == cfg.epochs
    assert states_equal(reference.model, resumed.model)


def test_cosine_schedule_resumes_to_the_same_weights(tmp_path) -> None:
    """The schedule is a function of the epoch: a resumed run picks up the right rate."""
    split = tiny_split()
    cfg = dataclasses.replace(CFG, lr_schedule="cosine")
    reference = train(cfg, split, progress=False)
    assert [row["lr"] for row in reference.history] == pytest.approx(
        [3e-3, 3e-3 * (1 + np.cos(np.pi / 4)) / 2, 1.5e-3, 3e-3 * (1 + np.cos(3 * np.pi / 4)) / 2])

    def crash(row: dict) -> None:
        if row["epoch"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, split, checkpoint_dir=tmp_path, on_epoch_end=crash, progress=False)
    resumed = train(cfg, split, checkpoint_dir=tmp_path, progress=False)
    assert resumed.resumed_from_epoch == 2
    assert states_equal(reference.model, resumed.model)
    constant = train(CFG, split, progress=False)
    assert not states_equal(reference.model, constant.model)


def test_epoch_lr() -> None:
    assert [epoch_lr(0.1, e, 10, "constant") for e in (0, 5, 9)] == [0.1, 0.1, 0.1]
    cosine = [epoch_lr(0.1, e, 10, "cosine") for e in range(10)]
    assert cosine[0] == pytest.approx(0.1) and cosine[5] == pytest.approx(0.05)
    assert all(a > b > 0 for a, b in zip(cosine, cosine[1:], strict=False))
    with pytest.raises(UserError, match="train.lr_schedule"):
        epoch_lr(0.1, 0, 10, "step")


def test_cpu_threads_are_pinned_and_change_the_fingerprint() -> None:
    before = torch.get_num_threads()
    try:
        train(dataclasses.replace(CFG, epochs=1, cpu_threads=1), tiny_split(), progress=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert dataclasses.replace(CFG, cpu_threads=1).fingerprint() != CFG.fingerprint()


def test_checkpoint_of_other_params_is_ignored(tmp_path) -> None:
    split = tiny_split()

    def crash(row: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(dataclasses.replace(CFG, lr=1e-2), split, checkpoint_dir=tmp_path,
              on_epoch_end=crash, progress=False)
    fresh = train(CFG, split, checkpoint_dir=tmp_path, progress=False)
    assert fresh.resumed_from_epoch == 0


def test_augmentation_moves_image_and_mask_together() -> None:
    gen = torch.Generator().manual_seed(0)
    masks = torch.zeros(16, 8, 8, dtype=torch.long)
    masks[:, 0, :3] = 1  # an asymmetric shape in the top-left corner
    masks[:, 1, 0] = 1
    images = masks.unsqueeze(1).float().repeat(1, 3, 1, 1) * torch.arange(1, 4).view(1, 3, 1, 1)
    out_x, out_m = augment_batch(images, masks, "flips_rot90", gen)
    assert torch.equal((out_x[:, 0] > 0).long(), out_m)
    assert torch.equal(out_x[:, 2], out_x[:, 0] * 3)
    distinct = {tuple(m.flatten().tolist()) for m in out_m}
    assert len(distinct) >= 4  # several of the 8 symmetries were drawn
    same_x, same_m = augment_batch(images, masks, "none", gen)
    assert same_x is images and same_m is masks


def test_ce_dice_adds_the_dice_term() -> None:
    logits = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 2:5, 2:5] = 1
    ce = segmentation_loss(logits, target, CFG)
    both = segmentation_loss(logits, target, dataclasses.replace(CFG, loss="ce_dice"))
    assert ce.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, target).item())
    assert both.item() > ce.item() + 0.3


def test_config_from_params_and_fingerprint() -> None:
    params = {"train": {"epochs": 5, "batch_size": 2, "lr": 0.01, "base_width": 8,
                        "device": "cpu", "models": ["mr2unet"],
                        "model_options": {"mr2unet": {"recurrent_steps": 2}}}}
    cfg = TrainConfig.from_params(params, "mr2unet")
    assert (cfg.epochs, cfg.batch_size, cfg.lr) == (5, 2, 0.01)
    assert cfg.model_kwargs() == {"base_width": 8, "recurrent_steps": 2}
    assert cfg.fingerprint() == dataclasses.replace(cfg, log_every=99).fingerprint()
    assert cfg.fingerprint() != dataclasses.replace(cfg, lr=0.02).fingerprint()


def test_missing_cuda_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(UserError, match="no CUDA GPU"):
        train(dataclasses.replace(CFG, device="cuda"), tiny_split(), progress=False)


def test_history_csv_has_no_timings(tmp_path) -> None:
    path = tmp_path / "h.csv"
    write_history(path, [{"epoch": 1, "loss": 0.5, "train_iou": 0.25, "train_dice": 0.4,
                          "lr": 1e-4, "seconds": 3.2, "images_per_second": 10.0}])
    assert path.read_text() == "epoch,loss,train_iou,train_dice,lr\n1,0.5,0.25,0.4,0.0001\n"
