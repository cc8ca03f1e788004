"""The report stage: Table 1 against the paper, the self-contained page, registry aliases."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from helpers import (
    AREAS,
    REPO,
    SIZE,
    constant_model,
    fake_project,
    fake_split,
    register_version,
    stage_params,
)
from PIL import Image

from mr2unet.errors import UserError
from mr2unet.evaluation.evaluate import run_evaluation
from mr2unet.models import build_model
from mr2unet.models.checkpoint import save_model
from mr2unet.reporting.figures import pick_samples
from mr2unet.reporting.inputs import LABELS, load_report, paper_categories, paper_table
from mr2unet.reporting.markup import Cell
from mr2unet.reporting.report import write_report
from mr2unet.reporting.tables import cost_table, detection_table, ranking_table, table1
from mr2unet.reporting.verdicts import verdict_table
from mr2unet.tracking.registry import download_checkpoint, rank_models, set_aliases


def _metrics(per_category: dict[str, float]) -> dict[str, Any]:
    scores = {c: {"iou": v, "dice": v} for c, v in per_category.items()}
    mean = sum(per_category.values()) / len(per_category)
    return {"mean": {"iou": mean, "dice": mean}, "per_category": scores}


def test_table1_puts_ours_beside_the_paper_with_the_best_in_bold() -> None:
    metrics = {"unet": _metrics({"bottle": 0.7, "weave": 0.2}),
               "mr2unet": _metrics({"bottle": 0.6, "weave": 0.3})}
    header, rows = table1(metrics, "iou")
    assert header == ["category", "U-Net", "paper", "Δ", "MR2U-Net", "paper", "Δ"]
    bottle, weave, mean = rows
    assert bottle == [Cell("bottle"), Cell("0.7000", True), Cell("0.5976"), Cell("+0.1024"),
                      Cell("0.6000"), Cell("0.6547", True), Cell("-0.0547")]
    # "weave" (synthetic) is not in the paper: our value only.
    assert weave == [Cell("weave"), Cell("0.2000"), Cell("–"), Cell("–"),
                     Cell("0.3000", True), Cell("–"), Cell("–")]
    # Our mean covers 2 categories, the paper's 15: not compared.
    assert [c.text for c in mean] == ["Mean", "0.4500", "–", "–", "0.4500", "–", "–"]
    assert mean[1].bold and mean[4].bold  # a tie: both bold


def test_table1_without_paper_categories_has_no_paper_columns() -> None:
    header, rows = table1({"unet": _metrics({"weave": 0.2, "tiles": 0.4})}, "dice")
    assert header == ["category", "U-Net"]
    assert [[c.text for c in r] for r in rows] == [["tiles", "0.4000"], ["weave", "0.2000"],
                                                    ["Mean", "0.3000"]]


def test_paper_mean_is_compared_when_all_15_categories_are_there() -> None:
    paper = paper_table()
    ours = {c: paper[("mr2unet", c)]["iou"] + 0.01 for c in sorted(paper_categories())}
    _, rows = table1({"mr2unet": _metrics(ours)}, "iou")
    assert len(rows) == 16
    assert [c.text for c in rows[-1]] == ["Mean", f"{0.535 + 0.01:.4f}", "0.5350", "+0.0100"]


def test_samples_cover_the_defect_types_in_turn() -> None:

    split = fake_split()  # bottle: hole, crack, hole
    assert pick_samples(split, "bottle", 2) == [1, 0]  # crack first (sorted), then hole
    assert pick_samples(split, "bottle", 5) == [1, 0, 2]


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fake project after evaluate@unet, evaluate@mr2unet and report (tracking off)."""
    root = fake_project(tmp_path_factory.mktemp("project"),
                        {"unet": constant_model("unet", True),
                         "mr2unet": constant_model("mr2unet", False)})
    params = stage_params(["unet", "mr2unet"])
    (root / "data/models/unet.run.json").write_text(  # as pipeline/train.py writes it
        json.dumps({"tracking": False, "train_seconds": 150.0, "train_device": "cpu"}))
    for arch in ("unet", "mr2unet"):
        run_evaluation(params, arch, root)
    write_report(load_report(params, root), root / "reports")
    return root


