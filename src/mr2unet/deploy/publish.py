"""Publishing a deployment file beside a registered model: the champion's ``model.onnx``.

The registry (:mod:`mr2unet.tracking.registry`) knows versions, aliases and files; the
export (:mod:`mr2unet.deploy.export`) knows ONNX. This module composes the two, so that
tracking never imports deployment.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from mr2unet.deploy.export import check_parity, export_checkpoint
from mr2unet.models.checkpoint import load_model
from mr2unet.tracking.registry import AliasAssignment, add_model_file, model_files, tag_versions

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
PARITY_IMAGES = 8  # test images the report stage checks the ONNX file on (about a second)


def attach_onnx(assignments: list[AliasAssignment], runs: dict[str, dict[str, Any]],
                alias: str, checkpoints: dict[str, Path], images: Any) -> str | None:
    """Add ``model.onnx`` of the model holding ``alias`` to its logged model's files.

    Every registered version with the alias (``<prefix><arch>`` and ``<prefix>best``) points
    to the same logged model, so ``models:/<prefix>best@champion`` then downloads with a
    ready deployment file. The file is exported from the checkpoint
    (:func:`mr2unet.deploy.export.export_checkpoint`), checked with ONNX Runtime against
    PyTorch on the first :data:`PARITY_IMAGES` of ``images`` (uint8 ``(N, S, S, 3)``, e.g.
    the test split) and the figures are tagged on the versions. A model that has the file
    already is left as it is (a version's weights never change). Returns a line for the
    stage's output, None when nothing holds the alias.
    """
    holders = [a for a in assignments if a.alias == alias]
    if not holders:
        return None
    arch = holders[0].arch
    uri = runs[arch]["tracking_uri"]
    model_id, present = model_files(uri, holders[0].registered_model, holders[0].version)
    if model_id is None:
        log.warning("%s: no logged model to attach %s to", holders[0].uri, ONNX_FILE)
        return None
    if ONNX_FILE in present:
        return f"{holders[0].uri}: {ONNX_FILE} already attached"

    with tempfile.TemporaryDirectory(prefix="mr2unet-onnx-") as tmp:
        result = export_checkpoint(checkpoints[arch], Path(tmp) / ONNX_FILE,
                                   source=f"models:/{runs[arch]['registered_model']}/"
                                          f"{runs[arch]['model_version']}")
        network, payload = load_model(checkpoints[arch])
        size = int(payload["image_size"])  # a tiled model's file is the per-crop network
        parity = check_parity(result.path, network, images[:PARITY_IMAGES, :size, :size])
        if parity.max_abs_logit_diff > 1e-3:
            log.error("%s: ONNX Runtime disagrees with PyTorch (%s): not attached",
                      holders[0].uri, parity.summary())
            return None
        add_model_file(uri, model_id, result.path)
    tag_versions(uri, holders, {
        "onnx_file": ONNX_FILE, "onnx_opset": str(result.opset),
        "onnx_max_abs_logit_diff": f"{parity.max_abs_logit_diff:.3g}",
        "onnx_mask_agreement": f"{parity.mask_agreement:.6f}"})
    return (f"{holders[0].uri}: {ONNX_FILE} attached (opset {result.opset}, exported in "
            f"{result.seconds:.1f}s; ONNX Runtime vs PyTorch on the {parity.images} test "
            f"images: {parity.summary()})")
