"""Runs trained together in one process are the runs trained alone (issue #22)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from helpers import CFG, states_equal, tiny_split

from mr2unet.errors import UserError
from mr2unet.training.loop import train
from mr2unet.training.many import TrainJob, train_many


def _strip(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ("seconds", "images_per_second")}
            for row in history]


@pytest.mark.slow
def test_runs_trained_together_are_bit_identical_to_runs_trained_alone(tmp_path: Path
                                                                       ) -> None:
    split = tiny_split()
    cfgs = [dataclasses.replace(CFG, cpu_threads=1),  # unet, seed 3
            dataclasses.replace(CFG, cpu_threads=1, arch="mr2unet", seed=4, epochs=3),
            dataclasses.replace(CFG, cpu_threads=1, seed=5, augment="flips_rot90",
                                batch_size=5)]  # another seed, step count and augmentation
    seen: list[list[int]] = [[] for _ in cfgs]
    jobs = [TrainJob(c, split, tmp_path / str(i),
                     on_epoch_end=lambda row, i=i: seen[i].append(int(row["epoch"])))
            for i, c in enumerate(cfgs)]
    together = train_many(jobs)
    alone = [train(c, split, progress=False) for c in cfgs]
    for t, a, c in zip(together, alone, cfgs, strict=True):
        assert states_equal(t.model, a.model), c.arch
        assert _strip(t.history) == _strip(a.history)
        assert t.config == a.config
    assert seen == [[1, 2, 3, 4], [1, 2, 3], [1, 2, 3, 4]]
    # each run wrote its own checkpoints (every epoch but the last, checkpoint_every 1)
    assert all((tmp_path / str(i)).is_dir() for i in range(3))
    # and the runs did differ from each other (the test compares something)
    assert not states_equal(together[0].model, together[2].model)


def test_runs_that_need_other_global_settings_are_refused() -> None:
    split = tiny_split()
    with pytest.raises(UserError, match="train.cpu_threads"):
        train_many([TrainJob(dataclasses.replace(CFG, cpu_threads=1), split),
                    TrainJob(dataclasses.replace(CFG, cpu_threads=2), split)])
    with pytest.raises(UserError, match="train.deterministic"):
        train_many([TrainJob(CFG, split),
                    TrainJob(dataclasses.replace(CFG, deterministic=False), split)])
    with pytest.raises(UserError, match="at least one run"):
        train_many([])