def test_threshold_free_scores_and_model_cost(reported: Path) -> None:
    from mr2unet.evaluation.cost import count_parameters

    md = (reported / "reports/report.md").read_text()
    assert "## Pixel AUROC and AP (threshold-free)" in md and "## Summary: model cost" in md
    inputs = load_report(stage_params(["unet", "mr2unet"]), reported)
    header, rows = ranking_table(inputs)
    assert header == ["category", "U-Net AUROC", "U-Net AP", "U-Net oracle IOU",
                      "MR2U-Net AUROC", "MR2U-Net AP", "MR2U-Net oracle IOU"]
    # One probability for every pixel: AUROC 1/2; AP = the share of defect pixels = the
    # oracle's IOU (its best mask marks every pixel), for both networks (a tie: bold).
    weave = 137 / (3 * 32 * 32)
    assert [c.text for c in rows[1]] == ["weave", *["0.5000", f"{weave:.4f}",
                                                    f"{weave:.4f}"] * 2]
    assert rows[-1][0] == Cell("Mean", True) and all(c.bold for c in rows[-1][1:])
    header, rows = cost_table(inputs)
    assert header[:5] == ["model", "parameters", "input", "GFLOPs / image", "training time"]
    unet, mr2unet = ([c.text for c in row] for row in rows)
    assert unet[:6] == ["U-Net", f"{count_parameters(constant_model('unet', True)):,}",
                        "32×32", f"{inputs.pooled['unet']['cost']['gflops']:.3f}",
                        "2.5 min", f"cpu, {inputs.timing['unet']['cpu_threads']} thread"
                        + ("s" if inputs.timing["unet"]["cpu_threads"] > 1 else "")]
    assert re.fullmatch(r"\d+\.\d\d \(n=\d+\)", unet[6]) and "(n=" in unet[7]
    assert mr2unet[4] == "–"  # no training time recorded
    summary = md[md.index("## Summary"):md.index("## Summary: model cost")]
    assert "pixel AUROC | pixel AP |" in summary and "| 0.5000 |" in summary


def test_report_files(reported: Path) -> None:
    out = reported / "reports"
    for name in ("report.html", "report.md", "category_scores.csv", "figures/curve_loss.svg",
                 "figures/category_iou.svg", "figures/samples_bottle.png"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "category_scores.csv").open()))
    assert [(r["model"], r["category"]) for r in rows] == [
        ("unet", "bottle"), ("unet", "weave"), ("mr2unet", "bottle"), ("mr2unet", "weave")]
    unet = json.loads((reported / "metrics/unet.json").read_text())
    assert float(rows[1]["iou"]) == unet["per_category"]["weave"]["iou"]
    per_model = list(csv.DictReader((out / "category_scores/unet.csv").open()))
    assert per_model == [{k: r[k] for k in ("category", "iou", "dice")} for r in rows[:2]]
    # Fig. 4 grid: 32px tiles scaled to 128, 4 columns, 2 sample rows + a header.
    grid = Image.open(out / "figures/samples_weave.png")
    assert grid.size == (4 * 132, 16 + 2 * 132)
    assert np.asarray(grid)[16:16 + 128, 132:260].any()  # the ground-truth tile is drawn


def test_html_is_self_contained(reported: Path) -> None:
    page = (reported / "reports/report.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # one grid per category
    assert page.count("<svg") == 3  # loss, train IOU, IOU per category
    sources = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page)
    assert sources and all(s.startswith("data:") for s in sources)
    assert "<b>0.6547</b>" in page  # the paper's better bottle IOU of the pair (MR2U-Net's)
    assert "No network may hold an alias." in page  # both constant: neither learned
    assert "abc123" in page  # training commit from the checkpoint's provenance


