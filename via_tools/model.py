"""The one canonical annotation model that every format converts to and from.

An :class:`AnnotationSet` holds :class:`ImageRecord` objects, each holding :class:`Region` objects.
Coordinates are absolute pixels (``x`` right, ``y`` down, origin at the top-left corner of the image).

A region keeps two views of itself:

* ``shape``: the source region's own shape, exactly as the source wrote it (VIA's
  ``shape_attributes``: ``{"name": "rect", "x": .., "y": .., "width": .., "height": ..}``), so that a
  writer of the same format gives back the same file. ``None`` when the source had only polygons.
* ``polygons``: the training geometry, a tuple of ``(N, 2)`` float arrays in pixels (several parts for
  multi-part shapes). Empty for shapes that are not instances (polyline, point, temporal segments).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from via_tools.errors import AnnotationError, json_text

#: Region shapes that enclose an area and become training instances.
AREA_SHAPES = frozenset({"polygon", "rect", "circle", "ellipse"})
#: Region shapes kept for round trips that are not instances.
PASSIVE_SHAPES = frozenset({"polyline", "point"})

DEFAULT_LABEL = "shoe"


#: Largest coordinate magnitude in pixels: far beyond any image, and small enough that every area and box
#: computed from coordinates stays a finite number.
MAX_COORDINATE_PX = 1e9
#: Most points in one region (a polygon part, a polyline).
MAX_POINTS = 100_000


def bad_points(points: np.ndarray) -> np.ndarray:
    """Indices of the rows of an ``(N, 2)`` array that are not finite or beyond :data:`MAX_COORDINATE_PX`."""
    with np.errstate(invalid="ignore"):
        return np.flatnonzero(~(np.abs(points) <= MAX_COORDINATE_PX).all(axis=1))


def point_error(where: str, what: str, k: int, point: Any) -> AnnotationError:
    """The error for point ``k`` of a shape that :func:`bad_points` refused."""
    from via_tools.jsontext import number_text

    x, y = (number_text(v) for v in point)
    if np.isfinite(np.asarray(point, dtype=np.float64)).all():
        return AnnotationError(f"{where}: {what} point {k} is ({x}, {y}), beyond \u00b1{MAX_COORDINATE_PX:.0e} px "
                               "(the coordinate limit)")
    return AnnotationError(f"{where}: {what} point {k} is ({x}, {y}), not a finite number")


def check_points(points: np.ndarray, *, where: str, what: str = "polygon") -> np.ndarray:
    """Returns ``points`` (a float ``(N, 2)`` array) when every coordinate is finite and within the limit.

    The one geometry check of via_tools: readers apply it before and after coordinates become pixels,
    and writers before they write.

    Raises:
        AnnotationError: naming ``where``, the shape and the first bad point; or more than :data:`MAX_POINTS`.

    Example:
        >>> check_points(np.array([[0.0, 1.0], [1e300, 2.0]]), where="a.json: region 3")
        Traceback (most recent call last):
        ...
        via_tools.errors.AnnotationError: a.json: region 3: polygon point 1 is (1e+300, 2), beyond ±1e+09 px (the coordinate limit)
    """
    if len(points) > MAX_POINTS:
        raise AnnotationError(f"{where}: {what} has {len(points)} points, more than the limit of {MAX_POINTS}")
    bad = bad_points(points)
    if bad.size:
        raise point_error(where, what, int(bad[0]), points[bad[0]])
    return points


def as_points(points: Any, *, where: str = "", what: str = "polygon", minimum: int = 3) -> np.ndarray:
    """Returns ``points`` as a float64 ``(N, 2)`` array, raising :class:`AnnotationError` when it is not one.

    Args:
        points: a sequence of ``(x, y)`` pairs or an ``(N, 2)`` array, in pixels.
        where: names the file, image and region for the error message.
        what: the shape's name in messages.
        minimum: fewest points.

    Example:
        >>> as_points([(0, 0), (4, 0)], what="polyline", minimum=2).shape
        (2, 2)
    """
    try:
        arr = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise AnnotationError(f"{where}: {what} points must be an array of [x, y] pairs of numbers") from None
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise AnnotationError(f"{where}: {what} points must be an array of [x, y] pairs of numbers")
    if arr.shape[0] < minimum:
        raise AnnotationError(f"{where}: {what} has {arr.shape[0]} points, at least {minimum} are needed")
    return check_points(arr, where=where, what=what)


def as_polygon(points: Any, *, where: str = "") -> np.ndarray:
    """Returns ``points`` as a float64 ``(N, 2)`` polygon (at least 3 finite points within the coordinate limit).

    Args:
        points: a sequence of ``(x, y)`` pairs or an ``(N, 2)`` array, in pixels.
        where: names the file, image and region for the error message.

    Example:
        >>> as_polygon([(0, 0), (4, 0), (4, 3)]).shape
        (3, 2)
    """
    return as_points(points, where=where)


@dataclass(eq=False)
class Region:
    """One annotated region of an image.

    Args:
        label: class name (``"shoe"``).
        polygons: training geometry in absolute pixels; empty for passive shapes.
        shape: the source shape as written (VIA ``shape_attributes`` style dict), or ``None``.
        attributes: the source region's attributes (VIA ``region_attributes``), kept verbatim.
        score: model confidence in ``[0, 1]`` for predictions, ``None`` for human labels.
        region_id: the source's id for this region (COCO annotation id, Label Studio result id).
        extra: anything else a format needs for a faithful round trip.

    Example:
        >>> r = Region(label="shoe", polygons=(as_polygon([(0, 0), (10, 0), (10, 10)]),))
        >>> r.is_instance
        True
    """

    label: str
    polygons: tuple[np.ndarray, ...] = ()
    shape: dict[str, Any] | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    score: float | None = None
    region_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.label, str):
            raise AnnotationError(f"region {self.region_id}: label must be a string, got {self.label!r}")
        self.polygons = tuple(as_polygon(p, where=f"region {self.region_id}") for p in self.polygons)
        if self.score is not None:
            if not isinstance(self.score, int | float) or not (0.0 <= float(self.score) <= 1.0):
                raise AnnotationError(f"region {self.region_id}: score must be in [0, 1], got {self.score!r}")
            self.score = float(self.score)

    @property
    def shape_name(self) -> str:
        """The source shape's name (``polygon`` when the source had only polygons)."""
        return (self.shape or {}).get("name", "polygon")

    @property
    def is_instance(self) -> bool:
        """True when the region encloses an area and is used for training."""
        return bool(self.polygons)

    def bbox_xyxy(self) -> tuple[float, float, float, float]:
        """Tight box around every polygon part, in pixels."""
        if not self.polygons:
            raise AnnotationError(f"region {self.region_id}: a {self.shape_name} has no box")
        pts = np.concatenate(self.polygons)
        x0, y0 = pts.min(axis=0)
        x1, y1 = pts.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)

    def area_px(self) -> float:
        """Polygon area in square pixels (shoelace formula, parts added)."""
        total = 0.0
        for p in self.polygons:
            x, y = p[:, 0], p[:, 1]
            total += 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
        return total


