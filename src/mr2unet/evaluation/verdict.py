"""Did it learn? Trivial baselines on the same test images and a verdict in words.

A mean IOU of 0.09 means nothing until it is set against what no network would do. On
the test images the network is scored on, with the same averaging as its primary score
(per image, then per category, then the plain mean of the categories):

- ``no_defect``: the empty mask everywhere ("no defect anywhere");
- ``defect_everywhere``: every valid pixel a defect;
- ``intensity``: the simplest classical method, a per-pixel grey-level threshold: per
  category, the threshold ``t`` and side (defect = grey ``>= t`` or ``<= t``; grey = the
  mean of R, G, B) that maximise the pooled IOU of the **training** split's pixels, then
  applied unchanged to the test images (a category missing from the training split
  takes the threshold fitted on all training images).

Then one verdict per network, from this one evaluation of the test split (nothing is
tuned on it: the baselines' thresholds come from the training split, the rule and its
thresholds from params.yaml):

- **not learned** when the 95 % bootstrap interval of its mean pixel AUROC includes 0.5,
  or its mean IOU is not above the best baseline's;
- **weak** when it learned but its mean pixel AUROC or mean IOU is below
  ``evaluate.fit_for_use`` (defaults 0.85 and 0.25), or when it flags more good test
  parts than the line's budget ``evaluate.fit_for_use.false_alarm_rate`` (default 0.1)
  with confidence: the lower end of the exact (Clopper-Pearson) 95 % interval of its
  false-alarm rate is above the budget (1 of 4 good parts flagged, [0.006, 0.81], does
  not condemn a network; 3 of 4, [0.19, 0.99], does);
- **learned** otherwise.

Without good test images the false-alarm rate is not measured: the verdict block's
``false_alarms`` says so (``measured: false``) and so does :func:`sentence`; the reason
stays what it was. ``misses`` beside it counts the defective test parts the network would
pass (no predicted defect), with the same kind of interval: the report's first screen.

The interval is a percentile bootstrap over images, stratified by category (each
resample draws each category's images with replacement, keeping its image count), of the
plain mean over categories of the pooled pixel AUROC: ``N_RESAMPLES`` resamples from a
fresh ``numpy.random.default_rng(SEED)``, each computed exactly from per-image histograms
of the 8-bit probability levels (:func:`auroc_from_histograms`), so it costs a few
matrix products, not a thousand calls of scikit-learn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from mr2unet.config.params import FIT_FOR_USE
from mr2unet.data.prepared import PreparedSplit
from mr2unet.metrics.segmentation import IGNORE_LABEL, confusion_counts, mean_scores
from mr2unet.training.collapse import ADVICE as COLLAPSE_ADVICE
from mr2unet.training.collapse import COLLAPSE_EPOCHS

SEED = 0
N_RESAMPLES = 1000
CONFIDENCE = 0.95
LEVELS = 256  # 8-bit probabilities
NOT_LEARNED, WEAK, LEARNED = "not learned", "weak", "learned"
BASELINE_LABELS = {"no_defect": "no defect anywhere", "defect_everywhere": "defect everywhere",
                   "intensity": "intensity threshold"}
ADVICE = ("try a higher prepare.image_size (or tiles of the full-resolution image), a loss "
          "for rare defects (train.loss: weighted_ce_dice, focal_dice or ce_dice), or more "
          "train.epochs; docs/evaluation.md, 'Did it learn?'")


# -------------------------------------------------------------------------- baselines


def category_mean_iou(counts: np.ndarray, categories: np.ndarray, empty_score: float = 1.0
                      ) -> dict[str, float]:
    """``{"iou", "dice"}``: per-image scores averaged per category, then over categories
    (the averaging of ``metrics/<model>.json``'s ``mean``)."""
    categories = np.asarray(categories)
    per = [mean_scores(counts[categories == c], empty_score) for c in sorted(set(categories))]
    return {k: float(np.mean([s[k] for s in per])) for k in ("iou", "dice")}


def _counts(pred: np.ndarray, masks: np.ndarray) -> np.ndarray:
    return confusion_counts(torch.from_numpy(np.ascontiguousarray(pred, np.uint8)),
                            torch.from_numpy(np.ascontiguousarray(masks))).numpy()


def grey(images: np.ndarray) -> np.ndarray:
    """uint8 ``(N, S, S, 3)`` -> uint8 ``(N, S, S)``: ``floor((R + G + B) / 3)``."""
    return (np.asarray(images, np.uint16).sum(-1) // 3).astype(np.uint8)


@dataclass(frozen=True)
class IntensityRule:
    """defect where grey ``>= threshold`` (``brighter``) or ``<= threshold`` (darker)."""

    threshold: int
    brighter: bool
    train_iou: float  # pooled IOU on the training pixels it was fitted on

    def apply(self, images: np.ndarray) -> np.ndarray:
        g = grey(images)
        return (g >= self.threshold if self.brighter else g <= self.threshold).astype(np.uint8)


def fit_intensity(images: np.ndarray, masks: np.ndarray) -> IntensityRule:
    """The grey threshold and side with the best pooled IOU on these pixels (exact, from
    256-bin histograms; of equal IOUs the brighter side and then the lower threshold win).

    ``IOU(t) = TP(t) / (TP(t) + FP(t) + FN(t))`` with ``TP(t)`` the defect pixels on the
    defect side of ``t``; padding (``IGNORE_LABEL``) is left out.
    """
    g, masks = grey(images), np.asarray(masks)
    valid = masks != IGNORE_LABEL
    labels = masks[valid] != 0
    values = g[valid].astype(np.int64)
    pos = np.bincount(values[labels], minlength=LEVELS)
    neg = np.bincount(values[~labels], minlength=LEVELS)
    best = IntensityRule(LEVELS - 1, True, 0.0)
    for brighter in (True, False):
        order = slice(None, None, -1) if brighter else slice(None)
        tp = np.cumsum(pos[order])[order]  # defect pixels on the defect side of t
        fp = np.cumsum(neg[order])[order]
        union = tp + fp + (pos.sum() - tp)
        iou = np.where(union > 0, tp / np.maximum(union, 1), 0.0)
        t = int(np.argmax(iou))
        if iou[t] > best.train_iou:
            best = IntensityRule(t, brighter, float(iou[t]))
    return best


def intensity_rules(train: PreparedSplit, categories: list[str]) -> dict[str, IntensityRule]:
    """One rule per test category, fitted on its training images (else on all of them)."""
    fallback = None
    rules = {}
    for c in categories:
        rows = train.categories == c
        if rows.any():
            rules[c] = fit_intensity(train.images[rows], train.masks[rows])
        else:
            fallback = fallback or fit_intensity(train.images, train.masks)
            rules[c] = fallback
    return rules


def baselines(test: PreparedSplit, train: PreparedSplit | None, empty_score: float = 1.0
              ) -> dict[str, dict[str, Any]]:
    """Mean IOU / Dice of each trivial baseline on ``test`` (module docstring).

    ``intensity`` only with a training split; its entry also holds the rule per category.
    """
    valid = (test.masks != IGNORE_LABEL).astype(np.uint8)
    out: dict[str, dict[str, Any]] = {
        "no_defect": category_mean_iou(_counts(np.zeros_like(valid), test.masks),
                                       test.categories, empty_score),
        "defect_everywhere": category_mean_iou(_counts(valid, test.masks), test.categories,
                                               empty_score),
    }
    if train is not None and len(train):
        names = sorted(set(test.categories.tolist()))
        rules = intensity_rules(train, names)
        pred = np.zeros_like(valid)
        for c, rule in rules.items():
            rows = test.categories == c
            pred[rows] = rule.apply(test.images[rows])
        out["intensity"] = {**category_mean_iou(_counts(pred, test.masks), test.categories,
                                                empty_score),
                            "rules": {c: asdict(r) for c, r in rules.items()}}
    return out


def best_baseline(found: Mapping[str, Mapping[str, Any]]) -> tuple[str, float]:
    """``(name, mean IOU)`` of the baseline with the highest mean IOU."""
    name = max(found, key=lambda k: (found[k]["iou"], k))
    return name, float(found[name]["iou"])


# ----------------------------------------------------------- pixel AUROC, bootstrap


def auroc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC from score histograms ``(..., L)`` of defect (``pos``) and normal pixels.

    ``AUROC = sum_k neg_k (sum_{j > k} pos_j + pos_k / 2) / (P N)``: the probability that
    a defect pixel scores higher than a normal one, ties counting one half (scikit-learn's
    ``roc_auc_score`` on the same levels). NaN where ``P`` or ``N`` is 0.
    """
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    above = np.cumsum(pos[..., ::-1], axis=-1)[..., ::-1] - pos  # defect pixels above k
    total = pos.sum(-1) * neg.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (neg * (above + pos / 2)).sum(-1) / total, np.nan)


def level_histograms(levels: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image histograms ``(N, 256)`` of the levels of defect and of normal pixels."""
    levels, masks = np.asarray(levels), np.asarray(masks)
    n = len(levels)
    index = (np.arange(n)[:, None, None] * LEVELS + levels).ravel()
    flat = masks.ravel()
    valid = flat != IGNORE_LABEL
    pos = np.bincount(index[valid & (flat != 0)], minlength=n * LEVELS).reshape(n, LEVELS)
    neg = np.bincount(index[valid & (flat == 0)], minlength=n * LEVELS).reshape(n, LEVELS)
    return pos, neg


def pixel_auroc_interval(levels: np.ndarray, masks: np.ndarray, categories: np.ndarray,
                         n_resamples: int = N_RESAMPLES, seed: int = SEED,
                         confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean over categories of the pixel AUROC
    (stratified by category; module docstring). ``None`` when no category has one."""
    pos, neg = level_histograms(levels, masks)
    categories = np.asarray(categories)
    rng = np.random.default_rng(seed)
    per_category = []
    for c in sorted(set(categories.tolist())):
        rows = np.flatnonzero(categories == c)
        draws = rng.integers(0, rows.size, (n_resamples, rows.size))
        weights = np.zeros((n_resamples, rows.size))
        np.add.at(weights, (np.arange(n_resamples)[:, None], draws), 1.0)
        per_category.append(auroc_from_histograms(weights @ pos[rows], weights @ neg[rows]))
    stacked = np.stack(per_category)  # (categories, resamples)
    defined = ~np.isnan(stacked)
    if not defined.any(axis=0).all():
        return None
    means = np.nansum(stacked, 0) / defined.sum(0)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


# ------------------------------------------------------------- counts of parts


def exact_interval(count: int, total: int, confidence: float = CONFIDENCE
                   ) -> tuple[float, float] | None:
    """The exact (Clopper-Pearson) interval of a rate ``count / total``
    (``scipy.stats.binomtest``); None without any trial."""
    if total == 0:
        return None
    # Imported here: scipy.stats costs about 1.8 s, and `mr2unet predict` and the served
    # model import this module without ever judging a network (test_pictures checks it).
    from scipy.stats import binomtest

    ci = binomtest(count, total).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def part_counts(count: int, total: int, decimals: int = 6) -> dict[str, Any]:
    """``{"count", "total", "rate", "ci"}`` of ``count`` parts of ``total`` (rate and
    interval None when ``total`` is 0)."""
    ci = exact_interval(count, total)
    return {"count": int(count), "total": int(total),
            "rate": round(count / total, decimals) if total else None,
            "ci": [round(v, decimals) for v in ci] if ci else None}


def counts_text(found: Mapping[str, Any]) -> str:
    """``3 of 4 (75 %, 95 % interval 0.19-0.99)``."""
    if not found.get("total"):
        return "not measured"
    low, high = found["ci"]
    return (f"{found['count']} of {found['total']} ({found['rate']:.0%}, 95 % interval "
            f"{low:.2f}-{high:.2f})")


# ---------------------------------------------------------------------------- verdict


@dataclass(frozen=True)
class Verdict:
    """The verdict on one network and the figures it rests on."""

    verdict: str  # NOT_LEARNED, WEAK, LEARNED
    reason: str
    iou: float
    baseline: str  # the best baseline
    baseline_iou: float
    pixel_auroc: float | None
    pixel_auroc_ci: tuple[float, float] | None
    # good test parts flagged (part_counts) + "budget" and "measured"; None: not judged
    false_alarms: dict[str, Any] | None = None

    def as_dict(self, decimals: int = 6) -> dict[str, Any]:
        ci = [round(v, decimals) for v in self.pixel_auroc_ci] if self.pixel_auroc_ci else None
        out = {"verdict": self.verdict, "reason": self.reason,
               "iou": round(self.iou, decimals), "best_baseline": self.baseline,
               "best_baseline_iou": round(self.baseline_iou, decimals),
               "pixel_auroc": None if self.pixel_auroc is None
               else round(self.pixel_auroc, decimals), "pixel_auroc_ci": ci}
        if self.false_alarms is not None:
            out["false_alarms"] = self.false_alarms
        return out


def _auroc_text(auroc: float | None, ci: tuple[float, float] | None) -> str:
    if auroc is None:
        return "no pixel AUROC"
    return f"pixel AUROC {auroc:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def false_alarm_record(flagged: int, good: int, budget: float) -> dict[str, Any]:
    """The verdict's ``false_alarms``: :func:`part_counts` of the good test parts flagged,
    the ``budget`` and whether it was ``measured`` (any good test part) and ``above``
    it with confidence (the interval's lower end above the budget)."""
    found = part_counts(flagged, good)
    return {**found, "budget": budget, "measured": good > 0,
            "above": bool(good and found["ci"][0] > budget)}


def decide(iou: float, pixel_auroc: float | None, ci: tuple[float, float] | None,
           found: Mapping[str, Mapping[str, Any]],
           fit_for_use: Mapping[str, float] | None = None,
           false_alarms: tuple[int, int] | None = None) -> Verdict:
    """The verdict (module docstring) from the network's mean IOU, its mean pixel AUROC
    and interval, the baselines' scores ``found`` (:func:`baselines`) and
    ``false_alarms`` = (good test parts flagged, good test parts), where counted."""
    fit = {**FIT_FOR_USE, **(fit_for_use or {})}
    alarms = None if false_alarms is None else false_alarm_record(
        *false_alarms, fit["false_alarm_rate"])
    name, base_iou = best_baseline(found)
    against = f"IOU {iou:.3f} against {base_iou:.3f} for \"{BASELINE_LABELS[name]}\""
    figures = f"{against}, {_auroc_text(pixel_auroc, ci)}"
    why = []
    if ci is not None and ci[0] <= 0.5 <= ci[1]:
        why.append("the pixel AUROC interval includes 0.5 (chance)")
    if not iou > base_iou:
        why.append(f"the IOU is not above \"{BASELINE_LABELS[name]}\"")
    if why:
        reason = f"{figures}; {' and '.join(why)}"
        return Verdict(NOT_LEARNED, reason, iou, name, base_iou, pixel_auroc, ci, alarms)
    short = [f"IOU below {fit['iou']:.2f}"] if iou < fit["iou"] else []
    if pixel_auroc is not None and pixel_auroc < fit["pixel_auroc"]:
        short.append(f"pixel AUROC below {fit['pixel_auroc']:.2f}")
    if alarms and alarms["above"]:
        short.append(f"false alarms on {counts_text(alarms)} good test parts, above the "
                     f"budget {alarms['budget']:g} even at the interval's lower end")
    if short:
        reason = f"{figures}; {' and '.join(short)}: not fit for a line"
        return Verdict(WEAK, reason, iou, name, base_iou, pixel_auroc, ci, alarms)
    within = (f", false-alarm rate {fit['false_alarm_rate']:g}: {counts_text(alarms)} good "
              "test parts flagged" if alarms and alarms["measured"] else "")
    reason = (f"{figures}; above the baselines and evaluate.fit_for_use "
              f"(IOU {fit['iou']:.2f}, pixel AUROC {fit['pixel_auroc']:.2f}{within})")
    return Verdict(LEARNED, reason, iou, name, base_iou, pixel_auroc, ci, alarms)


PHRASES = {NOT_LEARNED: "has not learned", WEAK: "is weak", LEARNED: "learned"}


NOT_MEASURED = "false alarms not measured: no good (defect-free) test images"


def sentence(label: str, verdict: Mapping[str, Any]) -> str:
    """``U-Net is weak: IOU 0.09 against 0.04 for "defect everywhere", pixel AUROC 0.70
    [0.61, 0.78]; IOU below 0.25: not fit for a line.`` (+ `` False alarms not measured:
    ...`` without good test images)."""
    text = f"{label} {PHRASES[verdict['verdict']]}: {verdict['reason']}."
    if not verdict.get("false_alarms", {"measured": True})["measured"]:
        text += f" {NOT_MEASURED[0].upper()}{NOT_MEASURED[1:]}."
    return text


# ------------------------------------------------------------ collapse on the test split
# A network that collapsed to a constant answer (mr2unet.training.collapse watches for it
# while training) is one more reason to keep it out of the ranking and the aliases. On the
# test split: its prediction is empty on more than half of the test images that have a
# defect. ``metrics/evaluation/<model>.json`` records it (``collapsed``, ``missed_images``,
# ``defective_images``); the history's last ``collapsed`` value records a training collapse.


def missed_images(counts: np.ndarray) -> int:
    """Test images with a defect (TP + FN > 0) whose prediction is empty (TP + FP = 0)."""
    counts = np.asarray(counts).reshape(-1, 3)
    return int((((counts[:, 0] + counts[:, 1]) == 0) & ((counts[:, 0] + counts[:, 2]) > 0))
               .sum())


def defective_images(counts: np.ndarray) -> int:
    """Test images whose ground truth holds a defect (TP + FN > 0)."""
    counts = np.asarray(counts).reshape(-1, 3)
    return int(((counts[:, 0] + counts[:, 2]) > 0).sum())


def evaluation_collapsed(counts: np.ndarray) -> bool:
    """Empty predictions on more than half of the test images that have a defect."""
    return 2 * missed_images(counts) > defective_images(counts)


def collapse_sentence(label: str, pooled: Mapping[str, Any],
                      history: Sequence[Mapping[str, float]] = ()) -> str | None:
    """The warning about a network that collapsed, or None when it did not.

    From ``metrics/evaluation/<model>.json`` (``collapsed``, ``missed_images``,
    ``defective_images``) and the training history's last ``collapsed`` value.
    """
    trained = bool(history) and bool(history[-1].get("collapsed", 0))
    if pooled.get("collapsed"):
        text = (f"{label} predicts no defect on {pooled['missed_images']} of "
                f"{pooled['defective_images']} defective test images: not a valid ranking.")
        if trained:
            text += " Its training had collapsed too (history column `collapsed`)."
        return f"{text} Its scores are those of an empty mask; {COLLAPSE_ADVICE}."
    if trained:
        return (f"{label} collapsed during training (its last {COLLAPSE_EPOCHS} epochs "
                f"predicted a constant mask; history column `collapsed`): not a valid "
                f"ranking; {COLLAPSE_ADVICE}.")
    return None


# ------------------------------------------------------------------- who may be promoted


def rank_models(mean_iou: Mapping[str, float]) -> list[str]:
    """Architectures, best mean IOU first; ties broken by name so the order is stable."""
    return sorted(mean_iou, key=lambda arch: (-mean_iou[arch], arch))


@dataclass(frozen=True)
class Records:
    """What evaluation (and training) recorded of each network, by model name:
    ``metrics/<model>.json``, the evaluate stage's whole record (verdict, ``collapsed``...)
    and the training history (``metrics/history/<model>.csv``)."""

    metrics: Mapping[str, Mapping[str, Any]]
    pooled: Mapping[str, Mapping[str, Any]]
    histories: Mapping[str, Sequence[Mapping[str, float]]]

    @property
    def mean_iou(self) -> dict[str, float]:
        return {m: float(found["mean"]["iou"]) for m, found in self.metrics.items()}

    def verdict_of(self, model: str) -> Mapping[str, Any]:
        """The ``verdict`` block of the model's record (empty when absent)."""
        return self.pooled[model].get("verdict", {})

    def collapse_notes(self, labels: Mapping[str, str]) -> dict[str, str]:
        """Model -> :func:`collapse_sentence`, for each network that collapsed."""
        notes = {m: collapse_sentence(labels.get(m, m), self.pooled[m],
                                      self.histories.get(m, ())) for m in self.metrics}
        return {m: note for m, note in notes.items() if note}

    def rankable(self) -> dict[str, float]:
        """Mean test IOU of the networks that may be ranked: not collapsed."""
        collapsed = self.collapse_notes({})
        return {m: iou for m, iou in self.mean_iou.items() if m not in collapsed}

    def alias_candidates(self) -> dict[str, float]:
        """Mean test IOU of the networks that may hold a registry alias: not collapsed and
        ``learned`` (weak, not learned or without a verdict: none)."""
        return {m: iou for m, iou in self.rankable().items()
                if self.verdict_of(m).get("verdict") == LEARNED}

    def excluded(self) -> dict[str, str]:
        """Model -> why it may hold no alias: ``collapsed``, or its verdict (``not
        learned``, ``weak``; ``no verdict`` when evaluated before verdicts existed)."""
        candidates, collapsed = self.alias_candidates(), self.collapse_notes({})
        return {m: "collapsed" if m in collapsed else
                str(self.verdict_of(m).get("verdict", "no verdict"))
                for m in self.metrics if m not in candidates}

    def roles(self, aliases: Sequence[str] = ("champion", "challenger")) -> dict[str, str]:
        """Alias -> model: the candidates by mean IOU (:func:`rank_models`), the first alias
        to the best. Empty when no network may hold one: every old alias is then removed."""
        return dict(zip(aliases, rank_models(self.alias_candidates()), strict=False))
