"""A detection's soft mask before it is thresholded: its edges snapped to the image's, its quality in its score.

The mask head gives 28×28 probabilities per box, pasted into the image with bilinear interpolation: rounded
blobs that cut a shoe's toe tips, heels and sole edges, and that are as confident about a trouser leg as
about a shoe. Two steps on the pasted probabilities, neither with weights of its own nor any training, both
measured on held-out shoes (docs/real-data.md, "Refined and rescored soft masks"):

* **edge-guided refinement** (:func:`refine_in_box`): a guided filter (He, Sun and Tang, "Guided Image
  Filtering", 2010) of the probabilities with the grey image as the guide, over the box and a margin, with a
  window that is a fraction of the box's diagonal. Within each window the output is a linear function of the
  image's intensity fitted to the probabilities, so a soft edge that lies near an intensity edge moves onto
  it, while flat regions stay as they were;
* **mask-quality rescoring** (:func:`maskness`): the detection's score times the mean probability over the
  pixels its mask keeps (SOLOv2's "maskness"): a detection whose mask the head is unsure of drops in the
  ranking and below the serving threshold, as Mask Scoring R-CNN does with a learnt mask-IoU head.

Only numpy and OpenCV are imported.

Example:
    >>> import numpy as np
    >>> soft = np.zeros((4, 4), np.float32); soft[1:3, 1:3] = [[0.9, 0.7], [0.8, 0.6]]
    >>> round(maskness(soft, 0.5), 2)
    0.75
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

#: The guided filter's window radius as a fraction of the box diagonal (0: no refinement).
REFINE_RADIUS_REL = 0.04
#: The guided filter's regulariser, in squared grey levels of ``[0, 1]``: intensity steps much smaller than its
#: square root are treated as flat.
REFINE_EPS = 0.01


def grey(image: np.ndarray) -> np.ndarray:
    """An RGB uint8 ``(H, W, 3)`` image as float32 grey levels in ``[0, 1]`` (the guide of :func:`refine_in_box`)."""
    if image.ndim == 2:
        return image.astype(np.float32) / 255.0
    return cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """The guided filter of ``src`` with the grey ``guide`` (both float32 ``(H, W)``), window ``2 * radius + 1``.

    Each window fits ``src ≈ a * guide + b`` by least squares, with ``eps`` pulling ``a`` towards 0; the output
    at a pixel averages the fits of the windows that hold it. Box filters make it linear in the pixels,
    whatever the radius.
    """
    if guide.shape != src.shape:
        raise ValueError(f"guide {guide.shape} and source {src.shape} differ in shape")
    k = (2 * int(radius) + 1,) * 2

    def mean(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, -1, k, borderType=cv2.BORDER_REFLECT)

    mean_i, mean_p = mean(guide), mean(src)
    cov_ip = mean(guide * src) - mean_i * mean_p
    var_i = mean(guide * guide) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return mean(a) * guide + mean(b)


def refine_in_box(guide: np.ndarray, soft: np.ndarray, box_xyxy: Sequence[float], *,
                  radius_rel: float = REFINE_RADIUS_REL, eps: float = REFINE_EPS, thresh: float = 0.5) -> None:
    """Refines the soft mask ``soft`` (float32 ``(H, W)``, changed in place) inside its box and a margin of a tenth
    of the box's longer side, guided by the grey image ``guide`` (:func:`grey`), with a window radius of
    ``radius_rel`` of the box's diagonal (at least 1 pixel); ``radius_rel`` 0 leaves it as it is.

    Outside the box and its margin the probabilities are not touched (the pasted mask is 0 there). The step moves
    edges; it does not erase: a faint mask (probabilities hovering about ``thresh``) that it would leave with
    fewer than half of its pixels above ``thresh`` is kept as the head drew it."""
    if radius_rel <= 0:
        return
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    h, w = soft.shape
    pad = 0.1 * max(x2 - x1, y2 - y1) + 2
    c0, r0 = max(int(math.floor(x1 - pad)), 0), max(int(math.floor(y1 - pad)), 0)
    c1, r1 = min(int(math.ceil(x2 + pad)), w), min(int(math.ceil(y2 + pad)), h)
    if c1 - c0 < 2 or r1 - r0 < 2:
        return
    radius = max(1, round(radius_rel * math.hypot(x2 - x1, y2 - y1)))
    region = soft[r0:r1, c0:c1]
    refined = np.clip(guided_filter(guide[r0:r1, c0:c1], region.astype(np.float32), radius, eps), 0.0, 1.0)
    if 2 * np.count_nonzero(refined > thresh) >= np.count_nonzero(region > thresh):
        region[...] = refined


def maskness(soft: np.ndarray, thresh: float) -> float:
    """The mean probability of the pixels a soft mask keeps at ``thresh`` (0 for a mask that keeps none): in
    ``(thresh, 1]``, 1 for a mask the head is sure of everywhere it draws."""
    kept = soft[soft > thresh]
    return float(kept.mean()) if kept.size else 0.0


__all__ = ["REFINE_EPS", "REFINE_RADIUS_REL", "grey", "guided_filter", "maskness", "refine_in_box"]