def test_report_says_whether_the_differences_are_significant(reported: Path) -> None:

    data = json.loads((reported / "reports/pairwise.json").read_text())
    assert data["models"] == ["unet", "mr2unet"] and data["images"] == 6
    overall = [c for c in data["comparisons"] if c["scope"] == "all"]
    assert [(c["first"], c["second"], c["metric"]) for c in overall] == [
        ("mr2unet", "unet", "iou"), ("mr2unet", "unet", "dice")]
    iou = overall[0]
    # U-Net predicts every pixel a defect (IOU = area / 32^2), MR2U-Net none (IOU 0).
    areas = [a for values in AREAS.values() for a in values]
    assert iou["mean_diff"] == round(-sum(areas) / SIZE**2 / 6, 6)
    assert (iou["better"], iou["worse"], iou["tied"]) == (0, 6, 0)
    # 6 distinct differences, all negative: exact p = 2 / 2^6; one pair, so Holm = raw.
    assert iou["p_value"] == iou["p_holm"] == 2 / 64 and iou["significant"] is True
    assert iou["ci_low"] < iou["mean_diff"] < iou["ci_high"] < 0
    bottle = next(c for c in data["comparisons"] if c["scope"] == "bottle")
    assert bottle["n"] == 3 and bottle["p_value"] == 2 / 8 and bottle["significant"] is False
    md = (reported / "reports/report.md").read_text()
    assert "## Are the differences significant?" in md
    assert "- MR2U-Net vs U-Net: -0.036 IOU, 95 % CI [" in md
    assert "Wilcoxon p = 0.031, significant at 0.05; better on 0, worse on 6" in md
    assert "| MR2U-Net vs U-Net | IOU | 6 | -0.036 |" in md
    page = (reported / "reports/report.html").read_text()
    assert "<h2>Are the differences significant?</h2>" in page
    assert "<li>MR2U-Net vs U-Net: -0.036 IOU" in page


def test_report_refuses_per_image_scores_of_other_images(reported: Path, tmp_path: Path
                                                         ) -> None:
    import shutil

    root = tmp_path / "project"
    shutil.copytree(reported, root)
    csv_path = root / "data/eval/unet.csv"
    header, *rows = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join([header, *reversed(rows)]) + "\n")
    with pytest.raises(UserError, match="per-image scores of unet are not those of"):
        load_report(stage_params(["unet", "mr2unet"]), root)
    csv_path.unlink()
    with pytest.raises(UserError, match="run `dvc repro evaluate@unet` first"):
        load_report(stage_params(["unet", "mr2unet"]), root)


def test_report_is_deterministic_but_for_its_time(reported: Path) -> None:
    def stable(text: str) -> str:
        return re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", "", text)

    out = reported / "reports"
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    write_report(load_report(stage_params(["unet", "mr2unet"]), reported), out)
    for path, data in before.items():
        if path.suffix in (".md", ".html"):
            assert stable(path.read_text()) == stable(data.decode()), path
        else:
            assert path.read_bytes() == data, path


@pytest.mark.slow
def test_stage_scripts_run_from_the_project_root(tmp_path: Path) -> None:
    root = fake_project(tmp_path, {"unet": constant_model("unet", True)})
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"]["models"] = ["unet"]
    raw["run"]["device"] = "cpu"
    raw["tracking"]["enabled"] = False
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    said = {}
    for script in (["evaluate.py", "unet"], ["report.py"], ["promote.py"]):
        result = subprocess.run([sys.executable, str(REPO / "pipeline" / script[0]), *script[1:]],
                                cwd=root, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        said[script[0]] = result.stdout
    assert "mean IOU" in said["report.py"] and (root / "reports/report.html").is_file()
    assert json.loads((root / "data/promotion.json").read_text())["excluded"] == {
        "unet": "not learned"}  # "defect everywhere"
    (root / "metrics/unet.json").unlink()
    for script in ("report.py", "promote.py"):
        result = subprocess.run([sys.executable, str(REPO / "pipeline" / script)], cwd=root,
                                capture_output=True, text=True)
        assert result.returncode == 2
        assert "metrics/unet.json not found: run `dvc repro evaluate@unet`" in result.stderr
        assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------- registry


def test_rank_models_breaks_ties_by_name() -> None:
    assert rank_models({"unet": 0.5, "mr2unet": 0.7, "resunet": 0.5}) == [
        "mr2unet", "resunet", "unet"]


def local_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str, str]:
    """(client, URI, experiment id) of a throw-away SQLite store, the cwd moved there."""
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri, uri)
    return client, uri, client.create_experiment("t", str(tmp_path / "artifacts"))


