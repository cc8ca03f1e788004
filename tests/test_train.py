"""The training core: determinism, resume, augmentation, loss (CPU, tiny models)."""

from __future__ import annotations

import dataclasses
import logging
import pathlib

import numpy as np
import pytest
import torch
from helpers import CFG, RUN, states_equal, tiny_split

from mr2unet.data.prepared import PreparedSplit
from mr2unet.errors import UserError
from mr2unet.evaluation.verdict import collapse_sentence
from mr2unet.training.batches import augment_batch
from mr2unet.training.checkpoint import fingerprint
from mr2unet.training.collapse import COLLAPSE_EPOCHS, collapse_streak, epoch_collapse
from mr2unet.training.config import TrainConfig, epoch_lr
from mr2unet.training.loop import train
from mr2unet.training.losses import segmentation_loss
from mr2unet.training.options import RunOptions
from mr2unet.training.outputs import (
    save_trained_model,
    write_history,
)


def test_two_runs_are_bit_identical() -> None:
    split = tiny_split()
    first = train(CFG, split, progress=False, options=RUN)
    second = train(CFG, split, progress=False, options=RUN)
    assert states_equal(first.model, second.model)
    strip = [{k: v for k, v in row.items() if k not in ("seconds", "images_per_second")}
             for row in first.history]
    assert strip == [{k: v for k, v in row.items() if k not in ("seconds", "images_per_second")}
                     for row in second.history]
    other = train(dataclasses.replace(CFG, seed=4), split, progress=False, options=RUN)
    assert not states_equal(first.model, other.model)


def test_training_reduces_the_loss() -> None:
    result = train(dataclasses.replace(CFG, epochs=12, lr=1e-2), tiny_split(), progress=False,
                   options=RUN)
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < 0.3 * losses[0]
    assert result.history[-1]["train_iou"] > 0.8
    assert [row["epoch"] for row in result.history] == list(range(1, 13))


def test_interrupted_run_resumes_to_the_same_weights(tmp_path) -> None:
    split = tiny_split()
    cfg = dataclasses.replace(CFG, augment="flips_rot90")
    reference = train(cfg, split, progress=False, options=RUN)

    def crash(row: dict) -> None:
        if row["epoch"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, split, checkpoint_dir=tmp_path, on_epoch_end=crash, progress=False, options=RUN)
    assert (tmp_path / "last.pt").is_file()
    resumed = train(cfg, split, checkpoint_dir=tmp_path, progress=False, options=RUN)
    assert resumed.resumed_from_epoch == 2
    assert len(resumed.history) == cfg.epochs
    assert states_equal(reference.model, resumed.model)


def test_cosine_schedule_resumes_to_the_same_weights(tmp_path) -> None:
    """The schedule is a function of the epoch: a resumed run picks up the right rate."""
    split = tiny_split()
    cfg = dataclasses.replace(CFG, lr_schedule="cosine")
    reference = train(cfg, split, progress=False, options=RUN)
    assert [row["lr"] for row in reference.history] == pytest.approx(
        [3e-3, 3e-3 * (1 + np.cos(np.pi / 4)) / 2, 1.5e-3, 3e-3 * (1 + np.cos(3 * np.pi / 4)) / 2])

    def crash(row: dict) -> None:
        if row["epoch"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, split, checkpoint_dir=tmp_path, on_epoch_end=crash, progress=False, options=RUN)
    resumed = train(cfg, split, checkpoint_dir=tmp_path, progress=False, options=RUN)
    assert resumed.resumed_from_epoch == 2
    assert states_equal(reference.model, resumed.model)
    constant = train(CFG, split, progress=False, options=RUN)
    assert not states_equal(reference.model, constant.model)


def test_epoch_lr() -> None:
    assert [epoch_lr(0.1, e, 10, "constant") for e in (0, 5, 9)] == [0.1, 0.1, 0.1]
    cosine = [epoch_lr(0.1, e, 10, "cosine") for e in range(10)]
    assert cosine[0] == pytest.approx(0.1) and cosine[5] == pytest.approx(0.05)
    assert all(a > b > 0 for a, b in zip(cosine, cosine[1:], strict=False))
    with pytest.raises(UserError, match="train.lr_schedule"):
        epoch_lr(0.1, 0, 10, "step")


