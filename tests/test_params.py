"""params.yaml: validation messages that name the key (profiles: tests/test_profiles.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mr2unet.config.params import deep_merge, load_params
from mr2unet.errors import UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    return path


def edit(path: Path, dotted: str, value: object) -> None:
    raw = yaml.safe_load(path.read_text())
    node = raw
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    path.write_text(yaml.safe_dump(raw))


def test_committed_default_is_the_papers_protocol() -> None:
    base = load_params(REPO / "params.yaml")
    assert base["train"]["lr"] == 1e-4 and base["train"]["epochs"] == 200
    assert base["prepare"]["image_size"] == 128 and base["split"]["test_fraction"] == 0.2
    assert base["train"]["base_width"] == 64 and base["data"]["source"] == "url"
    assert base["train"]["loss"] == "ce" and base["train"]["augment"] == "none"
    assert base["data"]["sha256"].startswith("cf4313b1")


def test_deep_merge_keeps_siblings() -> None:
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}


@pytest.mark.parametrize(("key", "value", "message"), [
    ("train.models", [], "`train.models`"),  # a name not in the registry: test_one_place
    ("train.epochs", -3, "`train.epochs`"),
    ("train.epochs", 2.5, "`train.epochs`"),
    ("split.test_fraction", 1.0, "`split.test_fraction`"),
    ("split.test_fraction", 0, "`split.test_fraction`"),
    ("prepare.image_size", 100, "`prepare.image_size`"),
    ("data.source", "ftp", "`data.source`"),
    ("train.loss", "lovasz", "`train.loss`"),
    ("train.loss", "dice_ce", "`train.loss`"),
    ("train.class_weights", [1.0], "`train.class_weights`"),
    ("train.class_weights", [1.0, 0], "`train.class_weights`"),
    ("train.class_weights", "inverse", "`train.class_weights`"),
    ("train.focal_gamma", -1, "`train.focal_gamma`"),
    ("train.tversky_beta", True, "`train.tversky_beta`"),
    ("run.device", "gpu", "`run.device`"),
    ("data.sha256", "abc", "`data.sha256`"),
    ("train.lr", 0, "`train.lr`"),
    ("train.weight_decay", "1e-4", "`train.weight_decay`"),
    ("run.channels_last", 1, "`run.channels_last`"),
    ("evaluate.empty_score", True, "`evaluate.empty_score`"),
    ("evaluate.empty_score", 0.5, "`evaluate.empty_score`"),
])
def test_bad_values_name_the_key(params_file: Path, key: str, value: object,
                                 message: str) -> None:
    edit(params_file, key, value)
    with pytest.raises(UserError, match=message):
        load_params(params_file)


def test_missing_archive_names_the_key(params_file: Path, tmp_path: Path) -> None:
    edit(params_file, "data.source", "archive")
    edit(params_file, "data.archive", str(tmp_path / "missing.tar.xz"))
    with pytest.raises(UserError, match="`data.archive`"):
        load_params(params_file)


def test_integer_empty_score_is_accepted(params_file: Path) -> None:
    edit(params_file, "evaluate.empty_score", 0)
    assert load_params(params_file)["evaluate"]["empty_score"] == 0


@pytest.mark.parametrize(("dotted", "message"), [
    ("train.epoch", "unknown key `train.epoch`; did you mean `train.epochs`?"),
    ("prepare.size", "unknown key `prepare.size`"),
    ("trian", "unknown key `trian`; did you mean `train`?"),
])
def test_unknown_keys_are_named(params_file: Path, dotted: str, message: str) -> None:
    edit(params_file, dotted, 10)
    with pytest.raises(UserError, match=re.escape(message)):
        load_params(params_file)


def test_an_old_layout_with_profiles_is_refused(params_file: Path) -> None:
    edit(params_file, "profile", "demo")
    with pytest.raises(UserError, match="mr2unet profile paper"):
        load_params(params_file)


def test_missing_key_is_named(params_file: Path) -> None:
    raw = yaml.safe_load(params_file.read_text())
    del raw["train"]["batch_size"]
    params_file.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match="missing key `train.batch_size`"):
        load_params(params_file)


@pytest.mark.slow
def test_stage_script_fails_before_work_with_one_line(params_file: Path, tmp_path: Path) -> None:
    edit(params_file, "train.epochs", -1)
    result = subprocess.run([sys.executable, str(REPO / "pipeline" / "train.py"), "unet",
                             "--params", str(params_file)], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: params.yaml: `train.epochs` is -1; expected a positive integer."]
    assert not (tmp_path / "data").exists()
