"""The label layouts (yolo, coco, labelme): labelling tools' exports read as they are.

Round trips on the real NEU-Seg and bottle samples (../shared): their masks written out as
each export (tests/label_exports.py), read back and compared with the masks (RLE exactly,
polygons by IOU); the export's own split; one error per kind of problem; the stages from a
directory and from an archive; and, slow, `dvc repro` from a YOLO and a COCO export."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from label_exports import coco_file, uncompressed_rle, write_labelme, write_yolo
from PIL import Image

from mr2unet.data import layouts
from mr2unet.data.annotations import circle_polygon, draw_mask, own_split_map
from mr2unet.data.layouts import DataLayout
from mr2unet.data.prepare import PrepareConfig, prepare
from mr2unet.errors import UserError

REPO = Path(__file__).resolve().parents[1]
NEU_NAMES = ["inclusion", "patches", "scratches"]


# ------------------------------------------------------------------------------ the rule

def test_one_rasterising_rule_for_polygons_rle_and_circles() -> None:
    # a polygon along pixel borders covers exactly those pixels
    square = draw_mask([[[1, 2, 4, 2, 4, 5, 1, 5]]], 6, 7)
    expected = np.zeros((7, 6), np.uint8)
    expected[2:5, 1:4] = 1
    assert (square == expected).all()
    # RLE keeps its hole; overlapping objects are unioned
    ring = np.zeros((7, 6), np.uint8, order="F")
    ring[1:6, 1:5] = 1
    ring[3, 2] = 0
    union = draw_mask([uncompressed_rle(ring), [[0, 0, 2, 0, 2, 2, 0, 2]]], 6, 7)
    assert union[3, 2] == 0 and union[0, 0] == 1 and union.sum() == ring.sum() + 3
    # a circle of radius 20 covers about pi r^2 pixels
    disc = draw_mask([[circle_polygon(30, 30, 20)]], 60, 60)
    assert abs(disc.sum() / (np.pi * 400) - 1) < 0.02


def test_own_split_rules() -> None:
    assert own_split_map({"train", "val", "test"}) == {"train": "train", "val": "val",
                                                       "test": "test"}
    assert own_split_map({"train", "val"}) == {"train": "train", "val": "test"}
    assert own_split_map({"train"}) == {"train": ""}


# --------------------------------------------------------------- the real NEU-Seg sample

@pytest.fixture(scope="module")
def neu(neu_tar: Path, tmp_path_factory: pytest.TempPathFactory
        ) -> tuple[dict[str, Path], dict[str, np.ndarray]]:
    """NEU-Seg's test split extracted: its images and label maps by stem."""
    root = tmp_path_factory.mktemp("neu")
    with tarfile.open(neu_tar) as tar:
        tar.extractall(root, filter="data")
    images = {p.stem: p for p in sorted((root / "neu_seg/img_dir/test").glob("*.jpg"))}
    masks = {p.stem: np.asarray(Image.open(p))
             for p in sorted((root / "neu_seg/ann_dir/test").glob("*.png"))}
    assert len(images) == len(masks) == 447
    return images, masks


def _drawn(root: Path, layout: DataLayout) -> dict[str, np.ndarray]:
    """The masks each defective sample draws at native size, by image stem."""
    samples = layouts.scan(root, layout, layouts.choose_categories(root, layout, None))
    return {Path(s.image.removesuffix("#imageData")).stem:
            np.asarray(s.read_mask(root)) != 0 for s in samples}


