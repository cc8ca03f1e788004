"""The report's "did it learn" part: the verdicts in words, the line's view (parts
rejected and passed), the verdict and baseline tables, and who the promote stage gives
the registry aliases (:meth:`mr2unet.evaluation.verdict.Records.roles`).
"""

from __future__ import annotations

from mr2unet.evaluation import verdict as verdicts
from mr2unet.reporting.inputs import LABELS, ReportInputs
from mr2unet.reporting.markup import Cell
from mr2unet.reporting.tables import MISSING, HeaderRows, fmt, threshold_of


def verdict_lines(inputs: ReportInputs) -> list[str]:
    """The report's first lines: each network that is not learned or weak, in words, and
    what it means for the aliases."""
    lines = [verdicts.sentence(LABELS[m], inputs.verdict_of(m)) for m in inputs.models
             if inputs.verdict_of(m).get("verdict", verdicts.LEARNED) != verdicts.LEARNED]
    if not inputs.records.alias_candidates():
        lines.append("No network has learned (mr2unet.evaluation.verdict): none is given the "
                     "champion or challenger alias, and the old ones are removed.")
    return lines


VERDICT_NOTE = (
    "Against what no network would do, on the same test images and with the same averaging "
    "as the mean IOU: \"no defect anywhere\", \"defect everywhere\", and a grey-level "
    "threshold per category fitted on the training split. Not learned: the 95 % bootstrap "
    "interval of the mean pixel AUROC (images resampled within each category, 1000 times) "
    "includes 0.5, or the mean IOU is not above the best baseline's. Weak: learned, but "
    "below evaluate.fit_for_use, or rejecting more good test parts than its "
    "false_alarm_rate with confidence (the exact 95 % interval's lower end above it). Only "
    "a learned network can get a registry alias.")

LINE_NOTE = (
    "What a production line sees of the test parts, at each network's mask threshold: a "
    "part is rejected when its predicted mask holds a defect of at least "
    "evaluate.min_defect_area connected pixels. Good parts rejected: false alarms among the "
    "defect-free test images; defective parts passed: defective test images with no "
    "predicted defect. Intervals: exact (Clopper-Pearson) 95 %, so that a handful of parts "
    "reads as the little it proves. A network whose interval of good parts rejected lies "
    "above evaluate.fit_for_use.false_alarm_rate is weak (below, \"Did it learn?\").")


def line_table(inputs: ReportInputs) -> HeaderRows:
    """The report's first screen, one row per model: good parts it would reject, defective
    parts it would pass (k of n, exact interval), its mask threshold and verdict."""
    header = ["model", "good parts rejected", "defective parts passed", "mask threshold",
              "verdict"]
    rows = []
    for m in inputs.models:
        found = inputs.verdict_of(m)
        alarms, misses = found.get("false_alarms"), found.get("misses")
        rejected = (MISSING if alarms is None else verdicts.counts_text(alarms)
                    + (f" (budget {alarms['budget']:g})" if alarms["measured"]
                       else ": no good test images"))
        rows.append([Cell(LABELS[m]), Cell(rejected),
                     Cell(verdicts.counts_text(misses) if misses else MISSING),
                     Cell(threshold_of(inputs, m)),
                     Cell(found.get("verdict", MISSING),
                          found.get("verdict") == verdicts.LEARNED)])
    return header, rows


def verdict_table(inputs: ReportInputs) -> HeaderRows:
    """One row per model: verdict, mean IOU, the best baseline, pixel AUROC [95 % CI]."""
    header = ["model", "verdict", "mean IOU", "best baseline", "its IOU", "pixel AUROC [95 % CI]"]
    rows = []
    for m in inputs.models:
        found = inputs.verdict_of(m)
        if not found:
            rows.append([Cell(LABELS[m]), *(Cell(MISSING) for _ in header[1:])])
            continue
        ci = found.get("pixel_auroc_ci")
        auroc = fmt(found.get("pixel_auroc")) + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
        rows.append([Cell(LABELS[m]), Cell(found["verdict"], found["verdict"] == "learned"),
                     Cell(fmt(found["iou"])),
                     Cell(verdicts.BASELINE_LABELS.get(found["best_baseline"],
                                                       found["best_baseline"])),
                     Cell(fmt(found["best_baseline_iou"])), Cell(auroc)])
    return header, rows


def baseline_table(inputs: ReportInputs) -> HeaderRows:
    """The trivial baselines' mean IOU and Dice (the same for every model's test images)."""
    found = next((inputs.verdict_of(m)["baselines"] for m in inputs.models
                  if "baselines" in inputs.verdict_of(m)), {})
    return ["baseline", "mean IOU", "mean Dice"], [
        [Cell(verdicts.BASELINE_LABELS.get(name, name)), Cell(fmt(b["iou"])),
         Cell(fmt(b["dice"]))] for name, b in found.items()]


PROMOTION_NOTE = (
    "Who holds the registry aliases after this pipeline: the promote stage, which runs "
    "after this report, points the champion alias at the best network by mean IOU among "
    "those that may hold one (learned, not collapsed) and the challenger alias at the "
    "second, on each network's registered model and on <prefix>best, and removes every "
    "other (tracking.champion_alias, tracking.challenger_alias; nothing when tracking is "
    "off). What it set: data/promotion.json.")


def promotion_table(inputs: ReportInputs) -> HeaderRows:
    """One row per alias the promote stage will set: alias, network, mean IOU."""
    roles = inputs.records.roles()
    mean_iou = inputs.records.mean_iou
    return ["alias", "network", "mean IOU"], [
        [Cell(alias), Cell(LABELS[m]), Cell(fmt(mean_iou[m]))] for alias, m in roles.items()]
