"""A user's own data as it comes: image formats, label maps, the mvtec / folder / visa
layouts, one error listing every unpaired file, defect-free images in the splits, and the
real NEU-Seg archive (../shared) from its archive to prepared arrays with no conversion."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from mr2unet.data import layouts
from mr2unet.data.folder import FolderLayout
from mr2unet.data.images import defect_pixels, to_rgb
from mr2unet.data.layouts import DataLayout
from mr2unet.data.prepare import PrepareConfig, prepare
from mr2unet.data.prepared import load_split
from mr2unet.errors import UserError

REPO = Path(__file__).resolve().parents[1]
NEU_SHA256 = "3da91690a708077f3b61e03a5b9a641562f8d8e8f2653f4df8a56c96923992c1"
SIZE = (40, 24)  # width x height of the generated images: not square


def _image(rng: np.random.Generator, box: tuple[int, int, int, int]) -> np.ndarray:
    """A noisy grey image with a bright rectangle ``box`` (x0, y0, x1, y1)."""
    array = rng.integers(60, 100, (SIZE[1], SIZE[0], 3)).astype(np.uint8)
    x0, y0, x1, y1 = box
    array[y0:y1, x0:x1] = 240
    return array


def _mask(box: tuple[int, int, int, int], value: int) -> np.ndarray:
    mask = np.zeros((SIZE[1], SIZE[0]), np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = value
    return mask


def _save(array: np.ndarray, path: Path, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array)
    (img.convert(mode) if mode else img).save(path)


BOXES = [(2, 2, 12, 10), (20, 4, 36, 8), (5, 12, 15, 22), (25, 14, 38, 22), (8, 6, 30, 9),
         (1, 1, 6, 20)]
# (image suffix, image mode, mask value): JPEG, BMP, TIFF, PNG; 0/255, 0/1, label values
FORMATS = [(".jpg", "RGB", 255), (".BMP", "L", 1), (".tif", "RGB", 3), (".png", "RGBA", 2),
           (".jpeg", "RGB", 255), (".png", "L", 1)]


def write_folder_set(root: Path, good: int = 2) -> Path:
    """images/ + masks/ (masks named <stem>_mask.png), good/: the formats of FORMATS."""
    rng = np.random.default_rng(1)
    for i, (box, (suffix, mode, value)) in enumerate(zip(BOXES, FORMATS, strict=True)):
        _save(_image(rng, box), root / "images" / f"part{i}{suffix}", mode)
        _save(_mask(box, value), root / "masks" / f"part{i}_mask.png")
    for i in range(good):
        _save(_image(rng, (0, 0, 0, 0)), root / "good" / f"ok{i}.jpg")
    return root


def write_visa_set(root: Path) -> Path:
    """A VisA-shaped tree: two categories, JPEG images, PNG label masks, split_csv/."""
    rng = np.random.default_rng(2)
    for category in ("candle", "pcb1"):
        base = root / category / "Data"
        for i, box in enumerate(BOXES[:4]):
            _save(_image(rng, box), base / "Images" / "Anomaly" / f"{i:03d}.JPG")
            _save(_mask(box, 1 + i % 2), base / "Masks" / "Anomaly" / f"{i:03d}.png")
        for i in range(3):
            _save(_image(rng, (0, 0, 0, 0)), base / "Images" / "Normal" / f"{i:04d}.JPG")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("object,split,label,image,mask\n")
    return root


FOLDER = FolderLayout(images="images", masks="masks", category="parts", mask_suffix="_mask",
                      good="good")
CFG = PrepareConfig(image_size=16, test_fraction=0.34, seed=3)


def test_formats_and_label_maps_become_rgb_and_binary_masks(tmp_path: Path) -> None:
    root = write_folder_set(tmp_path / "set")
    summary = prepare(root, tmp_path / "out", CFG, layout=DataLayout("folder", FOLDER))
    assert summary["images"] == 6 and summary["mask_values"] == [0, 1, 2, 3, 255]
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert list(manifest["image"]) == [f"images/part{i}{s}" for i, (s, _, _) in
                                       enumerate(FORMATS)]
    for name in ("train", "test"):
        split = load_split(tmp_path / "out" / f"{name}.npz")
        assert split.images.dtype == np.uint8 and split.images.shape[1:] == (16, 16, 3)
        assert set(np.unique(split.masks)) == {0, 1}  # every label value became a defect
        # the bright box lies where the mask says, whatever the file format
        for image, mask in zip(split.images, split.masks, strict=True):
            assert image[mask == 1].mean() > 150 > image[mask == 0].mean()


def test_sixteen_bit_gray_keeps_its_contrast() -> None:
    gray = Image.fromarray(np.array([[0, 32896, 65535]], np.uint16))
    assert np.asarray(to_rgb(gray))[0, :, 0].tolist() == [0, 128, 255]


def test_label_map_and_palette_masks() -> None:
    labels = Image.fromarray(np.array([[0, 1, 2, 3]], np.uint8))
    assert defect_pixels(labels).tolist() == [[False, True, True, True]]
    palette = labels.convert("P")
    assert defect_pixels(palette).tolist() == [[False, True, True, True]]


def test_folder_layout_with_globs_and_good_images(tmp_path: Path) -> None:
    root = write_folder_set(tmp_path / "set", good=3)
    layout = FolderLayout(images="images/*.*", masks="masks/*_mask.png", category="parts",
                          mask_suffix="_mask", good="good/*.jpg")
    samples = layouts.scan(root, DataLayout("folder", layout), ["parts"], good=True)
    assert [s.good for s in samples] == [False] * 6 + [True] * 3
    assert samples[0].mask == "masks/part0_mask.png" and samples[-1].image == "good/ok2.jpg"


def test_split_lists_replace_the_seeded_split(tmp_path: Path) -> None:
    root = write_folder_set(tmp_path / "set", good=0)
    (root / "train.txt").write_text("part0\npart1\npart2\nimages/part3.tif\n")
    (root / "test.txt").write_text("part4\n")  # part5 is in neither list: left out
    layout = FolderLayout(images="images", masks="masks", mask_suffix="_mask",
                          split_lists={"train": "train.txt", "test": "test.txt"})
    prepare(root, tmp_path / "out", CFG, layout=DataLayout("folder", layout))
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert dict(zip(manifest["image"].str[7:12], manifest["split"], strict=True)) == {
        "part0": "train", "part1": "train", "part2": "train", "part3": "train",
        "part4": "test"}


def test_every_pairing_problem_is_listed_in_one_error(tmp_path: Path) -> None:
    root = write_folder_set(tmp_path / "set")
    (root / "masks" / "part1_mask.png").unlink()                      # image without mask
    _save(_mask(BOXES[0], 255), root / "masks" / "stray_mask.png")    # mask without image
    _save(np.zeros((5, 5), np.uint8), root / "masks" / "part2_mask.png")  # another size
    with pytest.raises(UserError) as err:
        layouts.scan(root, DataLayout("folder", FOLDER), ["parts"])
    message = str(err.value)
    assert "3 problem(s)" in message and "(4 defective image(s) paired)" in message
    assert "image images/part1.BMP has no mask" in message
    assert "mask masks/stray_mask.png has no image" in message
    assert "mask masks/part2_mask.png is 5x5 but its image images/part2.tif is 40x24" in message


def test_mvtec_layout_reads_jpeg_images_and_masks_with_the_images_stem(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    for i, box in enumerate(BOXES[:4]):
        _save(_image(rng, box), tmp_path / "tiles" / "test" / "crack" / f"{i:03d}.jpg")
        name = f"{i:03d}_mask.png" if i % 2 else f"{i:03d}.png"  # both namings
        _save(_mask(box, 255), tmp_path / "tiles" / "ground_truth" / "crack" / name)
    _save(_image(rng, (0, 0, 0, 0)), tmp_path / "tiles" / "test" / "good" / "000.bmp")
    samples = layouts.scan(tmp_path, DataLayout(), ["tiles"], good=True)
    assert [(s.image, s.mask) for s in samples] == [
        ("tiles/test/crack/000.jpg", "tiles/ground_truth/crack/000.png"),
        ("tiles/test/crack/001.jpg", "tiles/ground_truth/crack/001_mask.png"),
        ("tiles/test/crack/002.jpg", "tiles/ground_truth/crack/002.png"),
        ("tiles/test/crack/003.jpg", "tiles/ground_truth/crack/003_mask.png"),
        ("tiles/test/good/000.bmp", "")]


def test_visa_layout(tmp_path: Path) -> None:
    root = write_visa_set(tmp_path / "visa")
    layout = DataLayout("visa")
    assert layouts.choose_categories(root, layout, None) == ["candle", "pcb1"]
    summary = prepare(root, tmp_path / "out", PrepareConfig(image_size=16, good_images=1),
                      categories=["pcb1"], layout=layout)
    assert summary["images"] == 5 and summary["good_images"] == {"train": 1, "test": 0}
    assert summary["mask_values"] == [0, 1, 2]
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert manifest["image"].iloc[0] == "pcb1/Data/Images/Anomaly/000.JPG"
    assert manifest["mask"].iloc[0] == "pcb1/Data/Masks/Anomaly/000.png"
    with pytest.raises(UserError, match=r"data.categories \['wood'\] not found"):
        layouts.choose_categories(root, layout, ["wood"])


def test_visa_images_and_masks_that_do_not_pair_are_one_error(tmp_path: Path) -> None:
    root = write_visa_set(tmp_path / "visa")
    masks = root / "pcb1" / "Data" / "Masks" / "Anomaly"
    (masks / "001.png").unlink()                                # an image without its mask
    _save(_mask(BOXES[0], 1), masks / "stray.png")              # a mask without its image
    with pytest.raises(UserError) as err:
        layouts.scan(root, DataLayout("visa"), ["candle", "pcb1"])
    message = str(err.value)
    assert "2 problem(s)" in message and "(7 defective image(s) paired)" in message
    assert "image pcb1/Data/Images/Anomaly/001.JPG has no mask" in message
    assert "mask pcb1/Data/Masks/Anomaly/stray.png has no image" in message
    assert "needs a mask of the same stem" in message  # what to do


def _digest(folder: Path) -> str:
    return hashlib.sha256(b"".join((folder / n).read_bytes() for n in
                                   ("train.npz", "test.npz", "manifest.csv"))).hexdigest()


def test_good_images_join_the_splits_without_moving_a_defective_image(
        synthetic_raw: Path, tmp_path: Path) -> None:
    base = PrepareConfig(image_size=16)
    prepare(synthetic_raw, tmp_path / "none", base)
    with_zero = prepare(synthetic_raw, tmp_path / "zero", PrepareConfig(image_size=16,
                                                                         good_images=0))
    assert _digest(tmp_path / "none") == _digest(tmp_path / "zero")  # 0 is the paper's run
    assert "good_images" not in with_zero
    assert "good" not in pd.read_csv(tmp_path / "zero" / "manifest.csv").columns

    summary = prepare(synthetic_raw, tmp_path / "good", PrepareConfig(image_size=16,
                                                                       good_images=2))
    before = pd.read_csv(tmp_path / "none" / "manifest.csv")
    after = pd.read_csv(tmp_path / "good" / "manifest.csv")
    defective = after[after["good"] == 0].drop(columns="good").reset_index(drop=True)
    pd.testing.assert_frame_equal(defective, before)
    good = after[after["good"] == 1]
    # 2 of the 3 synthetic good images per category: 1 test (round(0.4 + 0.5)), 1 train
    assert good.groupby("category").size().tolist() == [2, 2, 2, 2]
    assert (good["split"] == "test").sum() == 4 and (good["mask"].isna()).all()
    assert summary["good_images"] == {"train": 4, "test": 4}
    test = load_split(tmp_path / "good" / "test.npz")
    is_good = (after.loc[after["split"] == "test", "good"] == 1).to_numpy()
    assert not test.masks[is_good].any() and test.masks[~is_good].any(axis=(1, 2)).all()
    assert set(test.defect_types[is_good]) == {"good"}


def test_the_bottle_samples_three_good_images(bottle_raw: Path, tmp_path: Path) -> None:
    summary = prepare(bottle_raw, tmp_path / "out", PrepareConfig(image_size=32,
                                                                   good_images="all"))
    assert summary["images"] == 66 and summary["good_images"] == {"train": 2, "test": 1}
    assert summary["mask_values"] == [0, 255]


@pytest.mark.slow
def test_neu_seg_goes_in_from_its_archive_with_no_conversion(neu_tar: Path,
                                                              tmp_path: Path) -> None:
    """The published NEU-Seg test split: JPEGs, PNG label maps 0-3, img_dir/ + ann_dir/."""
    params = yaml.safe_load((REPO / "profiles" / "paper.yaml").read_text())
    params["data"].update(
        source="archive", archive=str(neu_tar), sha256=NEU_SHA256, size_bytes=3418692,
        check_counts=False, layout="folder",
        folder={"category": "neu_seg", "images": "neu_seg/img_dir/test",
                "masks": "neu_seg/ann_dir/test"})
    params["prepare"]["image_size"] = 64
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = {}
    for stage in ("download.py", "prepare.py"):
        run = subprocess.run([sys.executable, str(REPO / "pipeline" / stage), "--params",
                              "params.yaml"], cwd=tmp_path, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr
        out[stage] = run.stdout
    assert "447 defective images paired with their masks" in out["download.py"]
    assert "prepared 447 images: 358 train / 89 test at 64 px" in out["prepare.py"]
    summary = json.loads((tmp_path / "data/prepared/summary.json").read_text())
    assert (summary["images"], summary["train"], summary["test"]) == (447, 358, 89)
    assert summary["mask_values"] == [0, 1, 2, 3] and summary["source_sizes"] == ["200x200"]
    test = load_split(tmp_path / "data/prepared/test.npz")
    assert test.images.shape == (89, 64, 64, 3) and set(np.unique(test.masks)) == {0, 1}
    # the median defect share of NEU-Seg is about 10 % of an image (../shared/README.md)
    share = np.median(test.masks.reshape(89, -1).mean(axis=1))
    assert 0.05 < share < 0.2


def test_folder_layout_needs_images_and_masks() -> None:
    with pytest.raises(UserError, match="data.folder.masks is not set"):
        DataLayout.from_params({"layout": "folder", "folder": {"images": "img"}})
    with pytest.raises(UserError, match="data.folder.images is not set"):
        DataLayout.from_params({"layout": "folder", "folder": None})
    with pytest.raises(UserError, match="data.layout 'voc'"):
        DataLayout("voc")


def _stage(stage: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "pipeline" / stage), "--params",
                           "params.yaml"], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_stages_read_a_folder_layout_directory_with_good_images(tmp_path: Path) -> None:
    root = write_folder_set(tmp_path / "set", good=3)
    params = yaml.safe_load((REPO / "profiles" / "paper.yaml").read_text())
    params["data"].update(source="directory", directory=str(root), check_counts=False,
                          layout="folder", folder={"category": "parts", "images": "images",
                                                   "masks": "masks", "mask_suffix": "_mask",
                                                   "good": "good"})
    params["prepare"].update(image_size=16, good_images="all")
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    download = _stage("download.py", project)
    assert download.returncode == 0, download.stderr
    assert "linked 6 defective images of parts" in download.stdout
    assert (project / "data/raw/good/ok2.jpg").read_bytes() == (root / "good/ok2.jpg").read_bytes()
    prep = _stage("prepare.py", project)
    assert prep.returncode == 0, prep.stderr
    assert "prepared 9 images: 7 train / 2 test at 16 px (squash), of them good: 2 train / " \
           "1 test" in prep.stdout
    # a broken set fails in download already, listing the problem, without a traceback
    (root / "masks" / "part3_mask.png").unlink()
    broken = _stage("download.py", project)
    assert broken.returncode == 2 and "image images/part3.png has no mask" in broken.stderr
    assert "Traceback" not in broken.stderr
