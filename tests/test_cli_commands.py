"""The first step of `make demo` as a user types it: `mr2unet profile` (write, name, go back)
and `mr2unet synthetic` (issue #33: neither command had a test of its own)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mr2unet.cli import main
from mr2unet.config.params import load_params

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """params.yaml and profiles/ as committed, the working directory."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_profile_writes_the_demo_names_it_and_goes_back_to_the_paper(
        project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paper = load_params(project / "params.yaml")
    assert main(["profile", "demo"]) == 0
    assert "params.yaml: the values of profile demo (profiles/paper.yaml + " \
        "profiles/demo.yaml)" in capsys.readouterr().out
    demo = load_params(project / "params.yaml")
    assert demo["data"]["source"] == "synthetic" and demo["prepare"]["image_size"] == 48
    assert demo["train"]["epochs"] == 30 and demo["run"]["cpu_threads"] == 1
    # only the overlay's keys differ from the paper's values
    assert demo["train"]["models"] == paper["train"]["models"]
    assert demo["evaluate"] == paper["evaluate"]

    assert main(["profile"]) == 0
    said = capsys.readouterr().out
    assert said.startswith("params.yaml: profile demo; available: ")
    assert {"paper", "demo"} <= set(said.split("available: ")[1].strip().split(", "))

    assert main(["profile", "paper"]) == 0
    assert load_params(project / "params.yaml") == paper


def test_an_unknown_profile_is_one_clear_error(project: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    before = (project / "params.yaml").read_bytes()
    assert main(["profile", "no-such-profile"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no-such-profile" in err and "demo" in err
    assert (project / "params.yaml").read_bytes() == before


def test_synthetic_writes_mvtec_format_data(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "raw"
    assert main(["synthetic", str(out), "--images-per-defect", "1", "--seed", "3"]) == 0
    said = capsys.readouterr().out.strip()
    categories = sorted(p.name for p in out.iterdir() if p.is_dir())
    defective = sorted(p for p in out.glob("*/test/*/*.png") if p.parent.name != "good")
    assert said == f"wrote {len(defective)} defective images in {len(categories)} " \
        f"categories to {out}"
    assert len(categories) == 4 and len(defective) >= 4
    for image in defective:  # each defective image has its ground-truth mask
        category, _, defect = image.parts[-4:-1]
        assert (out / category / "ground_truth" / defect / f"{image.stem}_mask.png").is_file()
    again = tmp_path / "again"
    assert main(["synthetic", str(again), "--images-per-defect", "1", "--seed", "3"]) == 0
    assert [p.read_bytes() for p in defective] == [
        (again / p.relative_to(out)).read_bytes() for p in defective]


def test_synthetic_refuses_zero_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    assert main(["synthetic", str(tmp_path / "raw"), "--images-per-defect", "0"]) == 2
    assert "images_per_defect is 0" in capsys.readouterr().err
