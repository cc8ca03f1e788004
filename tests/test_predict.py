"""``mr2unet predict``: real MVTec images, odd formats, broken files, registry URIs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import RedThreshold
from PIL import Image

from mr2unet.cli import main
from mr2unet.data.prepare import resize_image
from mr2unet.deploy import predict
from mr2unet.deploy.predict import (
    LoadedModel,
    colour_map,
    find_images,
    load_predictor,
    predict_images,
    read_rgb,
)
from mr2unet.models import build_model
from mr2unet.models.checkpoint import save_model

BIN = Path(sys.executable).parent
BOTTLES = ("bottle/test/broken_large/000.png", "bottle/test/contamination/001.png")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "unet.pt"
    save_model(path, build_model("unet", base_width=4), "unet", {"base_width": 4}, 64)
    return path


def red_threshold_mask(path: Path, image_size: int) -> np.ndarray:
    """What ``predict`` must write for RedThreshold: the red channel of the image at the
    model's size above 127.5 (logit difference red/255 - 0.5 > 0), resized back (nearest)."""
    rgb = read_rgb(path)
    small = (resize_image(rgb, image_size)[..., 0] > 127.5).astype(np.uint8) * np.uint8(255)
    return np.asarray(Image.fromarray(small).resize(rgb.size, Image.Resampling.NEAREST))


def test_real_bottles_odd_formats_and_broken_files(checkpoint: Path, tmp_path: Path,
                                                   bottle_tar: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    """The checkpoint is loaded as given, then its network replaced by RedThreshold,
    whose masks are known: each odd format carries a red-enough region of its own."""
    real_loader = predict.load_predictor

    def known_network(*args: Any) -> LoadedModel:
        loaded = real_loader(*args)
        return LoadedModel(RedThreshold(), loaded.image_size, loaded.source, loaded.resize)

    monkeypatch.setattr(predict, "load_predictor", known_network)
    inputs = tmp_path / "in"
    inputs.mkdir()
    with tarfile.open(bottle_tar) as tar:
        for name in BOTTLES:
            (inputs / name.replace("/", "_")).write_bytes(tar.extractfile(name).read())
    gray = np.full((90, 70), 50, np.uint8)
    gray[:, :35] = 200  # left half red enough (200 > 127.5)
    Image.fromarray(gray).save(inputs / "gray.png")
    rgba = Image.new("RGBA", (33, 21), (10, 200, 30, 100))
    rgba.paste((250, 0, 0, 100), (0, 0, 33, 10))  # top 10 rows red; alpha is dropped
    rgba.save(inputs / "rgba.png")
    deep = np.full((17, 19), 10000, np.uint16)  # 10000 / 257 -> 39
    deep[9:] = 40000  # -> 156: bottom rows defect
    Image.fromarray(deep).save(inputs / "deep.tif")
    (inputs / "broken.png").write_bytes(b"not an image")
    (inputs / "notes.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "out"

    code = main(["predict", "--model", str(checkpoint), str(inputs), str(tmp_path / "missing.jpg"),
                 "--out", str(out), "--batch-size", "2", "--device", "cpu"])
    assert code == 1
    printed = capsys.readouterr().out
    assert "of 5 images" in printed and "2 failed" in printed
    assert "broken.png" in printed and "missing.jpg" in printed
    expected = {"bottle_test_broken_large_000": (900, 900), "bottle_test_contamination_001":
                (900, 900), "gray": (70, 90), "rgba": (33, 21), "deep": (19, 17)}
    masks = {}
    for stem, size in expected.items():
        mask, tinted = Image.open(out / f"{stem}_mask.png"), Image.open(out / f"{stem}_overlay.png")
        assert mask.size == size and tinted.size == size and tinted.mode == "RGB"
        source = next(inputs.glob(f"{stem}.*"))
        masks[stem] = np.asarray(mask)
        assert np.array_equal(masks[stem], red_threshold_mask(source, 64)), stem
    assert len(list(out.iterdir())) == 2 * len(expected)
    # The regions, away from their edges (a model pixel is up to 2.8 image pixels wide)
    assert (masks["gray"][:, :32] == 255).all() and (masks["gray"][:, 38:] == 0).all()
    assert (masks["rgba"][:8] == 255).all() and (masks["rgba"][12:] == 0).all()
    assert (masks["deep"][:8] == 0).all() and (masks["deep"][10:] == 255).all()
    for stem in expected:
        if stem.startswith("bottle"):  # real images: some of each, not a constant mask
            assert 0 < masks[stem].mean() < 255, stem


def test_sixteen_bit_and_rgba_inputs_become_8_bit_rgb(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 5), 40000, np.uint16)).save(tmp_path / "deep.png")
    Image.new("RGBA", (3, 2), (10, 200, 30, 0)).save(tmp_path / "clear.png")
    assert np.asarray(read_rgb(tmp_path / "deep.png")).tolist()[0][0] == [156, 156, 156]
    assert np.asarray(read_rgb(tmp_path / "clear.png")).tolist()[0][0] == [10, 200, 30]