@pytest.mark.slow
def test_champion_and_challenger_aliases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client, uri, experiment = local_registry(tmp_path, monkeypatch)
    runs = {}
    for arch, size in (("unet", 32), ("resunet", 48), ("mr2unet", 64)):
        path = tmp_path / arch / f"{arch}.pt"  # told apart by image size
        save_model(path, build_model(arch, base_width=4), arch, {"base_width": 4}, size)
        runs[arch] = register_version(client, uri, arch, path, experiment)

    assignments = set_aliases(runs, {"unet": 0.4, "resunet": 0.6, "mr2unet": 0.5}, "mr2unet-")
    assert {a.uri: (a.arch, a.version) for a in assignments} == {
        "models:/mr2unet-resunet@champion": ("resunet", "1"),
        "models:/mr2unet-best@champion": ("resunet", "1"),
        "models:/mr2unet-mr2unet@challenger": ("mr2unet", "1"),
        "models:/mr2unet-best@challenger": ("mr2unet", "2")}
    best = client.get_model_version_by_alias("mr2unet-best", "champion")
    assert best.tags["arch"] == "resunet" and best.tags["source_version"] == "mr2unet-resunet/1"
    pt = download_checkpoint("models:/mr2unet-best@champion", tmp_path / "dl", uri)
    assert pt.name == "resunet.pt"

    # Rerunning changes nothing; a new unet version that wins takes both aliases over.
    set_aliases(runs, {"unet": 0.4, "resunet": 0.6, "mr2unet": 0.5}, "mr2unet-")
    assert len(client.search_model_versions("name = 'mr2unet-best'")) == 2
    runs["unet"] = register_version(client, uri, "unet", tmp_path / "unet" / "unet.pt", experiment)
    set_aliases(runs, {"unet": 0.9, "resunet": 0.6, "mr2unet": 0.5}, "mr2unet-")
    assert client.get_registered_model("mr2unet-unet").aliases == {"champion": 2}
    assert client.get_registered_model("mr2unet-resunet").aliases == {"challenger": 1}
    assert client.get_registered_model("mr2unet-mr2unet").aliases == {}  # stale one removed
    assert str(client.get_model_version_by_alias("mr2unet-best", "challenger").version) == "1"
    pt = download_checkpoint("models:/mr2unet-best@champion", tmp_path / "dl2", uri)
    assert pt.name == "unet.pt"


def test_tracking_off_sets_no_alias() -> None:
    assert set_aliases({"unet": {"tracking": False}}, {"unet": 0.5}, "mr2unet-") == []


# ------------------------------------------------------------------------------ collapse


@pytest.fixture(scope="module")
def collapsed_project(tmp_path_factory: pytest.TempPathFactory
                      ) -> tuple[Path, dict[str, Any]]:
    """U-Net predicts all defect; MR2U-Net finds image 1's defect exactly and nothing on the
    other 5: the better mean IOU (1/6 against ~0.04), but empty on 5 of 6 images."""

    from mr2unet.config.workspace import ModelFiles
    from mr2unet.evaluation.evaluate import write_outputs
    from mr2unet.evaluation.inference import Evaluation

    root = fake_project(tmp_path_factory.mktemp("collapsed"),
                        {"unet": constant_model("unet", True),
                         "mr2unet": constant_model("mr2unet", False)})
    params = stage_params(["unet", "mr2unet"])
    run_evaluation(params, "unet", root)
    split = fake_split()
    areas = [a for values in AREAS.values() for a in values]
    counts = np.array([[64, 0, 0] if i == 1 else [0, 0, a] for i, a in enumerate(areas)])
    predictions = np.zeros_like(split.masks)
    predictions[1] = split.masks[1]
    write_outputs(ModelFiles("mr2unet", root), split, Evaluation(counts, predictions), 1.0)
    return root, params