def test_cpu_threads_are_pinned_and_a_checkpoint_resumes_across_run_options(tmp_path) -> None:
    """run.cpu_threads is set for the run; run options stay out of the fingerprint, so a
    run stopped with one thread resumes with two (as it would on another machine)."""
    split = tiny_split()
    before = torch.get_num_threads()

    def crash(row: dict) -> None:
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            train(CFG, split, tmp_path, on_epoch_end=crash, progress=False,
                  options=dataclasses.replace(RUN, cpu_threads=1))
        assert torch.get_num_threads() == 1
        resumed = train(CFG, split, tmp_path, progress=False,
                        options=dataclasses.replace(RUN, cpu_threads=2, log_every=7))
    finally:
        torch.set_num_threads(before)
    assert resumed.resumed_from_epoch == 1  # epoch 2 stopped before its checkpoint


def test_checkpoint_of_other_params_is_ignored(tmp_path) -> None:
    split = tiny_split()

    def crash(row: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(dataclasses.replace(CFG, lr=1e-2), split, checkpoint_dir=tmp_path,
              on_epoch_end=crash, progress=False, options=RUN)
    fresh = train(CFG, split, checkpoint_dir=tmp_path, progress=False, options=RUN)
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
    ce = segmentation_loss(logits, target, CFG.loss_config())
    both = segmentation_loss(logits, target,
                             dataclasses.replace(CFG, loss="ce_dice").loss_config())
    half = segmentation_loss(logits, target,
                             dataclasses.replace(CFG, loss="ce_dice", dice_weight=0.5)
                             .loss_config())
    # By hand: soft Dice of the defect class over the batch, smoothed by 1.
    p = torch.softmax(logits.double(), 1)[:, 1]
    t = target.double()
    dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    expected_ce = torch.nn.functional.cross_entropy(logits.double(), target)
    assert ce.item() == pytest.approx(expected_ce.item(), rel=1e-6)
    assert both.item() == pytest.approx((expected_ce + dice).item(), rel=1e-6)
    assert half.item() == pytest.approx((expected_ce + 0.5 * dice).item(), rel=1e-6)


def test_auto_class_weights_are_resolved_recorded_and_fingerprinted(tmp_path) -> None:
    split = tiny_split()
    cfg = dataclasses.replace(CFG, loss="weighted_ce_dice", epochs=1)
    f1 = float((split.masks == 1).mean())
    resolved = cfg.with_class_weights(split.masks)
    assert resolved.class_weights == [pytest.approx(1 / (2 * (1 - f1)), rel=1e-5),
                                      pytest.approx(1 / (2 * f1), rel=1e-5)]
    assert fingerprint(resolved) != fingerprint(cfg)
    assert CFG.with_class_weights(split.masks) is CFG  # plain ce: nothing to resolve
    result = train(cfg, split, progress=False, options=RUN)
    assert result.config == resolved
    save_trained_model(tmp_path / "m.pt", result, cfg, 32, {})
    meta = torch.load(tmp_path / "m.pt", weights_only=False)["meta"]
    assert meta["config"]["class_weights"] == resolved.class_weights
    assert meta["collapsed"] is None


# ----------------------------------------------------------------------------- collapse


def rare_split(n: int = 8, size: int = 32) -> PreparedSplit:
    """Noise with one defect pixel per image (0.1 % of the pixels)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        y, x = rng.integers(0, size, 2)
        masks[i, y, x] = 1
    return PreparedSplit(images, masks, np.array(["a"] * n), np.array(["d"] * n),
                         np.array([f"{i}.png" for i in range(n)]))


def _rows(pred: list[float], true: float = 0.03) -> list[dict[str, float]]:
    return [{"epoch": e + 1, "pred_defect_fraction": p, "true_defect_fraction": true}
            for e, p in enumerate(pred)]


def test_collapse_detector_on_constructed_histories() -> None:
    assert epoch_collapse(0.0, 0.03) == "background"
    assert epoch_collapse(0.0014, 0.03) == "background"  # < 5 % of the true share
    assert epoch_collapse(0.0016, 0.03) is None
    assert epoch_collapse(0.999, 0.03) == "defect"
    assert epoch_collapse(0.0, 0.0) is None  # nothing to find, nothing found
    n = COLLAPSE_EPOCHS
    assert collapse_streak(_rows([0.2] + [0.0] * n)) == "background"
    assert collapse_streak(_rows([0.0] * (n - 1))) is None  # too short a streak
    assert collapse_streak(_rows([0.0] * n + [0.02])) is None  # recovered
    assert collapse_streak(_rows([0.0] * (n - 1) + [1.0])) is None  # two kinds
    assert collapse_streak(_rows([1.0] * n)) == "defect"
    assert collapse_streak([{"epoch": e, "loss": 1.0} for e in range(n)]) is None  # old CSV


def test_a_collapsed_run_says_so(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    """Rare defects, plain CE and a high learning rate: the network predicts no defect."""
    cfg = dataclasses.replace(CFG, epochs=12, lr=5e-2, seed=0)
    logged: list[dict] = []
    with caplog.at_level(logging.WARNING, logger="mr2unet.training.loop"):
        result = train(cfg, rare_split(), on_epoch_end=logged.append, progress=False, options=RUN)
    warnings = [r.getMessage() for r in caplog.records if "collapsed" in r.getMessage()]
    assert len(warnings) == 2  # once when it happens, once at the end
    assert "unet has collapsed: for 10 epochs in a row (up to epoch 11)" in warnings[0]
    assert "no defect anywhere" in warnings[0] and "train.loss: weighted_ce_dice" in warnings[0]
    assert result.collapsed == "background"
    assert [r["collapsed"] for r in result.history] == [0] * 10 + [1, 1]
    assert all(r["pred_defect_fraction"] == 0 for r in result.history[1:])
    assert result.history[0]["true_defect_fraction"] == pytest.approx(1 / 1024)
    assert logged[-1]["collapsed"] == 1.0  # what MLflow receives per epoch
    path = tmp_path / "h.csv"
    write_history(path, result.history)
    lines = path.read_text().splitlines()
    assert lines[0].endswith(",pred_defect_fraction,true_defect_fraction,collapsed")
    assert lines[-1].endswith(",0,0.000976562,1")
    assert collapse_sentence("U-Net", {}, result.history) is not None


@pytest.mark.slow
def test_a_collapsed_run_is_marked_in_mlflow(tmp_path, monkeypatch) -> None:
    """Per-epoch metrics through `on_epoch_end`, and the run's `collapsed` tag."""
    mlflow = pytest.importorskip("mlflow")
    from mr2unet.tracking.runs import TrainingTracker

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    params = {"data": {}, "split": {}, "prepare": {},
              "train": {"models": ["unet"], "model_options": {}},
              "tracking": {"uri": uri, "experiment": "t", "registry_prefix": "t-"}}
    tracker = TrainingTracker(params, "unet", root=tmp_path)
    run_id = tracker.start("train@unet")
    result = train(dataclasses.replace(CFG, epochs=12, lr=5e-2, seed=0), rare_split(),
                   on_epoch_end=tracker.log_epoch, progress=False, options=RUN)
    tracker.set_tags({"collapsed": "true" if result.collapsed else "false"})
    client = mlflow.MlflowClient(uri)
    assert client.get_run(run_id).data.tags["collapsed"] == "true"
    assert [m.value for m in client.get_metric_history(run_id, "collapsed")] == [0] * 10 + [1, 1]
    assert client.get_metric_history(run_id, "pred_defect_fraction")[-1].value == 0


def test_a_learning_run_is_not_flagged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mr2unet.training.loop"):
        result = train(dataclasses.replace(CFG, epochs=6, lr=1e-2), tiny_split(),
                       progress=False, options=RUN)
    assert result.collapsed is None and not caplog.records
    assert all(r["collapsed"] == 0 for r in result.history)
    assert 0.02 < result.history[-1]["pred_defect_fraction"] < 0.2


def test_config_from_params_and_fingerprint() -> None:
    params = {"train": {"epochs": 5, "batch_size": 2, "lr": 0.01, "base_width": 8,
                        "models": ["mr2unet"],
                        "model_options": {"mr2unet": {"recurrent_steps": 2}}},
              "run": {"device": "cpu", "cpu_threads": 1, "adam_impl": "fused"}}
    cfg = TrainConfig.from_params(params, "mr2unet")
    assert (cfg.epochs, cfg.batch_size, cfg.lr) == (5, 2, 0.01)
    assert cfg.model_kwargs() == {"base_width": 8, "recurrent_steps": 2}
    assert fingerprint(cfg) != fingerprint(dataclasses.replace(cfg, lr=0.02))
    assert RunOptions.from_params(params) == RunOptions(device="cpu", cpu_threads=1,
                                                        adam_impl="fused")
    assert RunOptions.from_params({"train": {}}) == RunOptions()


def test_missing_cuda_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(UserError, match="no CUDA GPU"):
        train(CFG, tiny_split(), progress=False, options=RunOptions(device="cuda"))


def test_history_csv_has_no_timings(tmp_path) -> None:
    path = tmp_path / "h.csv"
    row = {"epoch": 1, "loss": 0.5, "train_iou": 0.25, "train_dice": 0.4, "lr": 1e-4,
           "seconds": 3.2, "images_per_second": 10.0}
    write_history(path, [row])
    assert path.read_text() == "epoch,loss,train_iou,train_dice,lr\n1,0.5,0.25,0.4,0.0001\n"
    write_history(path, [{**row, "pred_defect_fraction": 0.0125, "true_defect_fraction": 0.03,
                          "collapsed": 0.0}])
    assert path.read_text() == ("epoch,loss,train_iou,train_dice,lr,pred_defect_fraction,"
                                "true_defect_fraction,collapsed\n1,0.5,0.25,0.4,0.0001,0.0125,"
                                "0.03,0\n")


def test_a_step_budget_sets_the_epochs_and_resumes(tmp_path: pathlib.Path) -> None:
    """train.steps: 10 at 3 steps per epoch (10 images, batch 4) is 4 epochs; a run
    stopped after epoch 3 resumes from its epoch-2 checkpoint (the fingerprint ignores the
    derived epochs) and ends as the uninterrupted run did."""

    split = tiny_split(10)
    cfg = TrainConfig(arch="unet", epochs=99, steps=10, batch_size=4, base_width=2,
                      seed=0, lr_schedule="cosine")
    run = dataclasses.replace(RUN, checkpoint_every=2)
    whole = train(cfg, split, progress=False, options=run)
    assert len(whole.history) == 4 and whole.config.epochs == 4
    assert whole.history[-1]["lr"] == pytest.approx(epoch_lr(cfg.lr, 3, 4, "cosine"))
    assert fingerprint(TrainConfig(arch="unet", epochs=7, steps=10)) == \
        fingerprint(TrainConfig(arch="unet", epochs=99, steps=10))
    assert fingerprint(TrainConfig(arch="unet", epochs=99)) != \
        fingerprint(TrainConfig(arch="unet", epochs=99, steps=10))

    def stop_at_3(row: dict) -> None:
        if row["epoch"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, split, checkpoint_dir=tmp_path, on_epoch_end=stop_at_3, progress=False,
              options=run)
    resumed = train(cfg, split, checkpoint_dir=tmp_path, progress=False, options=run)
    assert resumed.resumed_from_epoch == 2
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in whole.history]


