"""VIA region shapes to polygons, and the checks every polygon passes before it becomes an instance.

VIA keeps a region's geometry as ``shape_attributes``: ``polygon`` (``all_points_x`` / ``all_points_y``),
``rect`` (``x``, ``y``, ``width``, ``height``), ``circle`` (``cx``, ``cy``, ``r``), ``ellipse``
(``cx``, ``cy``, ``rx``, ``ry`` and, from VIA 2.0.10, ``theta`` in radians), ``polyline`` and ``point``.
Area shapes become polygons in pixels; polylines and points are kept as regions without polygons.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import shapely

from via_tools.errors import AnnotationError, json_text, json_type
from via_tools.model import MAX_POINTS, bad_points, check_points, point_error
from via_tools.report import Report

#: Points used to sample a circle or an ellipse into a polygon.
CURVE_POINTS = 48

#: Shape names VIA 1.x and 2.x write in ``shape_attributes``.
VIA_SHAPE_NAMES = frozenset({"polygon", "rect", "circle", "ellipse", "polyline", "point"})

_UNIT_CIRCLE = np.stack(
    [np.cos(np.linspace(0.0, 2.0 * math.pi, CURVE_POINTS, endpoint=False)),
     np.sin(np.linspace(0.0, 2.0 * math.pi, CURVE_POINTS, endpoint=False))],
    axis=1,
)


_NONE = object()


def _number(shape: dict, key: str, *, where: str, positive: bool = False, required: bool = True) -> float | None:
    v = shape.get(key)
    if v is None and not required:
        return None
    if v is None:
        raise AnnotationError(f"{where}: {shape.get('name')} shape has no '{key}'")
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise AnnotationError(f"{where}: {shape.get('name')} '{key}' must be a number, got {json_text(v)}")
    try:
        f = float(v)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f):
        raise AnnotationError(f"{where}: {shape.get('name')} '{key}' is {json_text(v)}, not a finite number")
    if positive and f <= 0:
        raise AnnotationError(f"{where}: {shape.get('name')} '{key}' must be positive, got {json_text(v)}")
    return f


def _coords(shape: dict, key: str, *, where: str) -> np.ndarray:
    v = shape.get(key)
    name = shape.get("name")
    if not isinstance(v, list):
        raise AnnotationError(f"{where}: {name} '{key}' must be an array of numbers, got {json_type(v)}")
    try:
        arr = np.asarray(v) if v else np.zeros(0)
    except (ValueError, TypeError, OverflowError):
        arr = np.zeros((0, 0))
    if arr.ndim != 1 or arr.dtype.kind not in "iuf":
        bad = next((p for p in v if isinstance(p, bool) or not isinstance(p, int | float)), _NONE)
        if bad is _NONE:
            raise AnnotationError(f"{where}: {name} '{key}' holds a number too large for a 64-bit float")
        raise AnnotationError(f"{where}: {name} '{key}' must hold numbers only, got {json_text(bad)}")
    return arr.astype(np.float64, copy=False)


def shape_to_polygons(shape: Any, *, where: str) -> tuple[np.ndarray, ...]:
    """Turns a VIA ``shape_attributes`` dict into polygon parts in pixels.

    Args:
        shape: the VIA shape dict (``{"name": "rect", "x": 10, "y": 20, "width": 30, "height": 40}``).
        where: names the file, image and region for error messages
            (``"shoes.json: image 'a.jpg': region 3"``).

    Returns:
        One ``(N, 2)`` float array for area shapes (circles and ellipses sampled with
        :data:`CURVE_POINTS` points); ``()`` for polylines and points.

    Raises:
        AnnotationError: unknown shape name, missing or non-numeric fields, NaN or infinite values,
            coordinate lists of different lengths or with fewer than 3 points.

    Example:
        >>> shape_to_polygons({"name": "rect", "x": 0, "y": 0, "width": 4, "height": 2}, where="r")[0].tolist()
        [[0.0, 0.0], [4.0, 0.0], [4.0, 2.0], [0.0, 2.0]]
    """
    if not isinstance(shape, dict):
        raise AnnotationError(f"{where}: shape_attributes must be an object, got {json_type(shape)}")
    name = shape.get("name")
    if name in ("polygon", "polyline"):
        xs = _coords(shape, "all_points_x", where=where)
        ys = _coords(shape, "all_points_y", where=where)
        if xs.shape != ys.shape:
            raise AnnotationError(
                f"{where}: {name} all_points_x has {xs.size} values but all_points_y has {ys.size}"
            )
        minimum = 3 if name == "polygon" else 2
        if xs.size < minimum:
            raise AnnotationError(f"{where}: {name} has {xs.size} points, at least {minimum} are needed")
        points = check_points(np.stack([xs, ys], axis=1), where=where, what=name)
        return (points,) if name == "polygon" else ()
    if name == "point":
        check_points(np.array([[_number(shape, "cx", where=where), _number(shape, "cy", where=where)]]),
                     where=where, what=name)
        return ()
    with np.errstate(over="ignore", invalid="ignore"):  # huge values overflow here and are refused below
        if name == "rect":
            x = _number(shape, "x", where=where)
            y = _number(shape, "y", where=where)
            w = _number(shape, "width", where=where)
            h = _number(shape, "height", where=where)
            points = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], dtype=np.float64)
        elif name == "circle":
            cx = _number(shape, "cx", where=where)
            cy = _number(shape, "cy", where=where)
            r = _number(shape, "r", where=where, positive=True)
            points = _UNIT_CIRCLE * r + (cx, cy)
        elif name == "ellipse":
            cx = _number(shape, "cx", where=where)
            cy = _number(shape, "cy", where=where)
            rx = _number(shape, "rx", where=where, positive=True)
            ry = _number(shape, "ry", where=where, positive=True)
            theta = _number(shape, "theta", where=where, required=False) or 0.0
            c, s = math.cos(theta), math.sin(theta)
            points = (_UNIT_CIRCLE * (rx, ry)) @ np.array([[c, s], [-s, c]]) + (cx, cy)
        elif isinstance(name, str):
            raise AnnotationError(f"{where}: unknown shape {name!r} (known: {', '.join(sorted(VIA_SHAPE_NAMES))})")
        else:
            raise AnnotationError(f"{where}: shape_attributes has no shape name (got name={name!r})")
    return (check_points(points, where=where, what=name),)


def _number_out(v: float) -> int | float:
    r = round(float(v), 3)
    return int(r) if r.is_integer() else r


def polygon_to_shape(polygon: np.ndarray) -> dict[str, Any]:
    """A VIA ``polygon`` shape dict for one ``(N, 2)`` polygon in pixels (integral values written as ints).

    Example:
        >>> polygon_to_shape(np.array([[0, 0], [4, 0], [4, 2.5]]))
        {'name': 'polygon', 'all_points_x': [0, 4, 4], 'all_points_y': [0, 0, 2.5]}
    """
    return {
        "name": "polygon",
        "all_points_x": [_number_out(v) for v in polygon[:, 0]],
        "all_points_y": [_number_out(v) for v in polygon[:, 1]],
    }


def _area2(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _polygon_parts(geom: Any) -> list[np.ndarray]:
    if geom is None or geom.is_empty:
        return []
    kind = geom.geom_type
    if kind == "Polygon":
        coords = np.asarray(geom.exterior.coords, dtype=np.float64)[:-1]
        return [coords] if len(coords) >= 3 else []
    if kind in ("MultiPolygon", "GeometryCollection"):
        return [p for g in geom.geoms for p in _polygon_parts(g)]
    return []


def sanitize_many(
    items: Sequence[tuple[tuple[np.ndarray, ...], int | None, int | None, str]],
    *,
    report: Report,
    check_validity: Sequence[bool] | None = None,
    keep_degenerate: bool = False,
) -> list[tuple[np.ndarray, ...]]:
    """:func:`sanitize_polygons` for many regions at once, with the checks vectorised over all of them.

    Args:
        items: ``(polygons, width_px, height_px, where)`` per region; sizes may be ``None`` (no clipping).
        report: receives ``clipped points`` and ``repaired polygons`` counts.
        check_validity: per item, whether self-intersections are possible (``False`` for rects, circles
            and ellipses, which are simple by construction); all ``True`` when omitted.
        keep_degenerate: instead of raising for a polygon without area, leave it out of the item's
            polygons (the region is kept, as a region that is not an instance) and count it as
            ``degenerate polygons (no area) kept as non-instances``.

    Raises:
        AnnotationError: a polygon without area (after clipping or repair), unless ``keep_degenerate``.

    Returns:
        The sanitized polygons per item, in order.

    Example:
        >>> sq = np.array([[0, 0], [4, 0], [4, 4], [0, 4]], dtype=float)
        >>> [len(p) for p in sanitize_many([((sq,), 10, 10, "r")], report=Report())]
        [1]
    """
    out: list[tuple[np.ndarray, ...]] = [p for p, _, _, _ in items]
    polys: list[np.ndarray] = []
    owner: list[int] = []
    for i, (parts, _, _, _) in enumerate(items):
        for p in parts:
            polys.append(p)
            owner.append(i)
    if not polys:
        return out
    lengths = np.fromiter((len(p) for p in polys), dtype=np.int64, count=len(polys))
    pts = np.concatenate(polys)
    poly_of_pt = np.repeat(np.arange(len(polys)), lengths)
    owner_arr = np.asarray(owner, dtype=np.int64)

    # 0. the one geometry check: finite, within the coordinate limit, not too many points
    bad = bad_points(pts)
    if bad.size:
        k = int(poly_of_pt[bad[0]])
        raise point_error(items[owner[k]][3], "polygon", int(bad[0] - (np.cumsum(lengths)[k] - lengths[k])), pts[bad[0]])
    if lengths.max() > MAX_POINTS:
        k = int(np.argmax(lengths))
        check_points(polys[k], where=items[owner[k]][3])

    # 1. clip to the image where the size is known
    w_item = np.array([np.inf if w is None else float(w) for _, w, _, _ in items])
    h_item = np.array([np.inf if h is None else float(h) for _, _, h, _ in items])
    w_pt = w_item[owner_arr][poly_of_pt]
    h_pt = h_item[owner_arr][poly_of_pt]
    oob = (pts[:, 0] < 0) | (pts[:, 1] < 0) | (pts[:, 0] > w_pt) | (pts[:, 1] > h_pt)
    changed = np.zeros(len(polys), dtype=bool)
    if oob.any():
        n_oob = np.bincount(poly_of_pt, weights=oob, minlength=len(polys)).astype(np.int64)
        for k in np.flatnonzero(n_oob):
            i = owner[k]
            _, w, h, where = items[i]
            size = f"{w}x{h} px" if w is not None and h is not None else "the image (negative coordinates)"
            report.warn("clipped points", f"{where}: {n_oob[k]} of {lengths[k]} points outside {size}")
        pts = pts.copy()
        pts[:, 0] = np.clip(pts[:, 0], 0.0, w_pt)
        pts[:, 1] = np.clip(pts[:, 1], 0.0, h_pt)
        changed[np.flatnonzero(n_oob)] = True

    # 2. self-intersections: shapely's vectorised validity check on the polygons that may have them
    candidates = lengths >= 4
    if check_validity is not None:
        candidates &= np.asarray(check_validity, dtype=bool)[owner_arr]
    fixed: dict[int, list[np.ndarray]] = {}
    dropped: dict[int, str] = {}
    cand = np.flatnonzero(candidates)
    if cand.size:
        sel = candidates[poly_of_pt]
        rings = shapely.linearrings(pts[sel], indices=np.searchsorted(cand, poly_of_pt[sel]))
        geoms = shapely.polygons(rings)
        valid = shapely.is_valid(geoms)
        bad = np.flatnonzero(~valid)
        repaired = shapely.make_valid(geoms[bad]) if bad.size else []
        for j, geom in zip(bad, repaired, strict=True):
            k = int(cand[j])
            where = items[owner[k]][3]
            parts = [p for p in _polygon_parts(geom) if abs(_area2(p)) > 1e-9]
            if not parts:
                dropped[k] = (f"{where}: polygon has zero area ({lengths[k]} points"
                              f"{', after clipping to the image' if changed[k] else ''}; nothing left to repair)")
                continue
            report.warn("repaired polygons", f"{where}: self-intersecting polygon split into {len(parts)} part(s)")
            fixed[k] = parts

    # 3. area (shoelace, vectorised): zero-area polygons cannot become instances
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    nxt = np.arange(len(pts)) + 1
    nxt[starts + lengths - 1] = starts
    x, y = pts[:, 0], pts[:, 1]
    with np.errstate(over="ignore", invalid="ignore"):  # huge coordinates: an overflowing area is not zero
        area2 = np.bincount(poly_of_pt, weights=x * y[nxt] - x[nxt] * y, minlength=len(polys))
    degenerate = np.abs(area2) <= 1e-9
    degenerate[list(fixed) + list(dropped)] = False
    for k in np.flatnonzero(degenerate):
        dropped[int(k)] = (f"{items[owner[k]][3]}: polygon has zero area ({lengths[k]} points"
                           f"{', after clipping to the image' if changed[k] else ''})")
    if dropped and not keep_degenerate:
        raise AnnotationError(dropped[min(dropped)])
    for msg in dropped.values():
        report.warn("degenerate polygons (no area) kept as non-instances", msg)
    fixed.update({k: [] for k in dropped})

    if not changed.any() and not fixed:
        return out
    affected = {owner[k] for k in [*np.flatnonzero(changed), *fixed]}
    per_item: dict[int, list[np.ndarray]] = {i: [] for i in affected}
    for k, i in enumerate(owner):
        if i in per_item:
            per_item[i].extend(fixed[k] if k in fixed else [pts[starts[k]:starts[k] + lengths[k]]])
    for i, parts in per_item.items():
        out[i] = tuple(parts)
    return out


def sanitize_polygons(
    polygons: Sequence[np.ndarray],
    *,
    width_px: int | None,
    height_px: int | None,
    where: str,
    report: Report,
) -> tuple[np.ndarray, ...]:
    """Makes polygons fit for training: clipped to the image, free of self-intersections, with area.

    Every change is counted in ``report`` (``clipped points``, ``repaired polygons``); nothing is
    dropped silently.

    Args:
        polygons: polygon parts, ``(N, 2)`` arrays in pixels.
        width_px / height_px: image size; ``None`` skips clipping.
        where: names the file, image and region for messages.
        report: receives the counts.

    Raises:
        AnnotationError: a polygon with zero area (after clipping) or nothing left after repair.

    Example:
        >>> bow_tie = np.array([[0, 0], [4, 4], [4, 0], [0, 4]], dtype=float)
        >>> r = Report()
        >>> len(sanitize_polygons([bow_tie], width_px=8, height_px=8, where="r", report=r))
        2
        >>> r.counts["repaired polygons"]
        1
    """
    return sanitize_many([(tuple(polygons), width_px, height_px, where)], report=report)[0]
