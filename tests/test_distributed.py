"""DistributedDataParallel code path: torchrun, 2 CPU processes, gloo backend."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from mr2unet.training import batches as batch_module
    from mr2unet.training.config import TrainConfig
    from mr2unet.training.loop import train
    from mr2unet.training.options import RunOptions
    from mr2unet.training.setup import init_distributed
    sys.path.insert(0, {tests!r})
    from helpers import tiny_split

    # Record which images each step of this rank trains on: the loop turns every batch
    # of uint8 images into the network's input with to_input.
    split, batches = tiny_split(), []
    to_input = batch_module.to_input

    def recording(images):
        batches.append([int((split.images == image.numpy()).all(axis=(1, 2, 3)).argmax())
                        for image in images])
        return to_input(images)

    batch_module.to_input = recording
    rank = init_distributed()
    cfg = TrainConfig(arch="unet", epochs=3, batch_size=2, lr=3e-3, base_width=4, seed=5)
    result = train(cfg, split, progress=False, options=RunOptions(device="cpu"))
    weights = {{k: v.detach() for k, v in result.model.named_parameters()}}
    torch.save(weights, f"{{sys.argv[1]}}/rank{{rank}}.pt")
    rows = [{{k: v for k, v in r.items() if k in ("epoch", "loss", "train_iou")}}
            for r in result.history]
    with open(f"{{sys.argv[1]}}/rank{{rank}}.json", "w") as fh:
        json.dump({{"world": torch.distributed.get_world_size(), "history": rows,
                   "batches": batches}}, fh)
    torch.distributed.destroy_process_group()
""")


def test_torchrun_two_processes_train_in_lockstep(tmp_path: Path) -> None:
    import json

    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", str(script),
                    str(tmp_path)],
                   check=True, env=env, timeout=300, capture_output=True)
    logs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert logs[0]["world"] == 2
    # Each rank trains on its own half of every epoch's shuffle, in batches of 2: rank r
    # takes every 2nd image of the permutation the seed (5 + 1) draws, from the r-th on.
    shuffle = torch.Generator().manual_seed(6)
    for epoch in range(3):
        order = torch.randperm(12, generator=shuffle).tolist()
        for rank, log in enumerate(logs):
            steps = log["batches"][3 * epoch:3 * epoch + 3]
            assert [len(b) for b in steps] == [2, 2, 2]
            assert sum(steps, []) == order[rank::2], (epoch, rank)
    assert all(len(log["batches"]) == 9 for log in logs)  # 3 epochs x 3 steps, nothing more
    # Metrics are all-reduced, so both ranks report the same epoch summaries ...
    assert logs[0]["history"] == logs[1]["history"]
    assert [row["epoch"] for row in logs[0]["history"]] == [1, 2, 3]
    assert logs[0]["history"][-1]["loss"] < logs[0]["history"][0]["loss"]
    # ... and DDP keeps the replicas' weights identical (BN running statistics are
    # per-replica buffers; rank 0's are the ones saved).
    w0 = torch.load(tmp_path / "rank0.pt")
    w1 = torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