def _ious(drawn: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> np.ndarray:
    return np.array([(drawn[k] & (m != 0)).sum() / (drawn[k] | (m != 0)).sum()
                     for k, m in masks.items()])


@pytest.mark.parametrize("encoding", ["rle", "rle_raw", "polygons"])
def test_neu_seg_as_coco(neu: tuple, tmp_path: Path, encoding: str) -> None:
    images, masks = neu
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    for image in images.values():
        (root / "images" / image.name).symlink_to(image)
    (root / "annotations.json").write_text(json.dumps(coco_file(images, masks, NEU_NAMES,
                                                                encoding)))
    layout = DataLayout.from_params({"layout": "coco", "source": "directory",
                                     "directory": str(root),
                                     "coco": {"annotations": "annotations.json",
                                              "images": "images"}})
    assert layout.category == "coco"  # the data set's folder name
    ious = _ious(_drawn(root, layout), masks)
    if encoding == "polygons":
        assert ious.mean() >= 0.97 and ious.min() > 0.9
    else:
        assert (ious == 1).all()  # RLE: exact
    summary = prepare(root, tmp_path / "out", PrepareConfig(image_size=32), layout=layout,
                      check=False)
    assert (summary["train"], summary["test"]) == (358, 89)  # the seeded split: one file
    labels = summary["labels"]
    assert labels["layout"] == "coco" and set(labels["classes"]) == set(NEU_NAMES)
    per_image = {Path(k).stem: v for k, v in labels["objects_per_image"].items()}
    assert per_image == {k: len(np.unique(m)) - 1 for k, m in masks.items()}


def test_neu_seg_as_yolo_keeps_its_split_and_val_becomes_test(neu: tuple, tmp_path: Path,
                                                               caplog) -> None:
    images, masks = neu
    splits = {k: "val" if i % 4 == 0 else "train" for i, k in enumerate(images)}
    dataset = write_yolo(images, masks, tmp_path / "yolo", splits, NEU_NAMES)
    layout = DataLayout("yolo", labels=layouts.LABEL_LAYOUTS["yolo"][0]("data.yaml", "neu"))
    ious = _ious(_drawn(dataset.parent, layout), masks)
    assert ious.mean() >= 0.97 and ious.min() > 0.9
    out = tmp_path / "out"
    summary = prepare(dataset.parent, out, PrepareConfig(image_size=32, val_fraction=0.25),
                      layout=layout, check=False)
    assert summary["test"] == sum(s == "val" for s in splits.values()) == 112
    assert summary["train"] + summary["val"] == 335 and summary["val"] == 84
    manifest = (out / "manifest.csv").read_text()
    assert "images/val/" not in manifest.split("test")[0]  # val images only in test
    # with a test split too, val is the validation split and val_fraction is not used
    splits3 = {k: ("train", "val", "test")[i % 3] for i, k in enumerate(images)}
    dataset3 = write_yolo(images, masks, tmp_path / "yolo3", splits3, NEU_NAMES)
    with caplog.at_level("INFO"):
        summary3 = prepare(dataset3.parent, tmp_path / "out3",
                           PrepareConfig(image_size=32, val_fraction=0.25), layout=layout,
                           check=False)
    assert (summary3["train"], summary3["val"], summary3["test"]) == (149, 149, 149)
    assert "split.val_fraction 0.25 not used" in caplog.text


def test_neu_seg_as_labelme_with_embedded_images(neu: tuple, tmp_path: Path) -> None:
    images, masks = neu
    embed = set(list(images)[:20])
    root = tmp_path / "lm"
    write_labelme(images, masks, root / "json", NEU_NAMES, embed)
    layout = DataLayout.from_params({"layout": "labelme", "labelme": {"annotations": "json",
                                                                      "category": "neu"}})
    ious = _ious(_drawn(root, layout), masks)
    assert ious.mean() >= 0.97 and ious.min() > 0.9
    out = tmp_path / "out"
    prepare(root, out, PrepareConfig(image_size=32), layout=layout, check=False)
    manifest = (out / "manifest.csv").read_text()
    assert manifest.count("#imageData") == 20
    # the embedded image is the image file's pixels
    stem = sorted(embed)[0]
    sample = next(s for s in layouts.scan(root, layout, ["neu"]) if stem in s.image)
    assert np.array_equal(np.asarray(sample.read_image(root)), np.asarray(Image.open(
        images[stem])))


# ------------------------------------------------------ the bottle sample (good images)

@pytest.fixture(scope="module")
def bottle(bottle_raw: Path) -> tuple[dict[str, Path], dict[str, np.ndarray]]:
    test = bottle_raw / "bottle" / "test"
    images = {f"{p.parent.name}_{p.stem}": p for p in sorted(test.glob("*/*.png"))}
    masks = {f"{p.parent.name}_{p.stem.removesuffix('_mask')}": np.asarray(Image.open(p))
             for p in sorted((bottle_raw / "bottle/ground_truth").glob("*/*.png"))}
    return images, masks


def _renamed(images: dict[str, Path], dest: Path) -> dict[str, Path]:
    """The images linked under their unique stems (MVTec repeats 000.png per type)."""
    dest.mkdir(parents=True, exist_ok=True)
    for stem, image in images.items():
        (dest / f"{stem}.png").symlink_to(image)
    return {stem: dest / f"{stem}.png" for stem in images}


def test_bottle_as_coco_rle_and_yolo_with_good_images(bottle: tuple, tmp_path: Path) -> None:
    images, masks = bottle
    assert len(images) == 66 and len(masks) == 63
    linked = _renamed(images, tmp_path / "src")
    coco_root = tmp_path / "coco"
    (coco_root / "images").mkdir(parents=True)
    for image in linked.values():
        (coco_root / "images" / image.name).symlink_to(image)
    binary = {k: (m != 0).astype(np.uint8) for k, m in masks.items()}
    (coco_root / "instances.json").write_text(json.dumps(coco_file(linked, binary, ["defect"],
                                                                   "rle")))
    coco = DataLayout.from_params({"layout": "coco", "coco": {
        "annotations": "instances.json", "images": "images", "category": "bottle"}})
    assert (_ious(_drawn(coco_root, coco), masks) == 1).all()
    summary = prepare(coco_root, tmp_path / "c", PrepareConfig(image_size=32,
                                                                good_images="all"),
                      layout=coco, check=False)
    assert summary["images"] == 66 and summary["good_images"] == {"train": 2, "test": 1}
    # YOLO: the good images have empty label files
    splits = {k: "val" if i % 3 == 0 else "train" for i, k in enumerate(linked)}
    write_yolo(linked, binary, tmp_path / "yolo", splits, ["defect"])
    assert (tmp_path / "yolo/labels/train/good_001.txt").read_text() == ""
    yolo = DataLayout.from_params({"layout": "yolo", "yolo": {"dataset": "data.yaml"}})
    ious = _ious(_drawn(tmp_path / "yolo", yolo), masks)
    assert ious.mean() >= 0.97
    summary = prepare(tmp_path / "yolo", tmp_path / "y", PrepareConfig(
        image_size=32, good_images="all"), layout=yolo, check=False)
    assert summary["images"] == 66
    good_test = sum(splits[k] == "val" for k in linked if k.startswith("good"))
    assert summary["good_images"]["test"] == good_test


# ------------------------------------------------------------------------ every problem

def _gray(path: Path, size: tuple[int, int] = (20, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, 90).save(path)
    return path


def _scan(root: Path, name: str, spec: dict) -> list:
    layout = DataLayout.from_params({"layout": name, name: {**spec, "category": "c"}})
    return layouts.scan(root, layout, ["c"], good=True)


def test_yolo_problems_in_one_error_and_empty_labels_are_good(tmp_path: Path) -> None:
    for stem in ("a", "b", "c", "d", "e", "f"):
        _gray(tmp_path / "images/train" / f"{stem}.png")
    labels = tmp_path / "labels/train"
    labels.mkdir(parents=True)
    (labels / "a.txt").write_text("0 0.1 0.1 0.5 0.1 0.5 0.9\n")
    (labels / "b.txt").write_text("")  # good
    (labels / "c.txt").write_text("0 0.1 0.1\n")  # 1 point
    (labels / "d.txt").write_text("0 0.1 0.1 1.2 0.1 0.5 0.9\n")  # 4 px outside a 20-px image
    (labels / "e.txt").write_text("0 0.5 0.5 0.2 0.2\n")  # a box
    (labels / "z.txt").write_text("0 0.1 0.1 0.5 0.1 0.5 0.9\n")  # no image
    # f has no label file: good
    (tmp_path / "data.yaml").write_text("train: images/train\nnames: [scratch]\n")
    with pytest.raises(UserError) as err:
        _scan(tmp_path, "yolo", {"dataset": "data.yaml"})
    text = str(err.value)
    assert "4 problem(s)" in text and "(1 defective image(s) paired)" in text
    for part in ("c.txt:1: a polygon with fewer than 3 points", "d.txt:1: a polygon outside",
                 "e.txt:1: a detection box", "label labels/train/z.txt has no image"):
        assert part in text
    for name in ("c", "d", "e", "z"):
        (labels / f"{name}.txt").unlink()
    samples = _scan(tmp_path, "yolo", {"dataset": "data.yaml"})
    assert [(Path(s.image).stem, s.good, s.defect_type) for s in samples] == [
        ("a", False, "scratch"), ("b", True, "good"), ("c", True, "good"),
        ("d", True, "good"), ("e", True, "good"), ("f", True, "good")]
    # x scales by the width (20), y by the height (10): the triangle (2,1) (10,1) (10,9)
    mask = np.asarray(samples[0].read_mask(tmp_path))
    assert mask.shape == (10, 20) and mask[5, 8] == 1 and mask[:, 11:].sum() == 0
    assert mask[8, 3] == 0 and 28 <= mask.sum() <= 40


def test_coco_problems_boxes_and_images_without_annotations(tmp_path: Path) -> None:
    for stem in ("a", "b", "c"):
        _gray(tmp_path / "images" / f"{stem}.png")
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 10},
                      {"id": 2, "file_name": "b.png", "width": 20, "height": 10},
                      {"id": 3, "file_name": "c.png", "width": 30, "height": 10},
                      {"id": 4, "file_name": "gone.png", "width": 20, "height": 10}],
           "categories": [{"id": 1, "name": "dent"}],
           "annotations": [
               {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 9, 1, 9, 8]]},
               {"id": 2, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 9, 1]]},
               {"id": 3, "image_id": 9, "category_id": 1, "segmentation": [[1, 1, 9, 1, 9, 8]]},
               {"id": 4, "image_id": 1, "category_id": 1,
                "segmentation": {"size": [5, 5], "counts": [25]}}]}
    (tmp_path / "i.json").write_text(json.dumps(doc))
    spec = {"annotations": "i.json", "images": "images"}
    with pytest.raises(UserError) as err:
        _scan(tmp_path, "coco", spec)
    text = str(err.value)
    assert "5 problem(s)" in text
    for part in ("annotation 2: a polygon with fewer than 3 points", "annotation 3: image id 9",
                 "image images/c.png is 20x10 but i.json says 30x10", "gone.png not found",
                 "annotation 4: RLE of size [5, 5]"):
        assert part in text
    doc["annotations"] = doc["annotations"][:1] + [
        {"id": 5, "image_id": 2, "category_id": 1, "bbox": [1, 1, 4, 4], "segmentation": []}]
    doc["images"] = doc["images"][:3]
    doc["images"][2]["width"] = 20
    (tmp_path / "i.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match=r"1 annotation\(s\) have a bbox but no segmentation "
                                        r"\(i.json annotation 5\): boxes are not masks"):
        _scan(tmp_path, "coco", spec)
    doc["annotations"].pop()
    (tmp_path / "i.json").write_text(json.dumps(doc))
    samples = _scan(tmp_path, "coco", spec)
    assert [(s.image, s.good) for s in samples] == [("images/a.png", False),
                                                    ("images/b.png", True),
                                                    ("images/c.png", True)]
    assert np.asarray(samples[0].read_mask(tmp_path)).sum() > 0


