"""benchmarks/device_call.sh, the prepared GPU call of issue #22, rehearsed on the CPU
(``--smoke``): the CUDA tests skip, gpu_check's protocol run runs at tiny sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device_call.sh"


def test_the_smoke_rehearsal_writes_every_result(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(SCRIPT), "--smoke"], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Only results come back from the device: nothing else is left in $OUT.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cuda_tests.log", "cuda_tests.xml", "gpu_check-h200.json", "gpu_check-h200.log",
        "summary.txt"]
    tests = (tmp_path / "cuda_tests.log").read_text()
    assert "tests/test_cuda.py" in tests and "no CUDA GPU" in tests and " failed" not in tests
    assert "SKIPPED" in tests and "tests/test_models.py:" in tests  # its CUDA cases too
    data = json.loads((tmp_path / "gpu_check-h200.json").read_text())
    assert data["smoke"] is True and data["phases_done"] == ["e"]
    assert data["full_protocol_measured"] is True and data["full_protocol_wall_s"] > 0
    run = data["protocol_run"]
    assert list(run["networks"]) == ["unet", "resunet", "attention_unet", "mr2unet"]
    for key in ("full_protocol_measured", "full_protocol_wall_s", "projected_s",
                "per_network_s", "vs_plain", "settings"):
        assert key in run, key
    assert all(row["finished"] and row["vs_plain"] > 0 for row in run["networks"].values())
    summary = (tmp_path / "summary.txt").read_text()
    assert summary in result.stdout
    assert "cuda tests exit 0; gpu_check exit 0" in summary
    assert "full_protocol_measured True" in summary and "skipped" in summary
