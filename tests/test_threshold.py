"""The validation split and the mask threshold chosen on it (issue #20, part 4)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import briefly_trained
from PIL import Image

from mr2unet.data.prepare import PrepareConfig, carve_validation, prepare
from mr2unet.data.prepared import load_split
from mr2unet.data.samples import Sample
from mr2unet.errors import UserError
from mr2unet.evaluation import threshold as thresholds
from mr2unet.evaluation.inference import evaluate, predict_maps
from mr2unet.models.checkpoint import read_checkpoint, save_model, stored_threshold
from mr2unet.models.inference import defect_mask


def samples(per_category: dict[str, int]) -> list[Sample]:
    return [Sample(c, "crack", f"{c}/test/crack/{i:03d}.png", f"{c}/gt/{i:03d}.png")
            for c, n in per_category.items() for i in range(n)]


# --------------------------------------------------------------------------- the split


def test_validation_is_carved_from_train_only_stratified_and_seeded() -> None:
    found = samples({"a": 10, "b": 3})
    splits = ["test", "test"] + ["train"] * 8 + ["test"] + ["train"] * 2
    assert carve_validation(found, splits, 0.0, 7) == splits  # 0: nothing moves
    carved = carve_validation(found, splits, 0.25, 7)
    # a: 8 train -> round(2.0) = 2 val; b: 2 train -> round(0.5) = 1 val, 1 left to train
    assert [carved[:10].count(s) for s in ("train", "val", "test")] == [6, 2, 2]
    assert [carved[10:].count(s) for s in ("train", "val", "test")] == [1, 1, 1]
    assert [c for c, s in zip(carved, splits, strict=True) if s == "test"] == ["test"] * 3
    assert carved == carve_validation(found, splits, 0.25, 7)
    assert carved != carve_validation(found, splits, 0.25, 8)


def test_prepare_keeps_the_test_split_and_writes_an_empty_val_at_zero(
        synthetic_raw: Path, tmp_path: Path) -> None:
    base = dict(image_size=16, good_images="all")
    plain = prepare(synthetic_raw, tmp_path / "plain", PrepareConfig(**base))
    carved = prepare(synthetic_raw, tmp_path / "val", PrepareConfig(**base, val_fraction=0.25))
    assert "val" not in plain and "val" not in plain["per_category"][next(iter(
        plain["per_category"]))]
    empty = load_split(tmp_path / "plain" / "val.npz")
    assert len(empty) == 0 and empty.images.shape == (0, 16, 16, 3) \
        and empty.masks.shape == (0, 16, 16)
    before = pd.read_csv(tmp_path / "plain" / "manifest.csv")
    after = pd.read_csv(tmp_path / "val" / "manifest.csv")
    assert set(before["split"]) == {"train", "test"}
    # the same images in the same order; test rows untouched; val rows were train rows
    assert before.drop(columns="split").equals(after.drop(columns="split"))
    assert ((before["split"] == "test") == (after["split"] == "test")).all()
    assert (before.loc[after["split"] == "val", "split"] == "train").all()
    assert carved["val"] > 0 and carved["train"] + carved["val"] == plain["train"]
    assert carved["good_images"]["val"] > 0  # good images are carved too
    val = load_split(tmp_path / "val" / "val.npz")
    assert val.sources.tolist() == after.loc[after["split"] == "val", "image"].tolist()
    for category, counts in carved["per_category"].items():
        assert counts["val"] >= 1 and counts["train"] >= 1, category


# ------------------------------------------------------------------------ the choice


def test_parse_rule() -> None:
    assert thresholds.parse_rule(0.5) == thresholds.ThresholdRule("fixed", 0.5)
    assert str(thresholds.parse_rule("best_iou")) == "best_iou"
    rule = thresholds.parse_rule("max_false_alarm_rate=0.05")
    assert (rule.kind, rule.value, str(rule)) == ("max_false_alarm_rate", 0.05,
                                                  "max_false_alarm_rate=0.05")
    for bad in (0, 1.0, "best", "max_false_alarm_rate=2", "max_false_alarm_rate=x", True,
                "auto=2", "autox", "best_iou=0.1"):
        with pytest.raises(UserError, match="evaluate.threshold"):
            thresholds.parse_rule(bad)


def test_best_iou_by_hand() -> None:
    # one image, one category: defect pixels at 0.3 and 0.35, normal pixels 0.2 and 0.6.
    probs = np.array([[[0.3, 0.35, 0.2, 0.6]]], np.float32)
    masks = np.array([[[1, 1, 0, 0]]], np.uint8)
    # t < 0.2: IOU 2/4; 0.2 <= t < 0.3: 2/3 (TP 2, FP 1); 0.3 <= t < 0.35: 1/3 ...
    assert thresholds.mean_iou(probs, masks, np.array(["a"]), 0.25) == pytest.approx(2 / 3)
    assert thresholds.mean_iou(probs, masks, np.array(["a"]), 0.5) == 0.0
    # the best, 2/3, holds for t in [0.20, 0.29]: the one closest to 0.5 wins
    assert thresholds.best_iou(probs, masks, np.array(["a"])) == (0.29, pytest.approx(2 / 3))


def test_best_iou_leaves_good_images_out_as_the_test_score_does() -> None:
    # the defective image is best at 0.2 <= t < 0.3; a good image with a pixel at 0.45
    # would pull an IOU that counted it (1 when empty) up to t >= 0.45
    probs = np.array([[[0.3, 0.35, 0.2, 0.6]], [[0.45, 0.0, 0.0, 0.0]]], np.float32)
    masks = np.array([[[1, 1, 0, 0]], [[0, 0, 0, 0]]], np.uint8)
    chosen = thresholds.choose(thresholds.parse_rule("best_iou"), probs, masks,
                               np.array(["a", "a"]), np.array([False, True]))
    assert chosen == {"value": 0.29, "rule": "best_iou", "val_images": 2,
                      "val_good_images": 1, "val_mean_iou": pytest.approx(2 / 3),
                      "val_false_alarm_rate": 1.0}


def test_lowest_threshold_within_the_false_alarm_rate_by_hand() -> None:
    # four good images whose highest probabilities are 0.1, 0.3, 0.6 and 0.8
    probs = np.array([[[0.1]], [[0.3]], [[0.6]], [[0.8]]], np.float32)
    masks = np.zeros((4, 1, 1), np.uint8)
    assert thresholds.lowest_within_rate(probs, masks, 0.5) == (0.3, 0.5, True)  # 0.6, 0.8
    assert thresholds.lowest_within_rate(probs, masks, 0.0) == (0.8, 0.0, True)
    assert thresholds.lowest_within_rate(probs, masks, 1.0) == (0.01, 1.0, True)
    always = np.full((1, 1, 1), 0.999, np.float32)
    assert thresholds.lowest_within_rate(always, masks[:1], 0.0) == (0.99, 1.0, False)


def test_the_sorted_curve_equals_counting_the_pixels_at_each_threshold() -> None:
    # The searches of iou_curve and lowest_within_rate against the direct count at every
    # candidate: probabilities on and between candidates, padding, an empty mask, three
    # categories, components below and above min_area.
    from mr2unet.metrics.image import flagged
    from mr2unet.metrics.segmentation import confusion_counts, iou_from_counts

    rng = np.random.default_rng(3)
    probs = np.concatenate([rng.integers(0, 100, (5, 12, 9)) / 100,
                            rng.random((4, 12, 9))]).astype(np.float32)
    masks = (rng.random((9, 12, 9)) < 0.3).astype(np.uint8)
    masks[:, :, :2] = 255
    masks[3, :, 2:] = 0
    categories = np.array(list("aabbbccca"))
    curve = thresholds.iou_curve(probs, masks, categories)
    for k, t in enumerate(thresholds.CANDIDATES):
        iou = iou_from_counts(confusion_counts(torch.from_numpy(probs > t),
                                               torch.from_numpy(masks)).numpy())
        expected = np.mean([iou[categories == c].mean() for c in "abc"])
        assert curve[k] == expected, t
    for min_area in (1, 4):
        for rate in (0.0, 0.3, 0.6, 1.0):
            scan = [(t, float(flagged(probs > t, masks, min_area).mean()))
                    for t in thresholds.CANDIDATES]
            within = [(t, r, True) for t, r in scan if r <= rate]
            expected = within[0] if within else (*scan[-1], False)
            assert thresholds.lowest_within_rate(probs, masks, rate, min_area) == expected


def test_rules_without_their_images_are_user_errors() -> None:
    empty = np.zeros((0, 4, 4), np.float32)
    with pytest.raises(UserError, match="split.val_fraction"):
        thresholds.choose(thresholds.parse_rule("best_iou"), empty, empty.astype(np.uint8),
                          np.zeros(0, str), np.zeros(0, bool))
    probs, masks = np.full((1, 4, 4), 0.7, np.float32), np.ones((1, 4, 4), np.uint8)
    with pytest.raises(UserError, match="prepare.good_images"):
        thresholds.choose(thresholds.parse_rule("max_false_alarm_rate=0.1"), probs, masks,
                          np.array(["a"]), np.array([False]))
    fixed = thresholds.choose(thresholds.parse_rule(0.3), empty, empty.astype(np.uint8),
                              np.zeros(0, str), np.zeros(0, bool))
    assert fixed == {"value": 0.3, "rule": "0.3", "val_images": 0, "val_good_images": 0}


def line_split(n_good: int, good_peaks: list[float]) -> tuple[np.ndarray, ...]:
    """A validation split of 4 defective images whose best IOU is at 0.20-0.29 (pixels 0.3
    and 0.35 defect, 0.2 and 0.6 normal: test_best_iou_by_hand) and ``n_good`` good images
    whose highest probabilities cycle through ``good_peaks``."""
    bad = np.tile(np.array([[[0.3, 0.35, 0.2, 0.6]]], np.float32), (4, 1, 1))
    good = np.zeros((n_good, 1, 4), np.float32)
    good[:, 0, 0] = [good_peaks[i % len(good_peaks)] for i in range(n_good)]
    probs = np.concatenate([bad, good])
    masks = np.zeros(probs.shape, np.uint8)
    masks[:4, 0, :2] = 1
    is_good = np.arange(len(probs)) >= 4
    return probs, masks, np.array(["a"] * len(probs)), is_good


def test_auto_raises_the_best_iou_threshold_to_the_false_alarm_budget(caplog) -> None:
    # 0.5 flags 15 of the 20 good images (peaks 0.6, 0.65, 0.7 and 0.45); 0.70 flags none
    probs, masks, categories, good = line_split(20, [0.6, 0.65, 0.7, 0.45])
    assert thresholds.false_alarm_rate(probs[good], masks[good], 0.5) == 0.75
    rule = thresholds.parse_rule("auto")
    assert (rule.kind, rule.value, str(rule)) == ("auto", 0.05, "auto=0.05")
    with caplog.at_level("INFO", "mr2unet.evaluation.threshold"):
        chosen = thresholds.choose(rule, probs, masks, categories, good)
    assert chosen["value"] == 0.7 and chosen["val_false_alarm_rate"] == 0.0
    assert chosen["resolved"] == "best_iou raised to max_false_alarm_rate=0.05"
    assert chosen["reason"].startswith("the best-IOU threshold 0.29 flags 100% of the 20 good")
    assert "raised to 0.70" in caplog.text and "too coarse" not in caplog.text
    assert "too_few_good" not in chosen and chosen["val_good_images"] == 20
    # the budget, not the defects, decides: 0.5 would have flagged 75 %
    assert chosen["val_mean_iou"] == 0.0  # the price: every defect pixel is below 0.70
    # a budget of 1: the best-IOU threshold is kept
    kept = thresholds.choose(thresholds.parse_rule("auto=1"), probs, masks, categories, good)
    assert (kept["value"], kept["resolved"]) == (0.29, "best_iou")


def test_auto_without_good_images_is_best_iou_and_with_few_warns(caplog) -> None:
    probs, masks, categories, good = line_split(0, [0.6])
    chosen = thresholds.choose(thresholds.parse_rule("auto=0.05"), probs, masks, categories,
                               good)
    assert (chosen["value"], chosen["resolved"]) == (0.29, "best_iou")
    assert chosen["reason"].startswith("no good validation images")
    probs, masks, categories, good = line_split(3, [0.6, 0.1])
    with caplog.at_level("WARNING", "mr2unet.evaluation.threshold"):
        few = thresholds.choose(thresholds.parse_rule("auto"), probs, masks, categories, good)
    assert few["value"] == 0.6 and few["too_few_good"] is True  # still used
    assert "only 3 good validation images (fewer than 10)" in caplog.text
    # only good images: the budget's threshold alone
    alone = thresholds.choose(thresholds.parse_rule("auto"), probs[good], masks[good],
                              categories[good], good[good])
    assert (alone["value"], alone["resolved"]) == (0.6, "max_false_alarm_rate=0.05")


def test_params_accept_auto_without_good_images_but_not_without_validation(
        tmp_path: Path) -> None:
    import yaml

    from mr2unet.config.params import load_params

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())

    def load(**changes: object) -> dict:
        for dotted, value in changes.items():
            section, key = dotted.split("__")
            raw[section][key] = value
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
        return load_params(tmp_path / "params.yaml")

    assert load(split__val_fraction=0.2, evaluate__threshold="auto")  # good_images 0: fine
    assert load(evaluate__threshold="auto=0.1")
    with pytest.raises(UserError, match="prepare.good_images"):
        load(evaluate__threshold="max_false_alarm_rate=0.1")
    with pytest.raises(UserError, match="split.val_fraction"):
        load(split__val_fraction=0, evaluate__threshold="auto")
    with pytest.raises(UserError, match="evaluate.threshold"):
        load(split__val_fraction=0.2, evaluate__threshold="auto=1.5")
    # fit_for_use.false_alarm_rate: optional (older params files), a rate when given
    assert load(evaluate__threshold=0.5, evaluate__fit_for_use={"pixel_auroc": 0.8,
                                                                "iou": 0.2})
    with pytest.raises(UserError, match="evaluate.fit_for_use"):
        load(evaluate__fit_for_use={"pixel_auroc": 0.8, "iou": 0.2, "false_alarm_rate": 2})


def test_old_model_files_mean_half(tmp_path: Path) -> None:
    save_model(tmp_path / "m.pt", torch.nn.Conv2d(3, 2, 1), "unet", {}, 16)
    assert stored_threshold(read_checkpoint(tmp_path / "m.pt")) == 0.5


# ------------------------------------------------------------------------ end to end


def test_the_chosen_threshold_travels_to_evaluate_predict_serve_and_onnx(tmp_path: Path
                                                                         ) -> None:
    """Validation masks are where the network's own probability exceeds 0.25, so the best
    threshold is clearly below 0.5; every consumer then uses it without being told."""
    from mr2unet.data.prepared import PreparedSplit
    from mr2unet.deploy.export import export_checkpoint, random_images
    from mr2unet.deploy.predict import load_predictor, predict_images
    from mr2unet.tracking.pyfunc import SegmentationModel, signature

    model = briefly_trained("unet", size=32, width=4)
    with torch.no_grad():  # spread the logits so that probabilities cover (0, 1)
        model.head.weight *= 8
        model.head.bias *= 8
    images = random_images(6, 32, seed=5)
    _, probs = predict_maps(model, images, torch.device("cpu"), progress=False)
    masks = (probs > 0.25).astype(np.uint8)
    assert ((probs > 0.25) & (probs <= 0.5)).mean() > 0.05  # 0.5 would miss these pixels
    chosen = thresholds.choose(thresholds.parse_rule("best_iou"), probs, masks,
                               np.array(["a"] * 6), np.zeros(6, bool))
    t = chosen["value"]
    assert 0.25 <= t < 0.5 and chosen["val_mean_iou"] == 1.0 and chosen["rule"] == "best_iou"
    path = tmp_path / "unet.pt"
    save_model(path, model, "unet", {"base_width": 4}, 32, meta={"threshold": chosen})

    test = random_images(2, 32, seed=9)
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(test).permute(0, 3, 1, 2).float() / 255)
    expected = defect_mask(logits, t).numpy()
    assert not np.array_equal(expected, defect_mask(logits, 0.5).numpy())

    # evaluate at the stored threshold
    loaded = load_predictor(str(path))
    assert loaded.threshold == t
    split = PreparedSplit(test, expected, np.array(["a", "a"]), np.array(["x", "x"]),
                          np.array(["0.png", "1.png"]))
    result = evaluate(loaded.module, split, torch.device("cpu"), progress=False,
                      threshold=stored_threshold(read_checkpoint(path)))
    assert result.counts[:, 1:].sum() == 0  # no FP, no FN: the masks at t
    # mr2unet predict, without --threshold
    for i, rgb in enumerate(test):
        Image.fromarray(rgb).save(tmp_path / f"{i}.png")
    written = predict_images(loaded, [tmp_path / "0.png", tmp_path / "1.png"], tmp_path / "o")
    assert len(written.written) == 2
    predicted = np.stack([np.asarray(Image.open(tmp_path / "o" / f"{i}_mask.png")) // 255
                          for i in range(2)])
    assert np.array_equal(predicted, expected)
    # --threshold still overrides
    predict_images(loaded, [tmp_path / "0.png"], tmp_path / "half", threshold=0.5)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "half" / "0_mask.png")) // 255,
                          defect_mask(logits, 0.5).numpy()[0])
    # the pyfunc (what `mlflow models serve` runs): the same masks, and its signature's
    # default threshold is the model's
    served = SegmentationModel()
    served.load_context(SimpleNamespace(artifacts={"checkpoint": str(path)}))
    assert np.array_equal(served.predict(None, test), expected)
    assert np.array_equal(served.predict(None, test, params={"threshold": 0.5}),
                          defect_mask(logits, 0.5).numpy())
    params = {p.name: p.default for p in signature(threshold=t).params.params}
    assert params == {"output": "mask", "threshold": t, "encoding": "array"}
    # the ONNX metadata
    exported = export_checkpoint(path, tmp_path / "m.onnx")
    assert exported.metadata["mask.default_threshold"] == f"{t:g}"
    assert exported.metadata["mask.threshold_rule"] == "best_iou"


# ------------------------------------------------------------- the recipe, end to end


@pytest.mark.slow
def test_repro_with_the_recipe_threshold_flags_fewer_good_parts_than_half(
        tmp_path: Path) -> None:
    """`dvc repro` on generated data with many good parts, with the user-data recipe's
    split.val_fraction and evaluate.threshold: the threshold chosen on the validation
    split flags fewer good test parts than 0.5 does with the same network (a tiny U-Net
    with weighted cross-entropy, which over-predicts defects: at 0.5 it flags 31 of the 32
    good test parts, at the chosen 0.89 one)."""
    import json

    import yaml
    from helpers import DVC, TINY, project_copy, run

    from mr2unet.evaluation.evaluate import good_images
    from mr2unet.evaluation.summaries import part_decisions
    from mr2unet.models.checkpoint import load_model

    recipe = yaml.safe_load((Path(__file__).resolve().parents[1] / "profiles/user-data.yaml")
                            .read_text())
    project = project_copy(tmp_path / "p", {
        **TINY, "synthetic": {"images_per_defect": 3, "good_images": 40},
        "prepare": {"good_images": "all", "image_size": 32},
        "split": recipe["split"], "evaluate": {**TINY["evaluate"], **recipe["evaluate"]},
        "train": {**TINY["train"], "models": ["unet"], "epochs": 4, "loss": "weighted_ce"},
        "tracking": {"enabled": False}})
    out = run([DVC, "repro"], project, timeout=900)
    assert "auto=0.05" in out.stdout + out.stderr
    pooled = json.loads((project / "metrics/evaluation/unet.json").read_text())
    chosen = pooled["threshold"]
    assert chosen["rule"] == "auto=0.05" and chosen["val_good_images"] >= 10
    assert chosen["resolved"] == "best_iou raised to max_false_alarm_rate=0.05", chosen
    alarms = pooled["verdict"]["false_alarms"]
    test = load_split(project / "data/prepared/test.npz")
    good = good_images(test, project / "data/prepared/manifest.csv")
    model, _ = load_model(project / "data/models/unet.pt")
    half = evaluate(model, test, torch.device("cpu"), threshold=0.5, progress=False)
    (at_half, n_good), _ = part_decisions(half.predictions, test.masks, good)
    print(f"threshold {chosen['value']}: {alarms['count']}/{alarms['total']} good test parts "
          f"flagged; at 0.5: {at_half}/{n_good}; validation {chosen}")
    assert n_good == alarms["total"] >= 20 and chosen["value"] > 0.5
    assert alarms["count"] < at_half