def test_coco_split_by_file_names(tmp_path: Path) -> None:
    for split in ("train", "val"):
        _gray(tmp_path / "images" / split / f"{split}.png")
        (tmp_path / "annotations").mkdir(exist_ok=True)
        (tmp_path / "annotations" / f"instances_{split}.json").write_text(json.dumps({
            "images": [{"id": 1, "file_name": f"{split}.png", "width": 20, "height": 10}],
            "categories": [{"id": 1, "name": "dent"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                             "segmentation": [[1, 1, 9, 1, 9, 8]]}]}))
    samples = _scan(tmp_path, "coco", {"annotations": "annotations/instances_*.json",
                                       "images": "images"})
    assert [(s.image, s.split) for s in samples] == [("images/train/train.png", "train"),
                                                     ("images/val/val.png", "test")]
    (tmp_path / "annotations" / "instances_val.json").rename(tmp_path / "annotations" /
                                                             "instances_extra.json")
    with pytest.raises(UserError, match="cannot tell the split of .*instances_extra.json"):
        _scan(tmp_path, "coco", {"annotations": "annotations/*.json", "images": "images"})


def test_labelme_problems_shape_types_and_empty_json(tmp_path: Path) -> None:
    _gray(tmp_path / "a.png")
    _gray(tmp_path / "b.png")

    def doc(image: str, shapes: list, size: tuple[int, int] = (20, 10)) -> str:
        return json.dumps({"shapes": shapes, "imagePath": image, "imageData": None,
                           "imageWidth": size[0], "imageHeight": size[1]})

    poly = {"label": "dent", "points": [[1, 1], [9, 1], [9, 8]], "shape_type": "polygon"}
    rect = {"label": "chip", "points": [[12, 2], [16, 6]], "shape_type": "rectangle"}
    circle = {"label": "pit", "points": [[5, 5], [5, 8]], "shape_type": "circle"}
    (tmp_path / "a.json").write_text(doc("a.png", [poly, rect, circle]))
    (tmp_path / "b.json").write_text(doc("b.png", []))
    (tmp_path / "c.json").write_text(doc("c.png", [poly]))  # no image, no imageData
    (tmp_path / "d.json").write_text(doc("a.png", [poly], (30, 10)))
    (tmp_path / "e.json").write_text(doc("a.png", [{**poly, "points": [[1, 1], [3, 3]]}]))
    with pytest.raises(UserError) as err:
        _scan(tmp_path, "labelme", {"annotations": "."})
    text = str(err.value)
    assert "3 problem(s)" in text
    for part in ("c.json: image c.png not found and no imageData",
                 "d.json: the image is 20x10 but the JSON says 30x10",
                 "e.json shape 0 (polygon 'dent'): a polygon with fewer than 3 points"):
        assert part in text
    for name in ("c", "d", "e"):
        (tmp_path / f"{name}.json").unlink()
    (tmp_path / "f.json").write_text(doc("a.png", [{**poly, "shape_type": "line"},
                                                   {**poly, "shape_type": "point"}]))
    with pytest.raises(UserError, match="not an area: line in 1 file.*point in 1 file"):
        _scan(tmp_path, "labelme", {"annotations": "."})
    (tmp_path / "f.json").unlink()
    a, b = _scan(tmp_path, "labelme", {"annotations": "."})
    assert (a.image, a.defect_type, a.labels, b.image, b.good) == (
        "a.png", "chip+dent+pit", ("dent", "chip", "pit"), "b.png", True)
    mask = np.asarray(a.read_mask(tmp_path))
    assert mask[2:6, 12:16].all() and mask[:, 17:].sum() == 0 and mask[5, 5] == 1


