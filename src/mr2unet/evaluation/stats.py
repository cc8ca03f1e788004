"""Paired comparison of two models on the same test images: is the difference real?

Pure functions on per-image score vectors (IOU or Dice of the same images, same order).
For a pair ``(a, b)`` the per-image differences ``d = a - b`` give

- the mean difference (what Table 1's Mean row difference is, for one category);
- a 95 % **paired bootstrap** confidence interval of that mean: the images are resampled
  with replacement (``scipy.stats.bootstrap``, BCa, 9999 resamples, a fresh
  ``numpy.random.default_rng(SEED)`` per interval, so an interval does not depend on which
  other comparisons ran before it);
- the two-sided **Wilcoxon signed-rank** p-value (``scipy.stats.wilcoxon``,
  ``zero_method="wilcox"``: images on which both models score the same are left out;
  ``method="auto"``: exact for up to 50 differences without ties, a permutation over every
  sign pattern for up to 13 with ties, the normal approximation otherwise);
- how many images ``a`` scores higher / lower / the same;
- Holm-adjusted p-values over a family of comparisons (:func:`holm`).

Degenerate inputs give a defined result, never an exception: no images -> everything
``None``; one image -> no interval; every difference equal -> the interval is that value
(``ci_method="constant"``); every difference zero -> no Wilcoxon p-value (there is nothing
to rank). ``note`` says why a figure is missing. docs/evaluation.md explains the choices.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from scipy import stats as sps

SEED = 0
N_RESAMPLES = 9999
CONFIDENCE = 0.95
ALPHA = 0.05
ZERO_METHOD = "wilcox"
CI_METHOD = "BCa"
# Per-image scores are stored with 6 decimals; differences are rounded to 12 so that float
# noise (0.3 - 0.1 != 0.2) neither creates nor hides ties and zeros in the Wilcoxon ranks.
DIFF_DECIMALS = 12
# What the JSON keeps: differences and intervals to 6 decimals, p-values to 6 significant
# digits (a p-value of 1e-40 must not read 0).
DECIMALS = 6
P_DIGITS = 6


@dataclass(frozen=True)
class PairedResult:
    """The comparison of ``a`` with ``b`` on the same images (differences ``a - b``)."""

    n: int  # images
    mean_diff: float | None
    ci_low: float | None
    ci_high: float | None
    ci_method: str | None  # "BCa", "percentile" (where BCa is undefined), "constant"
    p_value: float | None  # two-sided Wilcoxon signed-rank
    better: int  # images where a > b
    worse: int  # images where a < b
    tied: int  # images where a == b
    p_holm: float | None = None  # set by :func:`adjust`
    note: str = ""

    @property
    def p_decisive(self) -> float | None:
        """The p-value the verdict uses: Holm-adjusted when set, else the raw one."""
        return self.p_holm if self.p_holm is not None else self.p_value

    def significant(self, alpha: float = ALPHA) -> bool | None:
        """Whether ``p_decisive < alpha``; ``None`` when there is no p-value."""
        p = self.p_decisive
        return None if p is None else bool(p < alpha)

    def ci_excludes_zero(self) -> bool | None:
        if self.ci_low is None or self.ci_high is None:
            return None
        return bool(self.ci_low > 0 or self.ci_high < 0)

    def as_dict(self, alpha: float = ALPHA) -> dict[str, Any]:
        """JSON-ready, rounded (fixed decimals, so equal inputs give equal bytes)."""
        out = asdict(self)
        for key in ("mean_diff", "ci_low", "ci_high"):
            out[key] = _round(out[key], DECIMALS)
        for key in ("p_value", "p_holm"):
            out[key] = _round_sig(out[key], P_DIGITS)
        out["significant"] = self.significant(alpha)
        return out


def _round(value: float | None, decimals: int) -> float | None:
    if value is None:
        return None
    rounded = round(float(value), decimals)
    return rounded + 0.0  # no "-0.0"


def _round_sig(value: float | None, digits: int) -> float | None:
    return None if value is None else float(f"{float(value):.{digits}g}")


def paired_differences(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray
                       ) -> np.ndarray:
    """``a - b`` per image, float64, rounded to :data:`DIFF_DECIMALS`."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired scores differ in length: {a.size} and {b.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired scores must be finite")
    return np.round(a - b, DIFF_DECIMALS)


def bootstrap_ci(diffs: np.ndarray, seed: int = SEED, n_resamples: int = N_RESAMPLES,
                 confidence: float = CONFIDENCE) -> tuple[float, float, str] | None:
    """Paired bootstrap interval of the mean of ``diffs``: ``(low, high, method)``.

    ``None`` for fewer than 2 differences. Equal differences give ``(d, d, "constant")``
    (every resample has that mean; BCa is undefined there). BCa, falling back to the
    percentile interval where BCa comes out undefined (NaN).
    """
    diffs = np.asarray(diffs, np.float64)
    if diffs.size < 2:
        return None
    if np.all(diffs == diffs[0]):
        return float(diffs[0]), float(diffs[0]), "constant"
    for method in (CI_METHOD, "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy's degenerate-data warnings: NaN below
            res = sps.bootstrap((diffs,), np.mean, n_resamples=n_resamples,
                                confidence_level=confidence, method=method, vectorized=True,
                                rng=np.random.default_rng(seed))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return low, high, method
    return None


def wilcoxon_p(diffs: np.ndarray) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value of ``diffs``; ``None`` when all are zero."""
    diffs = np.asarray(diffs, np.float64)
    if not np.any(diffs != 0):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = float(sps.wilcoxon(diffs, zero_method=ZERO_METHOD, alternative="two-sided",
                               method="auto").pvalue)
    return min(p, 1.0) if math.isfinite(p) else None


def compare(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
            seed: int = SEED, n_resamples: int = N_RESAMPLES,
            confidence: float = CONFIDENCE) -> PairedResult:
    """Compare per-image scores ``a`` with ``b`` (same images, same order)."""
    d = paired_differences(a, b)
    better, worse = int((d > 0).sum()), int((d < 0).sum())
    tied = int(d.size - better - worse)
    if d.size == 0:
        return PairedResult(0, None, None, None, None, None, 0, 0, 0, note="no images")
    notes = []
    ci = bootstrap_ci(d, seed, n_resamples, confidence)
    if ci is None:
        notes.append("one image: no interval" if d.size == 1 else "no interval")
    p = wilcoxon_p(d)
    if p is None:
        notes.append("identical scores on every image: nothing to test")
    low, high, method = ci if ci else (None, None, None)
    return PairedResult(int(d.size), float(d.mean()), low, high, method, p, better, worse,
                        tied, note="; ".join(notes))


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (``None`` entries left out)."""
    valid = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(valid)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(valid):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def adjust(results: Sequence[PairedResult]) -> list[PairedResult]:
    """``results`` with ``p_holm`` set, the family being ``results`` itself."""
    adjusted = holm([r.p_value for r in results])
    return [replace(r, p_holm=p) for r, p in zip(results, adjusted, strict=True)]
