"""Profiles: overlay files written into params.yaml, comments and key order kept."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import pytest
import yaml

from mr2unet.config import profiles
from mr2unet.config.params import load_params
from mr2unet.errors import UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of params.yaml and profiles/ (the profile commands run at a project root)."""
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def test_committed_params_are_the_paper_profile() -> None:
    """`git checkout params.yaml` == `mr2unet profile paper`: the two files never drift."""
    assert (REPO / "params.yaml").read_text() == (REPO / "profiles/paper.yaml").read_text(), (
        "params.yaml differs from profiles/paper.yaml: a key added to one must be added to "
        "the other (the committed params.yaml is the paper's profile)")
    assert profiles.applied(REPO / "params.yaml") == "paper"


def test_demo_writes_its_values_and_keeps_the_rest(project: Path) -> None:
    paper = (project / "params.yaml").read_text()
    profiles.apply("demo", project / "params.yaml", project)
    text = (project / "params.yaml").read_text()
    demo = load_params(project / "params.yaml")
    overlay = yaml.safe_load((project / "profiles/demo.yaml").read_text())
    assert demo["data"]["source"] == "synthetic"
    assert demo["train"]["epochs"] == overlay["train"]["epochs"] != 200
    assert demo["train"]["base_width"] == overlay["train"]["base_width"]
    assert demo["data"]["sha256"].startswith("cf4313b1")  # untouched keys survive
    assert profiles.applied(project / "params.yaml") == "demo"
    # comments and key order of the paper's file are kept; only values and the note change
    comments = [line for line in paper.splitlines()[1:] if line.lstrip().startswith("#")]
    assert comments == [line for line in text.splitlines()[1:] if line.lstrip().startswith("#")]
    keys = re.compile(r"^\s*([\w.-]+):", re.M)
    assert keys.findall(paper) == keys.findall(text)
    assert "lr: 3.0e-3" in text  # the overlay's spelling of a value is kept
    changed = [(a, b) for a, b in zip(paper.splitlines(), text.splitlines(), strict=True)
               if a != b]
    base = yaml.safe_load(paper)
    differing = sum(value != base[section][key]
                    for section, values in overlay.items() for key, value in values.items())
    assert len(changed) == 1 + differing  # the note + one line per value that differs


def test_switching_back_restores_the_paper_byte_for_byte(project: Path) -> None:
    paper = (project / "params.yaml").read_text()
    profiles.apply("demo", project / "params.yaml", project)
    profiles.apply("paper", project / "params.yaml", project)
    assert (project / "params.yaml").read_text() == paper


def test_profiles_do_not_stack(project: Path) -> None:
    """Every profile is an overlay on the paper's values, not on the current params.yaml."""
    (project / "profiles/a.yaml").write_text("train:\n  epochs: 7\n")
    (project / "profiles/b.yaml").write_text("train:\n  lr: 0.5\n")
    profiles.apply("a", project / "params.yaml", project)
    profiles.apply("b", project / "params.yaml", project)
    values = load_params(project / "params.yaml")
    assert values["train"]["lr"] == 0.5 and values["train"]["epochs"] == 200


def test_named_overlays_combine_in_order(project: Path) -> None:
    """`mr2unet profile a b`: a's values, then b's over them; the note names both."""
    (project / "profiles/a.yaml").write_text("train:\n  epochs: 7\n  lr: 0.1\n")
    (project / "profiles/b.yaml").write_text("train:\n  lr: 0.5\n")
    profiles.apply("a+b", project / "params.yaml", project)
    values = load_params(project / "params.yaml")
    assert (values["train"]["epochs"], values["train"]["lr"]) == (7, 0.5)
    assert profiles.applied(project / "params.yaml") == "a+b"
    assert (project / "params.yaml").read_text().startswith(
        "# profile: a+b (written by `mr2unet profile a b`: profiles/paper.yaml with "
        "profiles/a.yaml, profiles/b.yaml merged in)\n")
    profiles.apply("b+a", project / "params.yaml", project)
    assert load_params(project / "params.yaml")["train"]["lr"] == 0.1
    with pytest.raises(UserError, match="paper is the base of every profile"):
        profiles.apply("paper+a", project / "params.yaml", project)