@dataclass(eq=False)
class ImageRecord:
    """One image and its regions.

    Args:
        file_name: file name, relative path or URI of the image.
        width_px / height_px: image size in pixels, ``None`` when the source does not say.
        regions: the image's regions, in source order.
        file_size: size in bytes (VIA keys images by file name + size), ``None`` when unknown.
        file_attributes: the source's per-image attributes, kept verbatim.
        image_id: the source's id for the image (VIA key, COCO id, Label Studio task id).
        extra: anything else a format needs for a faithful round trip.
    """

    file_name: str
    width_px: int | None = None
    height_px: int | None = None
    regions: list[Region] = field(default_factory=list)
    file_size: int | None = None
    file_attributes: dict[str, Any] = field(default_factory=dict)
    image_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.file_name, str):
            raise AnnotationError(f"image {self.image_id}: file name must be a string, got {self.file_name!r}")
        for name in ("width_px", "height_px"):
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise AnnotationError(f"image {self.file_name!r}: {name} must be a positive integer, got {json_text(v)}")
            if v > MAX_COORDINATE_PX:
                raise AnnotationError(f"image {self.file_name!r}: {name} {v} is beyond the limit of "
                                      f"{MAX_COORDINATE_PX:.0e} px")
            setattr(self, name, v)
        self.regions = list(self.regions)

    @property
    def resolution_wh(self) -> tuple[int, int] | None:
        if self.width_px is None or self.height_px is None:
            return None
        return self.width_px, self.height_px

    @property
    def instances(self) -> list[Region]:
        """The regions used for training (area shapes), in order."""
        return [r for r in self.regions if r.is_instance]


@dataclass(eq=False)
class AnnotationSet:
    """A set of annotated images, the canonical form of every format.

    Args:
        images: the images in source order.
        labels: class names, in class-index order (index 0 is the first class, background is not listed).
        source_format: the format read (``via1``, ``via2``, ``via3``, ``csv``, ``coco``, ``ls``), if any.
        meta: format-level data kept for round trips (VIA settings and attribute definitions, COCO info...).
    """

    images: list[ImageRecord] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    source_format: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.images = list(self.images)
        if not self.labels:
            self.labels = self.collect_labels()

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self.images)

    def __len__(self) -> int:
        return len(self.images)

    def collect_labels(self) -> list[str]:
        """Labels of every instance, in order of first appearance."""
        seen: dict[str, None] = {}
        for img in self.images:
            for r in img.regions:
                if r.is_instance:
                    seen.setdefault(r.label, None)
        return list(seen)

    def count_regions(self) -> int:
        return sum(len(img.regions) for img in self.images)

    def count_instances(self) -> int:
        return sum(len(img.instances) for img in self.images)

    def by_file_name(self) -> Mapping[str, ImageRecord]:
        return {img.file_name: img for img in self.images}


def polygons_close(a: Iterable[np.ndarray], b: Iterable[np.ndarray], *, tol_px: float = 1e-6) -> bool:
    """True when two lists of polygon parts hold the same points within ``tol_px``."""
    a, b = list(a), list(b)
    return len(a) == len(b) and all(p.shape == q.shape and np.allclose(p, q, atol=tol_px, rtol=0) for p, q in zip(a, b, strict=True))


def is_finite_number(v: Any) -> bool:
    """True for a JSON number that a 64-bit float holds (not a boolean, NaN, infinite or a huge integer)."""
    if not isinstance(v, int | float) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False
