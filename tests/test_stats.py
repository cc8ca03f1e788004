"""Paired comparison of models: bootstrap CI, Wilcoxon, Holm, and the report's wording."""

from __future__ import annotations

import itertools
import json
from statistics import NormalDist

import numpy as np
import pytest

from mr2unet.evaluation import stats
from mr2unet.evaluation.stats import compare, holm, paired_differences
from mr2unet.reporting.markup import render_html
from mr2unet.reporting.significance import (
    ALL,
    PerImage,
    model_pairs,
    pairwise,
    pairwise_json,
    parse_per_image,
    section,
    section_blocks,
    sentence,
)

LABELS = {"unet": "U-Net", "resunet": "Residual U-Net", "mr2unet": "MR2U-Net"}
# 40 per-image scores of a "baseline" model, in [0.2, 0.8]
BASE = np.linspace(0.2, 0.8, 40)
# zero-mean, symmetric per-image noise: +x and -x alternate
NOISE = np.tile([0.05, -0.05, 0.02, -0.02], 10)


# --------------------------------------------------------------------------- bootstrap


def test_a_known_shift_gives_a_ci_that_excludes_zero() -> None:
    r = compare(BASE + 0.1 + NOISE, BASE)
    assert r.n == 40 and r.mean_diff == pytest.approx(0.1)
    assert r.ci_method == "BCa"
    assert 0 < r.ci_low < 0.1 < r.ci_high < 0.12  # covers the shift, excludes 0
    assert r.ci_excludes_zero() is True
    assert r.better == 40 and r.worse == r.tied == 0
    assert r.p_value < 1e-6 and r.significant() is True


def test_no_shift_gives_a_ci_that_includes_zero() -> None:
    r = compare(BASE + NOISE, BASE)
    assert r.mean_diff == pytest.approx(0.0, abs=1e-12)
    assert r.ci_low < 0 < r.ci_high
    assert r.ci_excludes_zero() is False
    assert (r.better, r.worse, r.tied) == (20, 20, 0)
    assert r.p_value == pytest.approx(1.0) and r.significant() is False


def test_the_ci_is_seeded_and_reproducible() -> None:
    a, b = BASE + 0.01 + NOISE, BASE
    assert compare(a, b) == compare(a, b)
    assert compare(a, b, seed=1).ci_low != compare(a, b).ci_low
    assert compare(a, b, seed=1).p_value == compare(a, b).p_value