def test_params_check_the_label_layouts() -> None:
    from mr2unet.config.params import check_known_keys, validate
    params = yaml.safe_load((REPO / "profiles" / "paper.yaml").read_text())
    params["data"].update(layout="yolo", source="directory", directory=str(REPO))
    with pytest.raises(UserError, match="data.yolo"):
        validate(params)
    params["data"]["yolo"] = {"dataset": "data.yaml"}
    validate(params)
    params["data"]["yolo"]["datset"] = "x"
    with pytest.raises(UserError, match="unknown key `data.yolo.datset`"):
        check_known_keys(params)


# ------------------------------------------------------ the stages: directory, archive

def _stage(stage: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "pipeline" / stage), "--params",
                           "params.yaml"], cwd=cwd, capture_output=True, text=True, timeout=300)


def _project(tmp_path: Path, data: dict) -> Path:
    params = yaml.safe_load((REPO / "profiles" / "paper.yaml").read_text())
    params["data"].update(check_counts=False, sha256=None, size_bytes=None, **data)
    params["prepare"]["image_size"] = 32
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    return project


def _set_data(project: Path, **data: object) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"].update(data)
    (project / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.mark.slow
def test_stages_read_yolo_coco_and_labelme_from_archives_and_directories(
        neu: tuple, tmp_path: Path) -> None:
    images, masks = neu
    few = dict(list(images.items())[:40])
    write_yolo(few, masks, tmp_path / "parts" / "export", {k: ("train", "val")[i % 2]
                                                           for i, k in enumerate(few)},
               NEU_NAMES)
    with tarfile.open(tmp_path / "parts.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "parts" / "export", arcname="export")
    project = _project(tmp_path, {"source": "archive", "archive": str(tmp_path / "parts.tar.gz"),
                                  "layout": "yolo", "yolo": {"dataset": "export/data.yaml"}})
    for stage in ("download.py", "prepare.py"):
        result = _stage(stage, project)
        assert result.returncode == 0, result.stderr
    assert "prepared 40 images: 20 train / 20 test" in result.stdout
    summary = json.loads((project / "data/prepared/summary.json").read_text())
    assert summary["labels"]["layout"] == "yolo" and list(summary["per_category"]) == ["parts"]
    # LabelMe from a directory
    write_labelme(few, masks, tmp_path / "lm", NEU_NAMES)
    _set_data(project, source="directory", directory=str(tmp_path / "lm"), layout="labelme",
              labelme={"annotations": "."})
    for stage in ("download.py", "prepare.py"):
        result = _stage(stage, project)
        assert result.returncode == 0, result.stderr
    assert "prepared 40 images: 32 train / 8 test" in result.stdout
    # a broken set fails in download, listing the problem, without a traceback
    (tmp_path / "lm" / f"{next(iter(few))}.jpg").rename(tmp_path / "moved.jpg")
    broken = _stage("download.py", project)
    assert broken.returncode == 2 and "not found and no imageData" in broken.stderr
    assert "Traceback" not in broken.stderr
    # COCO from an archive: two files, their names the split (no test: val is the test)
    for split, part in (("train", list(few)[:25]), ("val", list(few)[25:])):
        chosen = {k: few[k] for k in part}
        (tmp_path / "cc" / "images").mkdir(parents=True, exist_ok=True)
        for image in chosen.values():
            (tmp_path / "cc" / "images" / image.name).symlink_to(image)
        (tmp_path / "cc" / f"instances_{split}.json").write_text(json.dumps(
            coco_file(chosen, masks, NEU_NAMES, "polygons")))
    with tarfile.open(tmp_path / "cc.tar", "w", dereference=True) as tar:
        tar.add(tmp_path / "cc", arcname=".")  # as `tar -C cc .` writes it: ./images/...
    _set_data(project, source="archive", archive=str(tmp_path / "cc.tar"), layout="coco",
              coco={"annotations": "instances_*.json", "images": "images"})
    for stage in ("download.py", "prepare.py"):
        result = _stage(stage, project)
        assert result.returncode == 0, result.stderr
    assert "prepared 40 images: 25 train / 15 test" in result.stdout


# ----------------------------------------------------- slow: dvc repro through the report

def _repro_from(export: Path, data: dict, tmp_path: Path) -> dict:
    from helpers import DVC, TINY, project_copy, run
    project = project_copy(tmp_path / "project", {
        **TINY, "tracking": {"enabled": False},
        "data": {"source": "directory", "directory": str(export), "check_counts": False,
                 **data},
        "prepare": {"image_size": 32},
        "train": {**TINY["train"], "models": ["unet"], "epochs": 2}})
    run([DVC, "repro"], project, timeout=900)
    assert (project / "reports" / "report.html").is_file()
    assert (project / "metrics" / "unet.json").is_file()
    return json.loads((project / "data/prepared/summary.json").read_text())


@pytest.mark.slow
def test_repro_from_a_yolo_export(neu: tuple, tmp_path: Path) -> None:
    images, masks = neu
    few = dict(list(images.items())[:40])
    write_yolo(few, masks, tmp_path / "steel", {k: ("train", "val")[i % 4 == 0]
                                                for i, k in enumerate(few)}, NEU_NAMES)
    summary = _repro_from(tmp_path / "steel", {"layout": "yolo",
                                               "yolo": {"dataset": "data.yaml"}}, tmp_path)
    assert (summary["train"], summary["test"]) == (30, 10)
    assert summary["labels"]["layout"] == "yolo" and list(summary["per_category"]) == ["steel"]


@pytest.mark.slow
def test_repro_from_a_coco_export(neu: tuple, tmp_path: Path) -> None:
    images, masks = neu
    export = tmp_path / "steel"
    for split, part in (("train", list(images)[:30]), ("val", list(images)[30:40])):
        chosen = {k: images[k] for k in part}
        (export / "images" / split).mkdir(parents=True)
        for image in chosen.values():
            (export / "images" / split / image.name).symlink_to(image)
        (export / "annotations").mkdir(exist_ok=True)
        (export / "annotations" / f"instances_{split}.json").write_text(json.dumps(
            coco_file(chosen, masks, NEU_NAMES, "rle")))
    summary = _repro_from(export, {"layout": "coco", "coco": {
        "annotations": "annotations/instances_*.json", "images": "images"}}, tmp_path)
    assert (summary["train"], summary["test"]) == (30, 10)
    assert summary["labels"]["layout"] == "coco"


def test_images_outside_the_data_set_are_a_problem_not_a_crash(tmp_path: Path) -> None:
    _gray(tmp_path / "elsewhere" / "a.png")
    root = tmp_path / "set"
    root.mkdir()
    (root / "i.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 10}],
        "categories": [{"id": 1, "name": "dent"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                         "segmentation": [[1, 1, 9, 1, 9, 8]]}]}))
    with pytest.raises(UserError, match="lies outside the data set's root"):
        _scan(root, "coco", {"annotations": "i.json", "images": "../elsewhere"})
    (root / "data.yaml").write_text("train: ../elsewhere\nnames: [dent]\n")
    with pytest.raises(UserError, match=r"split train: image .*a.png not found under"):
        layouts.scan(root, DataLayout.from_params({"layout": "yolo", "yolo": {
            "dataset": "data.yaml"}}), ["x"])


def test_inspect_reads_a_label_layout(neu: tuple, tmp_path: Path) -> None:
    """`mr2unet inspect` measures drawn masks and embedded images like any other."""
    from mr2unet.data.inspect import inspect
    images, masks = neu
    few = dict(list(images.items())[:12])
    write_labelme(few, masks, tmp_path / "lm", NEU_NAMES, embed={next(iter(few))})
    layout = DataLayout.from_params({"layout": "labelme", "labelme": {"annotations": "lm"}})
    report = inspect(tmp_path, layout, None, 64, progress=False)
    assert report["counts"] == {"images": 12, "defective": 12, "good": 0}
    assert report["mask_values"] == [0, 1]