def test_a_collapsed_network_is_reported_and_not_ranked(
        collapsed_project: tuple[Path, dict[str, Any]]) -> None:
    collapsed_project, params = collapsed_project

    pooled = json.loads((collapsed_project / "metrics/evaluation/mr2unet.json").read_text())
    assert (pooled["collapsed"], pooled["missed_images"], pooled["defective_images"]) == (
        True, 5, 6)
    assert json.loads((collapsed_project / "metrics/evaluation/unet.json").read_text())[
        "collapsed"] is False
    inputs = load_report(params, collapsed_project)
    assert inputs.metrics["mr2unet"]["mean"]["iou"] == pytest.approx(1 / 6, abs=1e-6)
    assert list(inputs.records.collapse_notes(LABELS)) == ["mr2unet"]
    assert inputs.records.rankable() == {"unet": inputs.metrics["unet"]["mean"]["iou"]}
    assert inputs.records.excluded() == {"unet": "not learned", "mr2unet": "collapsed"}
    write_report(inputs, collapsed_project / "reports")
    md = (collapsed_project / "reports/report.md").read_text()
    assert ("**Warning: MR2U-Net predicts no defect on 5 of 6 defective test images: "
            "not a valid ranking.") in md
    assert "| MR2U-Net (collapsed) | 0.1667 |" in md  # not bold: not the best
    assert "not a valid ranking" in (collapsed_project / "reports/report.html").read_text()


def test_a_collapsed_network_gets_no_alias(collapsed_project: tuple[Path, dict[str, Any]],
                                           tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    mlflow = pytest.importorskip("mlflow")
    collapsed_project, params = collapsed_project

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri, uri)
    experiment = client.create_experiment("t", str(tmp_path / "artifacts"))
    runs = {arch: register_version(client, uri, arch, collapsed_project / f"data/models/{arch}.pt",
                            experiment) for arch in ("unet", "mr2unet")}
    inputs = load_report(params, collapsed_project)
    assignments = set_aliases(runs, inputs.records.rankable(), "mr2unet-")
    assert {(a.alias, a.arch) for a in assignments} == {("champion", "unet")}
    assert client.get_registered_model("mr2unet-mr2unet").aliases == {}
    # Without the exclusion, the collapsed network's better mean IOU would win.
    all_iou = {m: inputs.metrics[m]["mean"]["iou"] for m in inputs.models}
    assert rank_models(all_iou)[0] == "mr2unet"


# ------------------------------------------------------------------- did it learn?


def test_report_gives_verdicts_and_no_alias_to_a_network_that_did_not_learn(
        reported: Path) -> None:
    inputs = load_report(stage_params(["unet", "mr2unet"]), reported)
    # Constant networks: U-Net *is* "defect everywhere", MR2U-Net "no defect anywhere".
    assert inputs.records.alias_candidates() == {} and inputs.records.roles() == {}
    header, rows = verdict_table(inputs)
    assert [c.text for c in rows[0]][:2] == ["U-Net", "not learned"]
    assert rows[0][5].text == "0.5000 [0.5000, 0.5000]"
    md = (reported / "reports/report.md").read_text()
    top = md[:md.index("## Provenance")]
    # (The grey threshold, fitted on these very random images, edges out both.)
    assert "**U-Net has not learned: IOU 0.036 against 0.039 for \"intensity threshold\"" in top
    assert "the pixel AUROC interval includes 0.5 (chance) and the IOU is not above" in top
    assert "**No network has learned" in top and "champion" in top
    # "defect everywhere": mean of (16 + 64 + 4) / 3 / 1024 and (100 + 1 + 36) / 3 / 1024.
    assert "## Did it learn?" in md and "| defect everywhere | 0.0360 |" in md
    assert "## AUPRO and image-level detection" in md
    # the first screen: no good test image, so no false alarm counted; U-Net ("defect
    # everywhere") passes no defective part, MR2U-Net ("no defect") passes all 6
    assert top.index("## For a line") < top.index("| U-Net | not measured: no good test "
                                                  "images | 0 of 6 (0%, 95 % interval "
                                                  "0.00-0.46) | 0.5 | not learned |")
    assert "| MR2U-Net | not measured: no good test images | 6 of 6 (100%" in top
    assert "False alarms not measured: no good (defect-free) test images." in top
    # No good test image: AUPRO only. All probabilities equal: AUPRO = 0.15.
    _, rows = detection_table(inputs)
    assert [c.text for c in rows[0]] == ["bottle", "U-Net", "0.1500", "–", "–", "–", "–"]


