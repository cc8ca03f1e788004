"""Do trained weights depend on the CPU's instruction set?  Train twice, compare bytes.

    python benchmarks/cpu_isa_bytes.py [--models unet mr2unet]

Trains each network for 2 epochs on generated data (32 px, base_width 4, 1 thread) in
fresh processes under different caps of the instruction sets that PyTorch's CPU kernels
may use: oneDNN's ``ONEDNN_MAX_CPU_ISA`` (convolutions) and ATen's
``ATEN_CPU_CAPABILITY`` (element-wise and reduction kernels).  Prints a digest of the
weights per setting: equal digests mean bit-identical training.  On a machine whose CPU
has AVX-512, capping oneDNN at AVX2 changes the weights, which is why the demo's metrics
differ between machines with different instruction sets (docs/training.md).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SETTINGS = {
    "default": {},
    "oneDNN <= AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "oneDNN <= AVX512_CORE": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "ATen avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "ATen default (no SIMD)": {"ATEN_CPU_CAPABILITY": "default"},
}


def train_digest(split: Path, arch: str) -> str:
    """Run in a child process: train 2 epochs, print the weights' digest."""
    from mr2unet.data.prepared import load_split
    from mr2unet.training.loop import TrainConfig, train

    cfg = TrainConfig(arch=arch, epochs=2, batch_size=4, base_width=4, lr=3e-3,
                      loss="ce_dice", device="cpu", cpu_threads=1)
    model = train(cfg, load_split(split), progress=False).model
    digest = hashlib.sha256()
    for value in model.state_dict().values():
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["unet", "mr2unet"])
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(train_digest(Path(args.child[0]), args.child[1]))
        return

    from mr2unet.data.prepare import PrepareConfig, prepare
    from mr2unet.data.synthetic import generate

    with tempfile.TemporaryDirectory() as tmp:
        raw, out = Path(tmp, "raw"), Path(tmp, "prepared")
        generate(raw, seed=0, images_per_defect=2)
        prepare(raw, out, PrepareConfig(image_size=32), check=False)
        for arch in args.models:
            digests = {}
            for label, env in SETTINGS.items():
                result = subprocess.run(
                    [sys.executable, __file__, "--child", str(out / "train.npz"), arch],
                    env={**os.environ, **env}, capture_output=True, text=True, check=True)
                digests[label] = result.stdout.strip().splitlines()[-1]
            reference = digests["default"]
            for label, digest in digests.items():
                same = "same as default" if digest == reference else "DIFFERENT bytes"
                print(f"{arch:8s} {label:24s} {digest}  {same}")


if __name__ == "__main__":
    main()
