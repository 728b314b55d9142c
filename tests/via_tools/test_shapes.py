"""VIA shapes to polygons, and the polygon checks (clipping, repair, degenerate polygons)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from via_tools.errors import AnnotationError
from via_tools.report import Report
from via_tools.shapes import (
    CURVE_POINTS,
    polygon_to_shape,
    sanitize_many,
    sanitize_polygons,
    shape_to_polygons,
)

WHERE = "f.json: image 'a.jpg': region 3"


def _area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


@pytest.mark.parametrize(
    ("shape", "n_points", "area", "bbox"),
    [
        ({"name": "polygon", "all_points_x": [0, 10, 10, 0], "all_points_y": [0, 0, 5, 5]}, 4, 50.0, (0, 0, 10, 5)),
        ({"name": "polygon", "all_points_x": [1.5, 4, 2], "all_points_y": [1, 1, 3.5]}, 3, 3.125, (1.5, 1, 4, 3.5)),
        ({"name": "rect", "x": 2, "y": 3, "width": 10, "height": 4}, 4, 40.0, (2, 3, 12, 7)),
        ({"name": "circle", "cx": 50, "cy": 40, "r": 10}, CURVE_POINTS, math.pi * 100, (40, 30, 60, 50)),
        ({"name": "ellipse", "cx": 50, "cy": 40, "rx": 20, "ry": 5}, CURVE_POINTS, math.pi * 100, (30, 35, 70, 45)),
        ({"name": "ellipse", "cx": 50, "cy": 40, "rx": 20, "ry": 5, "theta": math.pi / 2}, CURVE_POINTS,
         math.pi * 100, (45, 20, 55, 60)),
    ],
)
def test_area_shapes_become_one_polygon(shape, n_points, area, bbox):
    (poly,) = shape_to_polygons(shape, where=WHERE)
    assert poly.shape == (n_points, 2) and poly.dtype == np.float64
    assert _area(poly) == pytest.approx(area, rel=0.01)
    assert tuple(poly.min(axis=0)) + tuple(poly.max(axis=0)) == pytest.approx(bbox, abs=0.2)


@pytest.mark.parametrize("shape", [
    {"name": "polyline", "all_points_x": [0, 5, 9], "all_points_y": [0, 5, 1]},
    {"name": "point", "cx": 3, "cy": 4},
])
def test_passive_shapes_have_no_polygon(shape):
    assert shape_to_polygons(shape, where=WHERE) == ()


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ({"name": "polygon", "all_points_x": [0, 1, 2, 3], "all_points_y": [0, 1, 2]}, "has 4 values but all_points_y has 3"),
        ({"name": "polygon", "all_points_x": [0, 1], "all_points_y": [0, 1]}, "2 points, at least 3"),
        ({"name": "polygon", "all_points_x": [0, float("nan"), 2], "all_points_y": [0, 1, 2]}, "point 1 is (NaN, 1), not a finite number"),
        ({"name": "polygon", "all_points_x": [0, 1, 2], "all_points_y": [0, float("inf"), 2]}, "point 1 is (1, Infinity), not a finite number"),
        ({"name": "polygon", "all_points_x": [0, "1", 2], "all_points_y": [0, 1, 2]}, "numbers only, got \"1\""),
        ({"name": "polygon", "all_points_x": [0, [1], 2], "all_points_y": [0, 1, 2]}, "numbers only"),
        ({"name": "polygon", "all_points_x": [True, False, True], "all_points_y": [0, 1, 2]}, "numbers only"),
        ({"name": "polygon", "all_points_x": [0, None, 2], "all_points_y": [0, 1, 2]}, "numbers only"),
        ({"name": "polygon", "all_points_x": "0,1,2", "all_points_y": [0, 1, 2]}, "must be an array of numbers"),
        ({"name": "polygon", "all_points_y": [0, 1, 2]}, "must be an array of numbers"),
        ({"name": "rect", "x": 0, "y": 0, "width": "10", "height": 5}, "'width' must be a number"),
        ({"name": "rect", "x": 0, "y": 0, "width": 10}, "no 'height'"),
        ({"name": "rect", "x": 10**400, "y": 0, "width": 1, "height": 1}, "not a finite number"),
        ({"name": "circle", "cx": 0, "cy": 0, "r": -2}, "'r' must be positive"),
        ({"name": "circle", "cx": 0, "cy": 0, "r": True}, "'r' must be a number"),
        ({"name": "ellipse", "cx": 0, "cy": 0, "rx": 2, "ry": 0}, "'ry' must be positive"),
        ({"name": "ellipse", "cx": 0, "cy": 0, "rx": 2, "ry": 1, "theta": float("nan")}, "not a finite number"),
        ({"name": "hexagon"}, "unknown shape 'hexagon'"),
        ({"x": 1}, "no shape name"),
        ({"name": 7}, "no shape name"),
        ([1, 2, 3], "must be an object"),
    ],
)
def test_bad_shapes_name_the_region(shape, message):
    with pytest.raises(AnnotationError) as e:
        shape_to_polygons(shape, where=WHERE)
    assert WHERE in str(e.value) and message in str(e.value)


def test_polygon_to_shape_inverts_shape_to_polygons():
    shape = {"name": "polygon", "all_points_x": [0, 10, 10.5, 0], "all_points_y": [0, 0, 5.25, 5]}
    (poly,) = shape_to_polygons(shape, where=WHERE)
    assert polygon_to_shape(poly) == shape
    assert all(type(v) is int for v in polygon_to_shape(poly)["all_points_y"][:2])


def test_points_outside_the_image_are_clipped_and_counted():
    report = Report()
    poly = np.array([[-5, 2], [15, 2], [30, 25], [5, 25]], dtype=float)
    (out,) = sanitize_polygons([poly], width_px=20, height_px=20, where=WHERE, report=report)
    assert out.min() == 0 and out[:, 0].max() == 20 and out[:, 1].max() == 20
    assert report.counts["clipped points"] == 1
    assert WHERE in report.examples["clipped points"][0] and "3 of 4 points" in report.examples["clipped points"][0]


def test_unknown_size_clips_only_negative_coordinates():
    report = Report()
    poly = np.array([[-1, 0], [5000, 0], [5000, 4000]], dtype=float)
    (out,) = sanitize_polygons([poly], width_px=None, height_px=None, where=WHERE, report=report)
    assert out.tolist() == [[0, 0], [5000, 0], [5000, 4000]]
    assert report.counts["clipped points"] == 1


def test_inside_polygons_are_returned_unchanged_and_uncounted():
    report = Report()
    poly = np.array([[0, 0], [10, 0], [10, 10], [5, 3], [0, 10]], dtype=float)
    (out,) = sanitize_polygons([poly], width_px=10, height_px=10, where=WHERE, report=report)
    assert np.array_equal(out, poly) and not report.counts


def test_self_intersecting_polygon_is_repaired_into_its_parts():
    report = Report()
    bow_tie = np.array([[0, 0], [10, 10], [10, 0], [0, 10]], dtype=float)
    parts = sanitize_polygons([bow_tie], width_px=20, height_px=20, where=WHERE, report=report)
    assert len(parts) == 2
    assert sum(_area(p) for p in parts) == pytest.approx(50.0)
    assert report.counts["repaired polygons"] == 1 and WHERE in report.examples["repaired polygons"][0]


@pytest.mark.parametrize("points", [
    [[0, 0], [5, 5], [10, 10]],
    [[1945, 49], [1945, 52], [1945, 57], [1945, 49]],
    [[0, 0], [0, 0], [0, 0], [0, 0]],
])
def test_zero_area_polygons_raise_naming_the_region(points):
    with pytest.raises(AnnotationError, match="region 3") as e:
        sanitize_polygons([np.array(points, dtype=float)], width_px=None, height_px=None, where=WHERE, report=Report())
    assert "zero area" in str(e.value) or "degenerate" in str(e.value)


def test_polygon_clipped_to_nothing_raises():
    outside = np.array([[30, 30], [40, 30], [40, 40], [30, 40]], dtype=float)
    with pytest.raises(AnnotationError, match="after clipping"):
        sanitize_polygons([outside], width_px=20, height_px=20, where=WHERE, report=Report())


def test_keep_degenerate_keeps_the_region_without_the_polygon_and_counts_it():
    report = Report()
    good = np.array([[0, 0], [4, 0], [4, 4]], dtype=float)
    line = np.array([[0, 0], [1, 1], [2, 2], [0, 0]], dtype=float)
    out = sanitize_many([((good,), None, None, "r1"), ((line,), None, None, "r2")], report=report,
                        keep_degenerate=True)
    assert len(out[0]) == 1 and out[1] == ()
    assert report.counts["degenerate polygons (no area) kept as non-instances"] == 1


def test_sanitize_many_matches_one_by_one():
    rng = np.random.default_rng(3)
    items = []
    for i in range(200):
        n = int(rng.integers(3, 12))
        items.append(((rng.uniform(-5, 105, size=(n, 2)),), 100, 100, f"region {i}"))
    batch_report = Report()
    try:
        batch = sanitize_many(items, report=batch_report, keep_degenerate=True)
    except AnnotationError:
        pytest.fail("keep_degenerate must not raise")
    single_report = Report()
    for (polys, w, h, where), got in zip(items, batch, strict=True):
        want = sanitize_many([(polys, w, h, where)], report=single_report, keep_degenerate=True)[0]
        assert len(got) == len(want) and all(np.allclose(a, b) for a, b in zip(got, want, strict=True))
    assert batch_report.counts == single_report.counts
    assert batch_report.counts["repaired polygons"] > 0 and batch_report.counts["clipped points"] > 0


def test_validity_check_can_be_skipped_for_simple_shapes():
    report = Report()
    bow_tie = np.array([[0, 0], [10, 10], [10, 0], [0, 6]], dtype=float)
    out = sanitize_many([((bow_tie,), None, None, "r")], report=report, check_validity=[False])
    assert len(out[0]) == 1 and not report.counts
