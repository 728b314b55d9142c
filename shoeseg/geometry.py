"""Masks and polygons: the one place where polygons become masks, and masks become polygons.

Coordinates are continuous pixels: pixel ``(row i, column j)`` covers ``[j, j + 1) x [i, i + 1)``, so its
centre is ``(j + 0.5, i + 0.5)`` (detectron2's and COCO's convention). :func:`mask_to_polygons` traces the
centres of a mask's boundary pixels, and :func:`polygons_to_mask` fills every pixel whose centre lies inside
or on a polygon (OpenCV's scan conversion, with vertices rounded to the nearest 1/16 px and edge crossings
rounded to the nearest pixel centre, so the fill may reach half a pixel past a fractional outline). A traced
mask therefore rasterises back to itself exactly before simplification.

With the default tolerance (1 px), rasterising the simplified polygons gives back the mask with IoU >= 0.95
for shapes of at least 32x32 px (tested on random ellipses and unions of two).

Multi-part shapes: every separate part of a mask becomes its own polygon (largest first); parts smaller than
``min_area_px``, or thinner on average than ``min_width_px`` (a strip one or two pixels wide along an image edge,
whose outline through its boundary pixels' centres is at most a pixel wide: Label Studio lists such a region but
does not draw it), are dropped; holes are filled, since VIA and Label Studio polygons cannot express them. Every
polygon is simple (no self-crossing or self-touching outline): a part pinched at one pixel becomes two.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import cv2
import numpy as np
import shapely

#: The pre-labels' vertex budget (docs/real-data.md, "The vertex budget of the pre-labels"): a tolerance of 1 px
#: or 0.5 % of the shoe's box diagonal, whichever is larger, and at most 40 vertices a polygon. Every predictor's
#: default (:class:`shoeseg.predict.OutputSettings`) and the services' (``SHOESEG_POLYGON_*``).
POLYGON_TOLERANCE_PX = 1.0
POLYGON_TOLERANCE_REL = 0.005
POLYGON_MAX_VERTICES = 40
#: The pre-labels' thinnest part: a mask part whose mean width (twice its pixels over its traced outline's length,
#: about the number of pixels across a strip) is under 2.5 px, a strip one or two pixels wide, traces as an outline
#: at most a pixel wide, a region Label Studio lists but does not draw (an annotator cannot see it to delete it).
MIN_PART_WIDTH_PX = 2.5

_SHIFT = 4  # fixed-point bits for sub-pixel polygon filling (1/16 px)


def polygons_to_mask(polygons: Iterable[np.ndarray] | np.ndarray, height_px: int, width_px: int) -> np.ndarray:
    """Rasterises polygon parts (absolute pixels) into a bool ``(height_px, width_px)`` mask.

    Parts are filled with the even-odd rule per part and united, so overlapping parts add up.

    Args:
        polygons: one ``(N, 2)`` array of ``(x, y)`` points, or an iterable of them (parts).
        height_px / width_px: mask size.

    Example:
        >>> polygons_to_mask([np.array([[0.5, 0.5], [3.5, 0.5], [3.5, 3.5], [0.5, 3.5]])], 6, 6).sum().item()
        16
    """
    if height_px <= 0 or width_px <= 0:
        raise ValueError(f"mask size must be positive, got {height_px}x{width_px}")
    mask = np.zeros((int(height_px), int(width_px)), dtype=np.uint8)
    if isinstance(polygons, np.ndarray) and polygons.ndim == 2:
        polygons = (polygons,)
    for poly in polygons:
        pts = np.asarray(poly, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
            raise ValueError(f"a polygon must be an (N>=3, 2) array of points, got shape {pts.shape}")
        if not np.isfinite(pts).all():
            raise ValueError("polygon has NaN or infinite coordinates")
        fixed = np.round((pts - 0.5) * (1 << _SHIFT)).astype(np.int32)
        cv2.fillPoly(mask, [fixed.reshape(-1, 1, 2)], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return mask.astype(bool)


def mask_to_polygons(
    mask: np.ndarray,
    *,
    tolerance_px: float = 1.0,
    tolerance_rel: float = 0.0,
    max_vertices: int | None = None,
    min_area_px: float = 16.0,
    min_width_px: float = 0.0,
    largest_only: bool = False,
    offset_xy: tuple[float, float] = (0.0, 0.0),
) -> tuple[np.ndarray, ...]:
    """Traces a mask's outer contours into simplified polygons (absolute pixels).

    The vertex budget follows the shape: each part is simplified with the larger of ``tolerance_px`` and
    ``tolerance_rel`` times its box diagonal, so a big shoe and a small one get outlines equally tight for
    their size, and a part with more than ``max_vertices`` vertices is simplified again with twice the
    tolerance until it fits (Douglas-Peucker keeps the corners, the vertices that carry the shape).

    Args:
        mask: ``(H, W)`` bool or 0/1 array.
        tolerance_px: Douglas-Peucker tolerance; 0 keeps every contour point.
        tolerance_rel: tolerance relative to each part's box diagonal (0: ``tolerance_px`` alone).
        max_vertices: the most vertices of one polygon (``None``: no cap; at least 3).
        min_area_px: parts with fewer mask pixels than this are dropped (specks).
        min_width_px: parts whose mean width (twice their pixels over their traced outline's length) is under
            this are dropped (lines; 0 keeps them, :data:`MIN_PART_WIDTH_PX` is what the pre-labels use).
        largest_only: keep only the largest part.
        offset_xy: added to every point (for masks that are crops of a larger image).

    Returns:
        ``(N, 2)`` float64 arrays, largest part first; ``()`` for an empty mask.

    Example:
        >>> m = np.zeros((40, 40), bool); m[5:35, 10:30] = True
        >>> [p.shape for p in mask_to_polygons(m)]
        [(4, 2)]
        >>> m[0:2, :] = True  # a strip two pixels tall along the top edge
        >>> len(mask_to_polygons(m)), len(mask_to_polygons(m, min_width_px=MIN_PART_WIDTH_PX))
        (2, 1)
    """
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    if not m.any():
        return ()
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    parts: list[tuple[float, np.ndarray]] = []
    for k in np.argsort(-stats[1:, cv2.CC_STAT_AREA]) + 1:
        area = int(stats[k, cv2.CC_STAT_AREA])
        if area < min_area_px:
            continue
        x, y, w, h = (int(v) for v in stats[k, :4])
        comp = (labels[y : y + h, x : x + w] == k).astype(np.uint8)
        contours, _ = cv2.findContours(comp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if not contours:
            continue
        raw = max(contours, key=len).reshape(-1, 2)
        if min_width_px > 0 and 2.0 * area < min_width_px * max(cv2.arcLength(raw.reshape(-1, 1, 2), True), 1.0):
            continue
        tol = max(float(tolerance_px), float(tolerance_rel) * float(np.hypot(w, h)))
        simplified = cv2.approxPolyDP(raw.reshape(-1, 1, 2), tol, True).reshape(-1, 2) if tol > 0 else raw
        if max_vertices is not None:
            cap = max(3, int(max_vertices))
            while len(simplified) > cap:
                tol = max(2 * tol, 0.5)
                simplified = cv2.approxPolyDP(raw.reshape(-1, 1, 2), tol, True).reshape(-1, 2)
        for pts in _simple_polygons(simplified, raw, tol, w, h):
            parts.append((_area(pts), pts + (x + 0.5 + offset_xy[0], y + 0.5 + offset_xy[1])))
        if largest_only:
            break
    parts.sort(key=lambda t: -t[0])
    return tuple(p for _, p in parts[: 1 if largest_only else None])


def _area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _simple_polygons(simplified: np.ndarray, raw: np.ndarray, tolerance_px: float, w: int, h: int) -> list[np.ndarray]:
    # Douglas-Peucker can make an outline cross itself, and an 8-connected part pinched at one pixel traces
    # an outline that touches itself; Label Studio and VIA want simple polygons. Such parts are repaired
    # (split at the pinch) and simplified again without changing their topology.
    pts = simplified.astype(np.float64)
    if len(pts) >= 3 and shapely.Polygon(pts).is_valid:
        return [pts]
    if len(raw) < 3:
        return [_box_polygon(w, h)]
    fixed = shapely.make_valid(shapely.Polygon(raw.astype(np.float64)))
    out = []
    for g in shapely.get_parts(fixed):
        if g.geom_type != "Polygon" or g.area < 0.5:
            continue
        if tolerance_px > 0:
            g = g.simplify(tolerance_px, preserve_topology=True)
        ring = np.asarray(g.exterior.coords, dtype=np.float64)[:-1]
        if len(ring) >= 3:
            out.append(ring)
    return out or [_box_polygon(w, h)]


def _box_polygon(w: int, h: int) -> np.ndarray:
    # Thin (1-pixel) parts trace as lines; widen them by a hair so the polygon keeps an area.
    x1, y1 = max(w - 1, 0.25), max(h - 1, 0.25)
    return np.array([[0, 0], [x1, 0], [x1, y1], [0, y1]], dtype=np.float64)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two same-size masks; 1.0 when both are empty.

    Example:
        >>> a = np.zeros((4, 4), bool); a[:2] = True
        >>> mask_iou(a, a), mask_iou(a, ~a)
        (1.0, 0.0)
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in size: {a.shape} and {b.shape}")
    union = np.count_nonzero(a | b)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(a & b) / union)


def mask_iou_matrix(a: Sequence[np.ndarray] | np.ndarray, b: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Pairwise IoU between two lists of same-size masks, as an ``(len(a), len(b))`` float array."""
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    fa = a.reshape(len(a), -1).astype(np.float32)
    fb = b.reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def mask_box_xyxy(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Tight box around a mask's pixels in continuous pixels (``x1, y1`` exclusive), or None when empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    if len(ys) == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1)


def flip_polygons_x(polygons: Iterable[np.ndarray], width_px: int) -> tuple[np.ndarray, ...]:
    """Mirrors polygons left-right in an image ``width_px`` wide (``x -> width_px - x``)."""
    out = []
    for p in polygons:
        q = np.array(p, dtype=np.float64, copy=True)
        q[:, 0] = width_px - q[:, 0]
        out.append(q[::-1].copy())  # keep the winding direction
    return tuple(out)