def test_good_images_reach_the_report(tmp_path: Path) -> None:

    from mr2unet.data.prepared import PreparedSplit
    root = fake_project(tmp_path, {"unet": constant_model("unet", True)})
    split = fake_split()
    masks = split.masks.copy()
    masks[[2, 5]] = 0  # one good image per category
    PreparedSplit(split.images, masks, split.categories, split.defect_types,
                  split.sources).save(root / "data/prepared/test.npz")
    params = stage_params(["unet"])
    run_evaluation(params, "unet", root)
    metrics = json.loads((root / "metrics/unet.json").read_text())
    # Everything flagged: every good image a false alarm, no miss; equal scores: AUROC 1/2.
    assert metrics["per_category"]["weave"]["false_alarm_rate"] == 1.0
    assert metrics["mean"]["miss_rate"] == 0.0 and metrics["mean"]["image_auroc"] == 0.5
    pooled = json.loads((root / "metrics/evaluation/unet.json").read_text())
    assert pooled["image_level"]["false_alarms"] == pooled["image_level"]["good_images"] == 2
    write_report(load_report(params, root), root / "reports")
    _, rows = detection_table(load_report(params, root))
    assert [c.text for c in rows[-1]][3:] == ["0.5000", "0.6667", "1.0000 (2/2)",
                                              "0.0000 (0/4)"]
    # The first screen: a line's three questions, with exact 95 % intervals
    # (2 of 2: [0.025 ** (1/2), 1]; 0 of 4: [0, 1 - 0.025 ** (1/4)]).
    line = ("| U-Net | 2 of 2 (100%, 95 % interval 0.16-1.00) (budget 0.1) | 0 of 4 (0%, "
            "95 % interval 0.00-0.60) | 0.5 | not learned |")
    md = (root / "reports/report.md").read_text()
    assert line in md and md.index(line) < md.index("## Provenance") < md.index("## Table 1")
    page = (root / "reports/report.html").read_text()
    assert page.index("2 of 2 (100%, 95 % interval 0.16-1.00)") < page.index("Table 1")
    verdict = pooled["verdict"]
    assert verdict["false_alarms"]["ci"] == [0.158114, 1.0] and verdict["misses"]["count"] == 0


@pytest.mark.slow
def test_aliases_are_removed_when_no_network_learned(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    client, uri, experiment = local_registry(tmp_path, monkeypatch)
    runs = {}
    for arch in ("unet", "mr2unet"):
        path = tmp_path / arch / f"{arch}.pt"
        save_model(path, build_model(arch, base_width=4), arch, {"base_width": 4}, 32)
        runs[arch] = register_version(client, uri, arch, path, experiment)
    set_aliases(runs, {"unet": 0.6, "mr2unet": 0.5}, "mr2unet-")  # last run's aliases
    assert client.get_registered_model("mr2unet-best").aliases
    assert set_aliases(runs, {}, "mr2unet-") == []  # this run: none learned
    for name in ("mr2unet-unet", "mr2unet-mr2unet", "mr2unet-best"):
        assert client.get_registered_model(name).aliases == {}
