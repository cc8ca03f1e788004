"""Stage `evaluate@<model>`: score a trained model on the test split.

Outputs: metrics/<model>.json (mean + per-category IOU/Dice, pixel AUROC/AP; DVC
metrics), metrics/pooled/<model>.json (pooled scores, image and empty-prediction counts,
oracle IOU, parameters and GFLOPs), metrics/timing/<model>.json (latency, training time:
measurements, not compared between runs), data/eval/<model>.csv (per image),
data/eval/<model>_pred.npz (predicted masks, for the report), data/eval/<model>_prob.npz
(8-bit defect probabilities).  With tracking on, the metrics also go to the model's MLflow
run and version.
"""

from __future__ import annotations

import logging
from typing import Any

from _common import run_model_stage

from mr2unet.config.provenance import read_run_info
from mr2unet.evaluation.evaluate import ModelFiles, flat_metrics, run_evaluation

log = logging.getLogger("evaluate")


def main(params: dict[str, Any], arch: str) -> None:
    primary = run_evaluation(params, arch)
    run_info = read_run_info(ModelFiles(arch).run_info)
    if params["tracking"]["enabled"] and run_info.get("tracking"):
        from mr2unet.tracking.registry import log_evaluation

        log_evaluation(run_info, flat_metrics(primary))
    else:
        log.info("tracking off for %s: test metrics not logged to MLflow", arch)
    mean = primary["mean"]
    ranking = "".join(f", {name} {mean[key]:.4f}" for key, name in
                      (("pixel_auroc", "pixel AUROC"), ("pixel_ap", "AP")) if key in mean)
    print(f"{arch}: mean IOU {primary['mean']['iou']:.4f}, Dice {primary['mean']['dice']:.4f}"
          f"{ranking} over {len(primary['per_category'])} categories -> metrics/{arch}.json")


if __name__ == "__main__":
    run_model_stage(main, __doc__, "evaluate")
