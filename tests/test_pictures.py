"""mr2unet.reporting.pictures: the red overlay of `mr2unet predict` and the report's error tiles."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from mr2unet.reporting.pictures import FN_COLOUR, FP_COLOUR, TP_COLOUR, error_map, overlay


def test_overlay_tints_only_the_defect_pixels() -> None:
    image = np.full((2, 3, 3), 100, np.uint8)
    mask = np.array([[1, 0, 0], [0, 0, 1]], np.uint8)
    out = overlay(image, mask)
    assert out.dtype == np.uint8 and out.shape == image.shape
    # 0.4 * 100 + 0.6 * (230, 30, 30) = (178, 58, 58)
    assert out[0, 0].tolist() == [178, 58, 58] and out[1, 2].tolist() == [178, 58, 58]
    assert (out[mask == 0] == 100).all()


def test_error_map_colours_each_outcome() -> None:
    pred = np.array([[1, 1], [0, 0]])
    target = np.array([[1, 0], [1, 0]])
    tile = error_map(pred, target)
    assert tile[0, 0].tolist() == list(TP_COLOUR)
    assert tile[0, 1].tolist() == list(FP_COLOUR)
    assert tile[1, 0].tolist() == list(FN_COLOUR)
    assert tile[1, 1].tolist() == [0, 0, 0]


@pytest.mark.slow
def test_predict_does_not_import_the_report_or_scipy() -> None:
    """`mr2unet predict` starts without the report's statistics (about 1.8 s of imports)."""
    code = ("import sys, mr2unet.deploy.predict; "
            "print(sorted(m for m in sys.modules if m in ('mr2unet.reporting.report', 'scipy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