def test_a_key_the_paper_lacks_is_written_beside_its_siblings(project: Path) -> None:
    """An overlay may add a key the paper's file does not have (a network option): it goes
    under its siblings, and the comment that introduces the next section stays above it."""
    (project / "profiles/a.yaml").write_text(
        "train:\n  model_options:\n    mr2unet:\n      unit_split: [1, 1, 1]\n"
        "    unet:\n      extra: 1\n")
    profiles.apply("a", project / "params.yaml", project)
    text = (project / "params.yaml").read_text()
    options = load_params(project / "params.yaml")["train"]["model_options"]
    assert options["mr2unet"] == {"recurrent_steps": 3, "unit_split": [1, 1, 1]}
    assert options["unet"] == {"extra": 1}
    lines = text.splitlines()
    at = lines.index("      unit_split: [1, 1, 1]")
    assert lines[at - 1] == "      recurrent_steps: 3"
    assert lines[at + 1] == "" and lines[at + 2].startswith("# How the runs execute")
    assert lines.index("run:") > at
    # the comments are the paper's, in the paper's order
    paper = (REPO / "params.yaml").read_text()
    comments = [line for line in paper.splitlines()[1:] if line.lstrip().startswith("#")]
    assert comments == [line for line in lines[1:] if line.lstrip().startswith("#")]


def test_a_key_added_after_a_nested_mapping_takes_its_trailing_comment() -> None:
    rt = profiles._yaml()
    values = rt.load("a:\n  b:\n    c: 1\n\n# about d\nd: 2\n")
    profiles._append(values["a"], "e", 3)
    out = io.StringIO()
    rt.dump(values, out)
    assert out.getvalue() == "a:\n  b:\n    c: 1\n  e: 3\n\n# about d\nd: 2\n"


def test_a_typo_in_a_profile_is_named_and_nothing_written(project: Path) -> None:
    before = (project / "params.yaml").read_text()
    (project / "profiles/typo.yaml").write_text("train:\n  epcohs: 3\n")
    with pytest.raises(UserError, match=r"profiles/typo.yaml: unknown key `train.epcohs`; "
                                        r"did you mean `train.epochs`\?"):
        profiles.apply("typo", project / "params.yaml", project)
    (project / "profiles/bad.yaml").write_text("train:\n  epochs: -1\n")
    with pytest.raises(UserError, match=r"profiles/bad.yaml over profiles/paper.yaml: "
                                        r"params.yaml: `train.epochs` is -1"):
        profiles.apply("bad", project / "params.yaml", project)
    assert (project / "params.yaml").read_text() == before


def test_unknown_profile_lists_the_known_ones(project: Path) -> None:
    known = ("bottle-sample, deepcrack-sample, demo, neu-sample, paper, paper-fast, "
             "paper-plus, user-data")
    with pytest.raises(UserError, match=f"unknown profile 'nope'.*{known}"):
        profiles.apply("nope", project / "params.yaml", project)


@pytest.mark.parametrize("cpu_profile", ["user-data", "bottle-sample"])
def test_paper_plus_puts_the_cpu_recipe_on_the_paper_s_full_size(
        project: Path, cpu_profile: str, request: pytest.FixtureRequest) -> None:
    """`mr2unet profile bottle-sample paper-plus`: the data of the first, the paper's sizes,
    epochs and device, and the CPU recipe's loss, augmentation, schedule and lr."""
    if cpu_profile == "bottle-sample":  # its archive lies in ../shared: skips, saying so
        request.getfixturevalue("bottle_tar")
    profiles.apply(f"{cpu_profile}+paper-plus", project / "params.yaml", REPO)
    values, paper = load_params(project / "params.yaml"), load_params(REPO / "params.yaml")
    recipe = yaml.safe_load((REPO / "profiles/user-data.yaml").read_text())["train"]
    train = values["train"]
    for key in ("epochs", "steps", "batch_size", "base_width"):
        assert train[key] == paper["train"][key], key
    for key in ("device", "cpu_threads"):
        assert values["run"][key] == paper["run"][key], key
    assert values["prepare"]["image_size"] == paper["prepare"]["image_size"] == 128
    for key in ("loss", "augment", "lr_schedule", "lr"):
        assert train[key] == recipe[key] != paper["train"][key], key
    data = yaml.safe_load((REPO / f"profiles/{cpu_profile}.yaml").read_text()).get("data", {})
    assert all(values["data"][k] == v for k, v in data.items())


@pytest.mark.parametrize("name", profiles.available(REPO))
def test_every_committed_profile_loads(project: Path, name: str,
                                       request: pytest.FixtureRequest) -> None:
    archives = {"bottle-sample": "bottle_tar", "neu-sample": "neu_tar",
                "deepcrack-sample": "deepcrack_tar"}
    if name in archives:  # its archive lies in ../shared: skips, saying so
        request.getfixturevalue(archives[name])
    profiles.apply(name, project / "params.yaml", REPO)
    assert profiles.applied(project / "params.yaml") == name
    load_params(project / "params.yaml")