def ideal_bca(diffs: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """The BCa interval of the mean over the *ideal* bootstrap: all n^n equally likely
    resamples enumerated, no random draws. Bias correction z0 from the share of resample
    means below the mean (ties counted half), acceleration from the jackknife (Efron and
    Tibshirani, ch. 14), the quantiles linearly interpolated."""
    d = np.asarray(diffs, np.float64)
    means = np.array([np.mean(r) for r in itertools.product(d, repeat=d.size)])
    normal = NormalDist()
    z0 = normal.inv_cdf(((means < d.mean()).mean() + (means <= d.mean()).mean()) / 2)
    jack = np.array([np.delete(d, i).mean() for i in range(d.size)])
    u = jack.mean() - jack
    a = (u ** 3).sum() / (6 * (u ** 2).sum() ** 1.5)
    ends = []
    for alpha in ((1 - confidence) / 2, (1 + confidence) / 2):
        z = normal.inv_cdf(alpha)
        ends.append(float(np.quantile(means, normal.cdf(z0 + (z0 + z) / (1 - a * (z0 + z))))))
    return ends[0], ends[1]


def test_the_ci_of_a_small_known_case() -> None:
    """Against the ideal bootstrap (3125 resamples of 5 differences, enumerated)."""
    # Symmetric 1..5: z0 = a = 0, so BCa is the percentile interval of the 3125 means.
    assert ideal_bca([1, 2, 3, 4, 5]) == pytest.approx((1.8, 4.2))
    r = compare([1.0, 2, 3, 4, 5], [0.0] * 5)
    assert r.mean_diff == 3.0 and r.ci_method == "BCa"
    assert (r.ci_low, r.ci_high) == pytest.approx((1.8, 4.2))
    # Skewed 1, 1, 2, 3, 8: BCa moves the interval right of the percentile one (1.2, 5.6).
    skewed = [1.0, 1, 2, 3, 8]
    assert ideal_bca(skewed) == pytest.approx((1.4, 6.6))
    r = compare(skewed, [0.0] * 5)
    # 9999 random resamples: within one step (0.2) of the means' grid of the ideal values
    assert r.ci_low == pytest.approx(1.4, abs=0.21) and r.ci_high == pytest.approx(6.6, abs=0.21)


# ---------------------------------------------------------------------------- wilcoxon


def test_wilcoxon_by_hand() -> None:
    # 5 positive differences: of the 2^5 sign patterns only "all +" and "all -" are as
    # extreme as this, so p = 2 / 32.
    assert compare([1.0, 2, 3, 4, 5], [0.0] * 5).p_value == pytest.approx(2 / 32)
    # d = 1, 2, 3, -4, 5: W- = 4. Subsets of ranks {1..5} summing to <= 4: {}, {1}, {2}, {3},
    # {4}, {1,2}, {1,3} = 7 of 32, doubled (two-sided): p = 14 / 32.
    assert compare([1.0, 2, 3, -4, 5], [0.0] * 5).p_value == pytest.approx(14 / 32)
    # zero_method "wilcox": the tie (image 4) is left out, leaving the first case.
    assert compare([1.0, 2, 3, 0.5, 4, 5], [0, 0, 0, 0.5, 0, 0]).p_value == \
        pytest.approx(2 / 32)


def test_float_noise_is_not_a_difference() -> None:
    d = paired_differences([0.3, 0.7], [0.1 + 0.2, 0.7])
    assert d.tolist() == [0.0, 0.0]


# ------------------------------------------------------------------------ degenerate


def test_identical_scores_give_a_defined_result() -> None:
    r = compare(BASE, BASE)
    assert (r.n, r.mean_diff, r.ci_low, r.ci_high, r.ci_method) == (40, 0.0, 0.0, 0.0,
                                                                      "constant")
    assert r.p_value is None and r.significant() is None
    assert (r.better, r.worse, r.tied) == (0, 0, 40)
    assert "identical" in r.note
    record = r.as_dict()
    assert record["significant"] is None and record["p_value"] is None
    json.dumps(record)


def test_constant_nonzero_shift_has_a_point_interval() -> None:
    r = compare(BASE + 0.25, BASE)
    assert (r.ci_low, r.ci_high, r.ci_method) == (0.25, 0.25, "constant")
    assert r.p_value is not None and r.p_value < 1e-6


def test_one_image_and_no_images() -> None:
    one = compare([0.7], [0.5])
    assert one.n == 1 and one.mean_diff == pytest.approx(0.2)
    assert one.ci_low is None and "one image" in one.note
    assert one.p_value == pytest.approx(1.0)  # one sign out of two patterns
    none = compare([], [])
    assert none.n == 0 and none.mean_diff is None and none.note == "no images"
    assert none.significant() is None


def test_mismatched_or_nan_scores_are_refused() -> None:
    with pytest.raises(ValueError, match="length"):
        compare([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="finite"):
        compare([0.1, float("nan")], [0.1, 0.2])


def test_rounding_is_fixed() -> None:
    r = compare(BASE + 1 / 3 + NOISE, BASE).as_dict()
    assert r["mean_diff"] == round(1 / 3, 6)
    assert r["p_value"] == float(f"{r['p_value']:.6g}")
    assert stats.PairedResult(1, -1e-9, None, None, None, None, 0, 1, 0).as_dict()[
        "mean_diff"] == 0.0
    assert str(stats.PairedResult(1, -1e-9, None, None, None, None, 0, 1, 0).as_dict()[
        "mean_diff"]) == "0.0"  # not "-0.0"


# -------------------------------------------------------------------------------- holm


def test_holm_by_hand() -> None:
    # sorted: 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> kept monotone: 0.06
    assert holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    assert holm([]) == [] and holm([None]) == [None]


# --------------------------------------------------------------------- report section


def _per_image(scores: dict[str, np.ndarray]) -> dict[str, PerImage]:
    n = len(next(iter(scores.values())))
    sources = np.array([f"img{i}.png" for i in range(n)])
    categories = np.array(["bottle" if i % 2 else "grid" for i in range(n)])
    return {m: PerImage(sources, categories, {"iou": s, "dice": 2 * s / (1 + s)})
            for m, s in scores.items()}


def test_pairs_read_later_vs_earlier_in_the_papers_order() -> None:
    assert model_pairs(["mr2unet", "unet", "resunet", "attention_unet"]) == [
        ("resunet", "unet"), ("attention_unet", "unet"), ("attention_unet", "resunet"),
        ("mr2unet", "unet"), ("mr2unet", "resunet"), ("mr2unet", "attention_unet")]
    assert model_pairs(["unet"]) == []


def test_pairwise_covers_every_pair_metric_and_scope_with_holm_per_family() -> None:
    per_image = _per_image({"unet": BASE, "resunet": BASE + NOISE,
                            "mr2unet": BASE + 0.1 + NOISE})
    comparisons = pairwise(per_image, n_resamples=999)
    assert len(comparisons) == 3 * 2 * 3  # pairs x metrics x (all, bottle, grid)
    first = comparisons[0]
    assert (first.first, first.second, first.metric, first.scope) == \
        ("resunet", "unet", "iou", ALL)
    family = [c.result for c in comparisons if c.metric == "iou" and c.scope == ALL]
    assert [r.p_holm for r in family] == holm([r.p_value for r in family])
    bottle = [c for c in comparisons if c.scope == "bottle"]
    assert {c.result.n for c in bottle} == {20}
    data = pairwise_json(comparisons, per_image)
    assert data["images"] == 40 and data["images_per_category"] == {"bottle": 20, "grid": 20}
    assert json.loads(json.dumps(data)) == data
    assert data == pairwise_json(pairwise(per_image, n_resamples=999), per_image)


def test_sentence_and_section() -> None:
    per_image = _per_image({"unet": BASE, "mr2unet": BASE + 0.1 + NOISE})
    comparisons = pairwise(per_image, n_resamples=999)
    iou = comparisons[0]
    text = sentence(iou, LABELS)
    r = iou.result
    assert text.startswith(f"MR2U-Net vs U-Net: +0.100 IOU, 95 % CI [+{r.ci_low:.3f}, "
                           f"+{r.ci_high:.3f}], Wilcoxon p < 0.001, significant at 0.05; ")
    assert text.endswith("better on 40, worse on 0, tied on 0 of 40 images.")
    md = section(comparisons, LABELS)
    page = render_html("r", section_blocks(comparisons, LABELS), [])
    assert "| MR2U-Net vs U-Net | IOU | 40 | +0.100 |" in md
    assert "| bottle | 20 | **+0.065 [" in md  # odd images: noise -0.05, -0.02
    assert "<li>MR2U-Net vs U-Net: +0.100 IOU" in page
    same = pairwise(_per_image({"unet": BASE, "mr2unet": BASE.copy()}), n_resamples=99)
    assert "identical scores on all 40 images: nothing to test." in sentence(same[0], LABELS)
    assert "| n/a |" in section(same, LABELS)
    assert section([], LABELS).startswith("Fewer than two models")


def test_parse_per_image_reads_the_evaluate_csv() -> None:
    text = ("source,category,defect_type,tp,fp,fn,iou,dice\n"
            "bottle/a.png,bottle,hole,1,1,0,0.5,0.666667\n")
    parsed = parse_per_image(text)
    assert parsed.sources.tolist() == ["bottle/a.png"]
    assert parsed.scores["dice"].tolist() == [0.666667]
    from mr2unet.errors import UserError

    with pytest.raises(UserError, match="missing columns"):
        parse_per_image("source,category\nx,y\n", "x.csv")
