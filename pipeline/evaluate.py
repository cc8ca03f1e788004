"""Stage `evaluate@<model>`: score a trained model on the test split.

Outputs: metrics/<model>.json (mean + per-category IOU/Dice, pixel AUROC/AP, AUPRO and,
with good test images, image AUROC/AP, false-alarm and miss rates; DVC metrics),
metrics/evaluation/<model>.json (pooled scores, image and empty-prediction counts, oracle IOU,
image-level counts, the verdict and baselines, parameters and GFLOPs),
metrics/timing/<model>.json (latency, training time: measurements, not compared between
runs), data/eval/<model>.csv (per image),
data/eval/<model>_pred.npz (predicted masks, for the report), data/eval/<model>_prob.npz
(8-bit defect probabilities).  With tracking on, the metrics also go to the model's MLflow
run and version, the verdict as their tag `verdict`; a network that is not learned or
weak gets one warning in the log (docs/evaluation.md, 'Did it learn?').
"""

from __future__ import annotations

import logging
from typing import Any

from _common import run_model_stage

from mr2unet.config.provenance import read_run_info
from mr2unet.config.workspace import ModelFiles
from mr2unet.evaluation.evaluate import read_verdict, run_evaluation, verdict_tags
from mr2unet.evaluation.summaries import flat_metrics

log = logging.getLogger("evaluate")


def main(params: dict[str, Any], arch: str) -> None:
    run_info = read_run_info(ModelFiles(arch).run_info)
    tracked = params["tracking"]["enabled"] and run_info.get("tracking")
    if tracked:
        from mr2unet.tracking.sync import catch_up

        catch_up(run_info["tracking_uri"])  # fail fast; send what train could not
    primary = run_evaluation(params, arch)
    verdict = read_verdict(ModelFiles(arch))
    if tracked:
        from mr2unet.tracking.registry import log_evaluation

        log_evaluation(run_info, flat_metrics(primary),
                       verdict_tags(verdict))
    else:
        log.info("tracking off for %s: test metrics not logged to MLflow", arch)
    mean = primary["mean"]
    ranking = "".join(f", {name} {mean[key]:.4f}" for key, name in
                      (("pixel_auroc", "pixel AUROC"), ("pixel_ap", "AP"), ("aupro", "AUPRO"),
                       ("image_auroc", "image AUROC")) if key in mean)
    print(f"{arch}: mean IOU {primary['mean']['iou']:.4f}, Dice {primary['mean']['dice']:.4f}"
          f"{ranking} over {len(primary['per_category'])} categories -> metrics/{arch}.json"
          f" ({verdict.get('verdict', 'no verdict')})")


if __name__ == "__main__":
    run_model_stage(main, __doc__, "evaluate")