def test_masks_come_back_at_the_original_size(tmp_path: Path) -> None:
    image = np.zeros((90, 70, 3), np.uint8)
    image[:, :35, 0] = 255  # the left half is red: RedThreshold calls it a defect
    Image.fromarray(image).save(tmp_path / "half.png")
    model = LoadedModel(RedThreshold(), image_size=32, source="test")
    result = predict_images(model, [tmp_path / "half.png"], tmp_path / "out")
    assert result.written == [tmp_path / "half.png"] and not result.failed
    mask = np.asarray(Image.open(tmp_path / "out" / "half_mask.png"))
    assert mask.shape == (90, 70)
    assert (mask[:, :33] == 255).all() and (mask[:, 38:] == 0).all()
    tinted = np.asarray(Image.open(tmp_path / "out" / "half_overlay.png"))
    assert tinted[0, 0].tolist() == [240, 18, 18]  # 40 % red input + 60 % tint
    assert tinted[0, 69].tolist() == [0, 0, 0]  # untouched


@pytest.mark.parametrize("resize", ["squash", "pad"])
def test_non_square_masks_keep_size_aspect_and_place(tmp_path: Path, resize: str) -> None:
    """A 200x50 image with a red (defect) rectangle at x 120-160, y 10-30, and a red strip
    along its top edge: the mask comes back 200x50 with the defect where the input has
    it, in both modes. In pad mode the replicated red edge fills the padding above, where
    the network calls it a defect; cropping the padding off keeps it out of the mask."""
    image = np.zeros((50, 200, 3), np.uint8)
    image[10:30, 120:160, 0] = 255
    image[0:4, :, 0] = 255
    Image.fromarray(image).save(tmp_path / "long.png")
    model = LoadedModel(RedThreshold(), image_size=64, source="test", resize=resize)
    predict_images(model, [tmp_path / "long.png"], tmp_path / "out")
    mask = np.asarray(Image.open(tmp_path / "out" / "long_mask.png")) > 0
    truth = image[..., 0] > 0
    assert mask.shape == (50, 200)
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.75, iou  # a model pixel is 3.125 source pixels wide
    near = np.zeros_like(truth)  # the defects grown by the model's pixel size (3.125 px)
    near[0:8, :] = near[6:34, 116:164] = True
    assert not mask[~near].any()


def test_resize_mode_travels_with_the_model_file(tmp_path: Path) -> None:
    net = build_model("unet", base_width=4)
    save_model(tmp_path / "pad.pt", net, "unet", {"base_width": 4}, 64, resize="pad")
    save_model(tmp_path / "meta.pt", net, "unet", {"base_width": 4}, 64, meta={"resize": "pad"})
    save_model(tmp_path / "plain.pt", net, "unet", {"base_width": 4}, 64)
    payload = torch.load(tmp_path / "plain.pt", weights_only=True)
    del payload["resize"]  # a model file from before the field existed
    torch.save(payload, tmp_path / "old.pt")
    modes = {name: load_predictor(str(tmp_path / f"{name}.pt")).resize
             for name in ("pad", "meta", "plain", "old")}
    assert modes == {"pad": "pad", "meta": "pad", "plain": "squash", "old": "squash"}
    Image.fromarray(np.zeros((30, 90, 3), np.uint8)).save(tmp_path / "wide.png")
    assert main(["predict", "--model", str(tmp_path / "pad.pt"), str(tmp_path / "wide.png"),
                 "--out", str(tmp_path / "out"), "--device", "cpu", "--probabilities"]) == 0
    for name in ("mask", "overlay", "prob", "heatmap"):
        assert Image.open(tmp_path / "out" / f"wide_{name}.png").size == (90, 30), name


