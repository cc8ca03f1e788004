"""The GPU check of issue #11: correctness, speed, the paper's protocol time, bottle accuracy.

    python benchmarks/gpu_check.py --prepare-only --out device_data/bottle   # CPU, once
    PYTHONPATH=src python3 benchmarks/gpu_check.py --budget-s 420           # on the GPU
    python benchmarks/gpu_check.py --smoke                                  # CPU, tiny, ~1 min

The one entry point (also of the worker processes); the code is the package
``benchmarks/gpucheck/``, whose docstring (``--help``) describes the phases. It needs only
torch, numpy, pyyaml and ``PYTHONPATH=src``: no DVC, no MLflow.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The benchmarks folder is not a package: put it on the path for gpucheck and
# train_throughput, and src/ for mr2unet where PYTHONPATH does not name it.
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "src")]

from gpucheck.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