# ------------------------------------- the per-step counts (issue #24): same results, faster


def _per_step_scores(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The loop's per-step bookkeeping before EpochTally (argmax, scores, stack every step)."""
    from mr2unet.metrics.segmentation import IGNORE_LABEL, confusion_counts, scores_from_counts

    pred = logits.argmax(1)
    iou, dice = scores_from_counts(confusion_counts(pred, target))
    valid = target != IGNORE_LABEL
    return torch.stack([iou.sum(), dice.sum(), iou.new_tensor(len(target)),
                        ((pred == 1) & valid).sum().double(),
                        (target == 1).sum().double(), valid.sum().double()])


def test_epoch_tally_sums_what_the_per_step_sums_gave() -> None:
    """Every value bit for bit, with NaN and tied logits, padding, a partial last batch."""
    from mr2unet.training.batches import EpochTally, defect_prediction

    gen = torch.Generator().manual_seed(0)
    tally, expected = EpochTally(torch.device("cpu")), torch.zeros(6, dtype=torch.float64)
    for batch in (8, 8, 8, 5):
        logits = torch.randn(batch, 2, 24, 24, generator=gen).contiguous(
            memory_format=torch.channels_last)
        logits[0, :, :2] = float("nan")
        logits[0, 1, 2:4] = float("nan")
        logits[1, 0, :3] = float("nan")
        logits[1, 1, 3:6] = logits[1, 0, 3:6]  # ties go to the background
        target = (torch.rand(batch, 24, 24, generator=gen) > 0.8).long()
        target[:, :, -4:] = 255  # padding
        target[2] = 0  # an image without defect
        assert torch.equal(defect_prediction(logits), logits.argmax(1) == 1)
        tally.add(logits, target, torch.zeros(()))
        expected += _per_step_scores(logits, target)
    assert tally.totals().tolist() == expected.tolist()
    assert EpochTally(torch.device("cpu")).totals().tolist() == [0.0] * 6


def _reference_training(cfg: TrainConfig, run: RunOptions, split: PreparedSplit
                        ) -> tuple[list[dict], dict]:
    """train() on the CPU in resize mode, written out as it was before issue #24: argmax and
    the scores every step.  (history rows, state_dict)"""
    from mr2unet.data.transforms import to_input
    from mr2unet.models import build_model
    from mr2unet.models.kernels import narrow_norms_in_nchw, onednn_1x1_convs
    from mr2unet.training.losses import SegmentationLoss
    from mr2unet.training.options import configure_determinism, set_cpu_threads
    from mr2unet.training.setup import make_optimizer

    configure_determinism(run.deterministic, torch.device("cpu"))
    set_cpu_threads(run.cpu_threads)
    criterion = SegmentationLoss(cfg.loss_config())
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, **cfg.model_kwargs()).to(memory_format=torch.channels_last)
    narrow_norms_in_nchw(model)  # the CPU kernel routes: auto (test_speed.py)
    onednn_1x1_convs(model)
    optimizer = make_optimizer(model, cfg, run.adam_impl)
    shuffle_gen = torch.Generator().manual_seed(cfg.seed + 1)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 2)
    images, masks = torch.from_numpy(split.images), torch.from_numpy(split.masks).long()
    rows = []
    for epoch in range(cfg.epochs):
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = epoch_lr(cfg.lr, epoch, cfg.epochs, cfg.lr_schedule)
        order = torch.randperm(len(split), generator=shuffle_gen)
        loss_sum, counts = torch.zeros(()), torch.zeros(6, dtype=torch.float64)
        for start in range(0, len(split), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            x, y = augment_batch(to_input(images[idx]), masks[idx], cfg.augment, aug_gen)
            logits = model(x.contiguous(memory_format=torch.channels_last))
            loss = criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                loss_sum += loss.detach() * idx.numel()
                counts += _per_step_scores(logits, y)
        t = [float(loss_sum.double()), *counts.tolist()]
        rows.append({"loss": t[0] / t[3], "train_iou": t[1] / t[3], "train_dice": t[2] / t[3],
                     "lr": optimizer.param_groups[0]["lr"],
                     "pred_defect_fraction": t[4] / max(t[6], 1.0),
                     "true_defect_fraction": t[5] / max(t[6], 1.0)})
    return rows, model.state_dict()


@pytest.mark.parametrize("arch", ["unet", "mr2unet"])
def test_demo_settings_train_to_the_bits_of_the_loop_before(arch: str) -> None:
    """The demo profile's training (48 px, ce_dice, flips_rot90, fused Adam, 1 thread) for
    2 epochs: the history and the weights, byte for byte, as the loop gave before the
    per-step counts moved to EpochTally (a speed change may not change a result)."""
    import yaml
    from helpers import REPO

    from mr2unet.config import profiles

    params = yaml.safe_load(profiles.render("demo", REPO))
    cfg = dataclasses.replace(TrainConfig.from_params(params, arch), epochs=2)
    run = RunOptions.from_params(params)
    assert (run.cpu_threads, run.adam_impl, cfg.augment, cfg.loss, cfg.crop_size) == (
        1, "fused", "flips_rot90", "ce_dice", None)
    split = tiny_split(20, params["prepare"]["image_size"], seed=1)  # batches of 8, 8, 4
    split.masks[:3, :, -6:] = 255  # padding on some images
    result = train(cfg, split, progress=False, options=run)
    rows, state = _reference_training(cfg, run, split)
    assert [{k: row[k] for k in rows[0]} for row in result.history] == rows
    got = result.model.state_dict()
    assert got.keys() == state.keys()
    assert all(got[k].numpy().tobytes() == state[k].numpy().tobytes() for k in state)
