"""Time the demo pipeline stage by stage, and check that every model learned.

    python benchmarks/demo_time.py            # in a throw-away copy of the working tree

Copies the project's files (tracked and untracked-but-not-ignored) to a temporary git
repository, selects the `demo` profile, and runs every stage with
`dvc repro --single-item` in pipeline order, timing each. Prints the per-stage times,
the total against the 5-minute budget, and each model's mean test IOU against the 0.5
target.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BUDGET_S = 300.0
IOU_TARGET = 0.5


def copy_project(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    for args in (["init", "-q"], ["add", "-A"],
                 ["-c", "user.email=b@b", "-c", "user.name=b", "commit", "-qm", "bench"]):
        subprocess.run(["git", *args], cwd=dest, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--keep", type=Path, help="run in this directory and keep it")
    args = parser.parse_args()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_NO_UPDATE_CHECK": "1",
           "PYTHONHASHSEED": "0", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    work = args.keep or Path(tempfile.mkdtemp(prefix="mr2unet-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    copy_project(work)
    subprocess.run([str(BIN / "mr2unet"), "profile", args.profile], cwd=work, check=True,
                   env=env, stdout=subprocess.DEVNULL)
    stages = subprocess.run([str(BIN / "dvc"), "stage", "list", "--name-only"], cwd=work,
                            env=env, capture_output=True, text=True, check=True).stdout.split()
    print(f"demo pipeline ({args.profile} profile) in {work}, {os.cpu_count()} CPU cores")
    times: dict[str, float] = {}
    for stage in stages:
        start = time.perf_counter()
        result = subprocess.run([str(BIN / "dvc"), "repro", "--single-item", stage], cwd=work,
                                env=env, capture_output=True, text=True)
        times[stage] = time.perf_counter() - start
        if result.returncode != 0:
            print(result.stdout[-3000:], result.stderr[-3000:], sep="\n")
            print(f"stage {stage} failed")
            return 1
        print(f"  {stage:<26} {times[stage]:7.1f} s", flush=True)
    total = sum(times.values())
    print(f"  {'total':<26} {total:7.1f} s  ({total / BUDGET_S:.2f} of the "
          f"{BUDGET_S:.0f} s budget)")
    ok = total <= BUDGET_S
    for metrics in sorted((work / "metrics").glob("*.json")):
        iou = json.loads(metrics.read_text())["mean"]["iou"]
        verdict = "ok" if iou >= IOU_TARGET else "BELOW TARGET"
        ok &= iou >= IOU_TARGET
        print(f"  mean test IOU {metrics.stem:<15} {iou:.4f}  (target {IOU_TARGET}: {verdict})")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
