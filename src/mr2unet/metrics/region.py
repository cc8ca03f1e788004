"""AUPRO: the area under the per-region overlap curve (Bergmann et al., IJCV 2021).

No pinned library ships it (scikit-learn, scipy and torch do not; torchmetrics and anomalib
are not dependencies), so it is written here, following the definition of the MVTec AD
paper and its official evaluation script:

- the ground-truth *regions* ``C_k`` are the 8-connected components of the defect pixels
  of every image (``K`` regions over all images together);
- at a threshold ``t`` a pixel is predicted defect when its score is ``>= t``; the
  *per-region overlap* is ``PRO(t) = (1 / K) sum_k |{p in C_k : s_p >= t}| / |C_k|``, every
  region counting the same however large, and the false-positive rate is
  ``FPR(t) = |{p normal : s_p >= t}| / |{p normal}|``;
- the curve ``(FPR(t), PRO(t))`` over every distinct score, starting at ``(0, 0)``, is
  integrated with the trapezoidal rule from ``FPR = 0`` to ``limit`` (0.3; the curve is
  interpolated linearly at the limit) and divided by ``limit``, so that 1 is perfect and a
  score that ranks pixels at random gets about ``limit / 2``.

Padding pixels (:data:`~mr2unet.metrics.segmentation.IGNORE_LABEL`) are neither normal nor
part of a region.
"""

from __future__ import annotations

import numpy as np

from mr2unet.metrics.segmentation import IGNORE_LABEL

FPR_LIMIT = 0.3
# 8-connectivity inside an image, none across images of an (N, H, W) stack.
_STACK_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_STACK_STRUCTURE[1] = True


def label_regions(binary: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of each image of a boolean ``(N, H, W)`` stack.

    Returns int labels (0 = outside, 1..count numbered over the whole stack) and count.
    """
    from scipy import ndimage  # here, not at import: `mr2unet predict` needs no scipy
    labels, count = ndimage.label(np.asarray(binary, dtype=bool), structure=_STACK_STRUCTURE)
    return labels, int(count)


def pro_curve(scores: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(fpr, pro)`` at every distinct score, highest threshold first, from ``(0, 0)``.

    ``FPR(t)`` and ``PRO(t)`` as in the module docstring, for ``t`` = each distinct score
    of the scored pixels. ``None`` when there is no region or no normal pixel.
    """
    scores, masks = np.asarray(scores), np.asarray(masks)
    if scores.shape != masks.shape:
        raise ValueError(f"scores shape {scores.shape} != masks shape {masks.shape}")
    valid = masks != IGNORE_LABEL
    regions, count = label_regions(valid & (masks != 0))
    normal = valid & (masks == 0)
    if count == 0 or not normal.any():
        return None
    sizes = np.bincount(regions.ravel(), minlength=count + 1).astype(np.float64)
    # Each defect pixel adds 1 / (K |C_k|) to PRO once the threshold reaches its score.
    weight = np.where(regions > 0, 1.0 / (count * sizes[regions]), 0.0)
    values, index = np.unique(scores[valid], return_inverse=True)
    fp = np.bincount(index, weights=normal[valid], minlength=values.size)
    pro = np.bincount(index, weights=weight[valid], minlength=values.size)
    # Cumulate from the highest score down: threshold t marks every pixel with s >= t.
    fpr = np.cumsum(fp[::-1]) / normal.sum()
    pro = np.cumsum(pro[::-1])
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], np.minimum(pro, 1.0)])


def integrate_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoidal ``integral_0^limit y dx`` of a curve whose ``x`` never decreases.

    ``y`` at ``limit`` is interpolated linearly between its neighbours; past the last
    point (a curve that ends before ``limit``) the last ``y`` is held.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    inside = x < limit
    # The first point at or beyond the limit closes the last piece.
    end = int(np.argmax(~inside)) if not inside.all() else x.size
    xs, ys = list(x[:end]), list(y[:end])
    if end < x.size:
        x0, y0, x1, y1 = x[end - 1], y[end - 1], x[end], y[end]  # x0 < limit <= x1
        y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
    else:
        y_lim = y[-1]
    xs.append(limit)
    ys.append(y_lim)
    return float(np.trapezoid(ys, xs))


def aupro(scores: np.ndarray, masks: np.ndarray, limit: float = FPR_LIMIT) -> float | None:
    """Normalised area under the PRO curve up to ``FPR = limit``:
    ``AUPRO = (1 / limit) integral_0^limit PRO dFPR`` (module docstring).

    ``scores`` and ``masks`` are ``(N, H, W)`` (or one ``(H, W)`` image); ``None`` when
    there is no defect region or no normal pixel.
    """
    scores, masks = np.asarray(scores), np.asarray(masks)
    if scores.ndim == 2:
        scores, masks = scores[None], masks[None]
    curve = pro_curve(scores, masks)
    if curve is None:
        return None
    fpr, pro = curve
    return integrate_to(fpr, pro, limit) / limit