def _argmax_mask(model: LoadedModel, path: Path) -> np.ndarray:
    """The mask as `predict` wrote it before --threshold: argmax, resized back (nearest)."""
    from mr2unet.data.transforms import to_input

    img = read_rgb(path)
    small = resize_image(img, model.image_size)
    with torch.inference_mode():
        logits = model.module(to_input(torch.from_numpy(small[None].copy())))
    mask = logits.argmax(1)[0].to(torch.uint8).numpy() * np.uint8(255)
    return np.asarray(Image.fromarray(mask).resize(img.size, Image.Resampling.NEAREST))


def test_threshold_half_writes_exactly_the_argmax_masks(tmp_path: Path) -> None:
    from mr2unet.data.transforms import to_input

    rng = np.random.default_rng(3)
    for n, (h, w) in enumerate([(90, 70), (64, 64), (41, 130)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            tmp_path / f"img{n}.png")
    # A random network whose head is shifted so that about half of the pixels are defects:
    # the logit differences are then tiny (~1e-3), a hard case for "exactly the argmax".
    torch.manual_seed(0)
    net = build_model("unet", base_width=4).eval()
    small = np.stack([resize_image(read_rgb(tmp_path / f"img{n}.png"), 64) for n in range(3)])
    with torch.no_grad():
        logits = net(to_input(torch.from_numpy(small)))
        net.head.bias[1] -= (logits[:, 1] - logits[:, 0]).median()
    checkpoint = tmp_path / "unet.pt"
    save_model(checkpoint, net, "unet", {"base_width": 4}, 64)
    model = load_predictor(str(checkpoint))
    for args in ([], ["--threshold", "0.5"]):
        out = tmp_path / f"out{len(args)}"
        assert main(["predict", "--model", str(checkpoint), *map(str, sorted(
            tmp_path.glob("img*.png"))), "--out", str(out), "--device", "cpu", *args]) == 0
        for n in range(3):
            written = np.asarray(Image.open(out / f"img{n}_mask.png"))
            expected = _argmax_mask(model, tmp_path / f"img{n}.png")
            assert np.array_equal(written, expected), (args, n)
            assert 0 < (written > 0).sum() < written.size  # neither empty nor full


def test_probability_maps_heatmaps_and_threshold(tmp_path: Path) -> None:
    image = np.zeros((90, 70, 3), np.uint8)
    image[:, :35, 0] = 255  # RedThreshold: logit difference +0.5 on the left, -0.5 right
    Image.fromarray(image).save(tmp_path / "half.png")
    model = LoadedModel(RedThreshold(), image_size=32, source="test")
    left, right = 1 / (1 + np.exp(-0.5)), 1 / (1 + np.exp(0.5))  # 0.622, 0.378
    for threshold, left_is_defect in ((0.6, True), (0.65, False)):
        out = tmp_path / f"t{threshold}"
        predict_images(model, [tmp_path / "half.png"], out, threshold=threshold,
                       probabilities=True)
        mask = np.asarray(Image.open(out / "half_mask.png"))
        assert (mask[:, :33] == (255 if left_is_defect else 0)).all()
        assert (mask[:, 38:] == 0).all()
        prob = Image.open(out / "half_prob.png")
        assert prob.mode == "L" and prob.size == (70, 90)
        levels = np.asarray(prob)
        assert (levels[:, :30] == round(255 * left)).all()  # 159
        assert (levels[:, 40:] == round(255 * right)).all()  # 96
        assert np.abs(np.diff(levels.astype(int), axis=1)).max() < 63  # bilinear: no jump
        heat = np.asarray(Image.open(out / "half_heatmap.png"))
        assert heat.shape == (90, 70, 3)
        # The right half is black: the heatmap there is half the colour of level 96.
        assert heat[0, 69].tolist() == np.round(colour_map(np.array([96]))[0] / 2).tolist()
    plain = tmp_path / "plain"
    predict_images(model, [tmp_path / "half.png"], plain)
    assert sorted(p.name for p in plain.iterdir()) == ["half_mask.png", "half_overlay.png"]


def test_output_names_keep_folders_and_never_collide(tmp_path: Path) -> None:
    for rel in ("d/a/000.png", "d/b/000.png", "d/b/000.jpg", "x/img.png", "y/img.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).touch()
    jobs = find_images([tmp_path / "d", tmp_path / "x/img.png", tmp_path / "y/img.png"],
                       tmp_path / "out")
    assert [j.out_stem.relative_to(tmp_path / "out").as_posix() for j in jobs] == [
        "a/000", "b/000", "b/000-2", "img", "img-2"]


def test_usage_errors_exit_2(checkpoint: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["predict", "--model", str(checkpoint), str(tmp_path / "empty"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "no images in" in capsys.readouterr().err
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    assert main(["predict", "--model", str(tmp_path / "nope.pt"), str(tmp_path / "x.png"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "nope.pt not found: pass a .pt file" in capsys.readouterr().err
    assert main(["predict", "--model", "models:/mr2unet-best@champion", str(tmp_path / "x.png"),
                 "--out", str(tmp_path / "o"),
                 "--tracking-uri", f"sqlite:///{tmp_path}/none.db"]) == 2
    assert "no MLflow store at" in capsys.readouterr().err
    assert main(["predict", "--model", str(checkpoint), str(tmp_path / "x.png"),
                 "--out", str(tmp_path / "o"), "--device", "gpu0"]) == 2
    assert "--device gpu0: not a usable device" in capsys.readouterr().err
    for bad in ("1.5", "0", "1", "nan", "half"):
        with pytest.raises(SystemExit) as exit_info:
            main(["predict", "--model", str(checkpoint), str(tmp_path / "x.png"),
                  "--out", str(tmp_path / "o"), "--threshold", bad])
        assert exit_info.value.code == 2
        assert "--threshold: must be a number strictly between 0 and 1" in \
            capsys.readouterr().err, bad
    assert not (tmp_path / "none.db").exists()


@pytest.mark.slow
def test_help_documents_the_command() -> None:
    result = subprocess.run([str(BIN / "mr2unet"), "predict", "--help"], capture_output=True,
                            text=True, check=True)
    for text in ("--model", "IMAGE_OR_DIR", "--out", "--batch-size", "models:/", "_mask.png",
                 "exit codes", "--threshold", "--probabilities", "_prob.png", "_heatmap.png"):
        assert text in result.stdout, text


@pytest.fixture
def mlflow_globals(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """MLflow, with its process-wide URIs (and the env vars it sets) reset afterwards."""
    mlflow = pytest.importorskip("mlflow")
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(name, "")  # monkeypatch restores the original afterwards
        monkeypatch.delenv(name)
    yield mlflow
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def half_defect_unet(seed: int, image: Path, path: Path, resize: str = "squash") -> Path:
    """A random U-Net (seeded) whose head is shifted so that about half of ``image``'s
    pixels are defects, saved at ``path``: masks that tell two such networks apart."""
    from mr2unet.data.transforms import to_input

    torch.manual_seed(seed)
    net = build_model("unet", base_width=4).eval()
    small = resize_image(read_rgb(image), 64, resize)
    with torch.no_grad():
        logits = net(to_input(torch.from_numpy(small[None].copy())))
        net.head.bias[1] -= (logits[:, 1] - logits[:, 0]).median()
    save_model(path, net, "unet", {"base_width": 4}, 64, resize=resize)
    return path


@pytest.mark.slow
def test_registry_and_run_uris(tmp_path: Path, mlflow_globals: Any,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Two versions logged the way training logs them (pyfunc + checkpoint artifact): each
    URI writes exactly the masks of its own version's checkpoint."""
    mlflow = mlflow_globals
    from mr2unet.tracking.pyfunc import log_segmentation_model, signature
    from mr2unet.tracking.registry import set_aliases

    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (50, 60, 3), np.uint8)).save(
        tmp_path / "x.png")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri, uri)
    experiment = client.create_experiment("t", str(tmp_path / "artifacts"))
    mlflow.set_tracking_uri(uri)
    versions = []
    for seed in (1, 2):
        checkpoint = half_defect_unet(seed, tmp_path / "x.png", tmp_path / f"unet{seed}.pt")
        with mlflow.start_run(experiment_id=experiment) as run:
            info = log_segmentation_model(checkpoint)
        version = mlflow.register_model(info.model_uri, "mr2unet-unet")
        versions.append({"checkpoint": checkpoint, "info": info, "run_id": run.info.run_id,
                         "version": str(version.version)})
    assert [v["version"] for v in versions] == ["1", "2"]
    first, second = versions
    assert mlflow.models.get_model_info(second["info"].model_uri).signature == signature()
    # The champion is version 1, not the latest.
    set_aliases({"unet": {"tracking": True, "tracking_uri": uri, "run_id": first["run_id"],
                          "registered_model": "mr2unet-unet", "model_version": "1"}},
                {"unet": 0.5}, "mr2unet-")
    # The URI given on the command line wins over MLflow's process-wide one.
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/other.db")
    mlflow.set_registry_uri(f"sqlite:///{tmp_path}/other.db")

    def mask_bytes(model: str, out: str) -> bytes:
        assert main(["predict", "--model", model, "x.png", "--out", out,
                     "--tracking-uri", uri]) == 0, model
        return (tmp_path / out / "x_mask.png").read_bytes()

    own = [mask_bytes(str(v["checkpoint"]), f"pt{n}") for n, v in enumerate(versions)]
    assert own[0] != own[1]  # the two versions' masks differ: the comparisons can fail
    mask = np.asarray(Image.open(tmp_path / "pt0" / "x_mask.png"))
    assert mask.shape == (50, 60) and 0 < mask.mean() < 255
    for n, (model_uri, version) in enumerate((
            ("models:/mr2unet-best@champion", 0), ("models:/mr2unet-unet@champion", 0),
            ("models:/mr2unet-unet/1", 0), ("models:/mr2unet-unet/2", 1),
            (first["info"].model_uri, 0),
            (f"runs:/{first['run_id']}/model", 0), (f"runs:/{second['run_id']}/model", 1))):
        assert mask_bytes(model_uri, f"o{n}") == own[version], model_uri
    assert not (tmp_path / "other.db").exists()  # nothing looked in the process-wide store


@pytest.mark.slow
def test_the_pyfunc_has_type_hints_and_keeps_its_explicit_signature(tmp_path: Path) -> None:
    """Logging and loading the pyfunc shows none of MLflow's type-hint warnings (the
    demo's first run shows no warnings that are not the user's), and the signature stays
    the explicit one (params only: the model takes tensors and encoded images of any size,
    issue #35); a fresh interpreter, as the warning comes at class definition."""
    script = tmp_path / "log.py"
    script.write_text(textwrap.dedent("""
        import json, sys, warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import mlflow
            import numpy as np
            from mr2unet.models import build_model
            from mr2unet.models.checkpoint import save_model
            from mr2unet.tracking.pyfunc import log_segmentation_model

            save_model("unet.pt", build_model("unet", base_width=4), "unet",
                       {"base_width": 4}, 32)
            mlflow.set_tracking_uri("sqlite:///mlflow.db")
            with mlflow.start_run():
                info = log_segmentation_model("unet.pt")
            model = mlflow.pyfunc.load_model(info.model_uri)
            masks = model.predict(np.zeros((2, 32, 32, 3), np.uint8))
        json.dump({"warnings": [str(w.message) for w in caught
                                if issubclass(w.category, UserWarning)],
                   "signature": model.metadata.signature.to_dict(),
                   "shape": list(masks.shape), "dtype": str(masks.dtype)}, sys.stdout)
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert [w for w in data["warnings"] if "type hint" in w.lower()] == []
    assert (data["shape"], data["dtype"]) == ([2, 32, 32], "uint8")
    assert data["signature"]["inputs"] is None and data["signature"]["outputs"] is None
    assert {p["name"]: p["default"] for p in json.loads(data["signature"]["params"])} == {
        "output": "mask", "threshold": 0.5, "encoding": "array"}


def test_the_pyfunc_takes_every_input_form_like_predict_and_refuses_bad_input(
        tmp_path: Path) -> None:
    """In process (the served model's code without the server, issue #35): frames of two
    sizes as a tensor, base64 PNG/JPEG in each accepted form, masks and probabilities as
    arrays or PNGs, all equal to what ``mr2unet predict`` writes; bad input is one
    INVALID_PARAMETER_VALUE error each."""
    import base64
    import io
    from types import SimpleNamespace

    import pandas as pd
    from mlflow.exceptions import MlflowException

    from mr2unet.tracking.pyfunc import MAX_FRAME_SIDE, SegmentationModel

    rng = np.random.default_rng(3)
    rgbs = {"wide": rng.integers(0, 256, (40, 90, 3), dtype=np.uint8),
            "tall": rng.integers(0, 256, (70, 30, 3), dtype=np.uint8)}
    encoded = {}
    for name, rgb in rgbs.items():
        Image.fromarray(rgb).save(tmp_path / f"{name}.png")
        encoded[name] = base64.b64encode((tmp_path / f"{name}.png").read_bytes()).decode()
    path = tmp_path / "pad.pt"  # a pad-mode model: half of the wide frame a defect
    half_defect_unet(0, tmp_path / "wide.png", path, resize="pad")
    assert main(["predict", "--model", str(path), str(tmp_path / "wide.png"),
                 str(tmp_path / "tall.png"), "--out", str(tmp_path / "out"),
                 "--probabilities", "--device", "cpu"]) == 0
    written = {name: (tmp_path / "out" / f"{name}_mask.png").read_bytes() for name in rgbs}
    masks = {name: np.asarray(Image.open(io.BytesIO(b))) // 255 for name, b in written.items()}
    assert all(0 < m.mean() < 1 for m in masks.values())
    served = SegmentationModel()
    served.load_context(SimpleNamespace(artifacts={"checkpoint": str(path)}))

    tensor = served.predict(None, rgbs["wide"][None].astype(np.int64))  # as JSON arrives
    assert tensor.shape == (1, 40, 90) and np.array_equal(tensor[0], masks["wide"])
    both = [encoded["wide"], encoded["tall"]]
    for form in ({"image": both}, {"image": np.array(both)}, pd.DataFrame({"image": both}),
                 np.array(both), both, {"image": [f"data:image/png;base64,{both[0]}",
                                                  both[1]]}):
        answer = served.predict(None, form)
        assert isinstance(answer, list) and len(answer) == 2  # two sizes: a list
        assert np.array_equal(answer[0], masks["wide"]) and np.array_equal(answer[1],
                                                                           masks["tall"])
    pngs = served.predict(None, {"image": both}, params={"encoding": "png"})
    assert [base64.b64decode(p) for p in pngs] == [written["wide"], written["tall"]]
    probs = served.predict(None, {"image": both[:1]},
                           params={"output": "probabilities", "encoding": "png"})
    assert base64.b64decode(probs[0]) == (tmp_path / "out" / "wide_prob.png").read_bytes()
    jpeg = io.BytesIO()
    Image.fromarray(rgbs["tall"]).save(jpeg, format="JPEG")
    assert served.predict(None, {"image": [base64.b64encode(jpeg.getvalue()).decode()]}
                          ).shape == (1, 70, 30)

    too_large = io.BytesIO()
    Image.new("L", (4, MAX_FRAME_SIDE + 1)).save(too_large, format="PNG")
    for bad, needle in (
            ({"image": [base64.b64encode(b"GIF? no").decode()]}, "not a readable image"),
            ({"image": ["not base64 !"]}, "not base64"),
            ({"image": []}, "no frames"), ([], "no frames"),
            ({"image": [base64.b64encode(too_large.getvalue()).decode()]},
             f"4x{MAX_FRAME_SIDE + 1} px, larger than the limit"),
            (np.zeros((1, MAX_FRAME_SIDE + 1, 2, 3), np.uint8), "larger than the limit"),
            (np.full((1, 4, 4, 3), 256), "integers 0-255"),
            (np.zeros((1, 4, 4, 3), np.float32), "integers 0-255"),
            (np.zeros((4, 4, 3), np.uint8), "(N, H, W, 3)"),
            ({"pixels": [1]}, "'image'")):
        with pytest.raises(MlflowException, match=re.escape(needle)) as caught:
            served.predict(None, bad)
        assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
    with pytest.raises(MlflowException, match="params.encoding must be one of array, png"):
        served.predict(None, {"image": both}, params={"encoding": "jpeg"})
