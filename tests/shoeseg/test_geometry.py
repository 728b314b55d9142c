"""Mask <-> polygon geometry: round trips, multi-part shapes, holes, flips, bad input."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoeseg.geometry import (
    MIN_PART_WIDTH_PX,
    flip_polygons_x,
    mask_box_xyxy,
    mask_iou,
    mask_iou_matrix,
    mask_to_polygons,
    polygons_to_mask,
)

H, W = 160, 200


def ellipse_mask(cx, cy, ax, ay, angle, h=H, w=W) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    cv2.ellipse(m, (int(cx), int(cy)), (int(ax), int(ay)), float(angle), 0, 360, 1, -1)
    return m.astype(bool)


def filled(mask: np.ndarray) -> np.ndarray:
    """The mask with its holes filled (what a polygon without holes can express)."""
    m = mask.astype(np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.zeros_like(m)
    cv2.drawContours(out, contours, -1, 1, -1)
    return out.astype(bool)


# Shapes of at least 32x32 px: ellipses with both semi-axes >= 16 px, plus a second blob sometimes.
blob = st.tuples(
    st.integers(40, W - 40), st.integers(40, H - 40), st.integers(16, 38), st.integers(16, 38), st.integers(0, 179)
)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(shape=blob, extra=st.one_of(st.none(), blob), tol=st.sampled_from([0.5, 1.0]))
def test_simplified_polygons_rasterise_back_with_iou_at_least_095(shape, extra, tol):
    # Up to the default tolerance (1 px). A coarser tolerance cuts more off small shapes: 1.5 px can
    # give IoU 0.94 on a 32x36 px ellipse.
    mask = ellipse_mask(*shape)
    if extra is not None:
        mask |= ellipse_mask(*extra)
    polys = mask_to_polygons(mask, tolerance_px=tol)
    back = polygons_to_mask(polys, H, W)
    assert mask_iou(back, filled(mask)) >= 0.95


@settings(max_examples=40, deadline=None, derandomize=True)
@given(shape=blob, extra=st.one_of(st.none(), blob))
def test_unsimplified_trace_is_pixel_exact(shape, extra):
    mask = ellipse_mask(*shape)
    if extra is not None:
        mask |= ellipse_mask(*extra)
    back = polygons_to_mask(mask_to_polygons(mask, tolerance_px=0, min_area_px=0), H, W)
    assert np.array_equal(back, filled(mask))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), tol=st.sampled_from([0.0, 1.0, 2.0, 4.0]))
def test_polygons_are_always_simple_even_for_ragged_masks(seed, tol):
    import shapely

    rng = np.random.default_rng(seed)
    mask = cv2.blur((rng.random((48, 64)) < 0.5).astype(np.float32), (3, 3)) > 0.5  # ragged, pinched blobs
    mask[0:2, 0:2] = True
    mask[2, 2] = True  # a diagonal pinch
    polys = mask_to_polygons(mask, tolerance_px=tol, min_area_px=1)
    assert polys
    for p in polys:
        assert len(p) >= 3 and shapely.Polygon(p).is_valid
    areas = [shapely.Polygon(p).area for p in polys]
    assert areas == sorted(areas, reverse=True)


def test_rectangle_traces_to_its_four_pixel_centre_corners():
    m = np.zeros((40, 40), bool)
    m[5:35, 10:30] = True
    (poly,) = mask_to_polygons(m)
    assert sorted(map(tuple, poly)) == sorted([(10.5, 5.5), (10.5, 34.5), (29.5, 34.5), (29.5, 5.5)])
    assert polygons_to_mask([poly], 40, 40).sum() == 600


def test_multi_part_masks_give_one_polygon_per_part_largest_first_and_drop_specks():
    m = ellipse_mask(60, 60, 20, 20, 0) | ellipse_mask(150, 100, 30, 25, 0)
    m[5:7, 5:7] = True  # a 4-pixel speck
    polys = mask_to_polygons(m, min_area_px=16)
    assert len(polys) == 2
    areas = [polygons_to_mask([p], H, W).sum() for p in polys]
    assert areas[0] > areas[1]
    assert polys[0][:, 0].mean() > 100  # the bigger ellipse is on the right
    assert len(mask_to_polygons(m, min_area_px=1)) == 3
    assert len(mask_to_polygons(m, largest_only=True)) == 1


def test_holes_are_filled_deliberately():
    ring = ellipse_mask(100, 80, 40, 40, 0) & ~ellipse_mask(100, 80, 15, 15, 0)
    polys = mask_to_polygons(ring, tolerance_px=0)
    assert len(polys) == 1
    assert np.array_equal(polygons_to_mask(polys, H, W), ellipse_mask(100, 80, 40, 40, 0))


def test_offset_places_crop_polygons_in_the_full_image():
    full = ellipse_mask(120, 90, 25, 18, 30)
    crop = full[50:140, 80:170]
    a = mask_to_polygons(full)
    b = mask_to_polygons(crop, offset_xy=(80, 50))
    assert len(a) == len(b) == 1 and np.allclose(a[0], b[0])


def test_thin_line_parts_keep_an_area():
    m = np.zeros((30, 30), bool)
    m[10, 5:25] = True  # 20 pixels in one row
    (poly,) = mask_to_polygons(m, min_area_px=1)
    assert polygons_to_mask([poly], 30, 30)[10, 5:25].all()


def test_parts_thinner_than_the_minimum_width_are_dropped_whatever_their_direction():
    m = np.zeros((70, 70), bool)
    m[10, 5:55] = True  # a 1-pixel row: 50 pixels, far above min_area_px
    m[15:55, 40] = True  # a 1-pixel column
    m[np.arange(20, 50), np.arange(5, 35)] = True  # a diagonal line
    m[58:60, 2:60] = True  # 2 pixels tall: its outline through the pixel centres is 1 px tall
    m[64:67, 2:30] = True  # 3 pixels tall: kept
    assert len(mask_to_polygons(m)) == 5  # by default every part becomes a polygon
    (kept,) = mask_to_polygons(m, min_width_px=MIN_PART_WIDTH_PX)
    assert kept[:, 1].min() >= 64 and kept[:, 1].max() <= 67 and kept[:, 0].min() < 3 and kept[:, 0].max() > 29


def test_empty_mask_gives_no_polygon():
    assert mask_to_polygons(np.zeros((10, 10), bool)) == ()


def test_flipped_polygons_rasterise_to_the_flipped_mask():
    m = ellipse_mask(60, 70, 35, 20, 25)
    polys = mask_to_polygons(m, tolerance_px=0)
    flipped = polygons_to_mask(flip_polygons_x(polys, W), H, W)
    assert np.array_equal(flipped, m[:, ::-1])


def test_polygons_to_mask_accepts_a_single_array_and_rejects_bad_input():
    square = np.array([[2.5, 2.5], [5.5, 2.5], [5.5, 5.5], [2.5, 5.5]])
    assert polygons_to_mask(square, 10, 10).sum() == 16
    with pytest.raises(ValueError, match="at least|N>=3"):
        polygons_to_mask([square[:2]], 10, 10)
    with pytest.raises(ValueError, match="NaN"):
        polygons_to_mask([np.array([[0, 0], [np.nan, 1], [2, 2]])], 10, 10)
    with pytest.raises(ValueError, match="positive"):
        polygons_to_mask([square], 0, 10)
    with pytest.raises(ValueError, match="2-D"):
        mask_to_polygons(np.zeros((2, 2, 2), bool))


def test_iou_helpers():
    a = np.zeros((10, 10), bool)
    a[:5] = True
    b = np.zeros((10, 10), bool)
    b[:, :5] = True
    assert mask_iou(a, b) == pytest.approx(25 / 75)
    assert mask_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0
    mat = mask_iou_matrix([a, b], [a, b, ~a])
    assert mat.shape == (2, 3)
    assert mat[0, 0] == 1.0 and mat[0, 2] == 0.0 and mat[1, 0] == pytest.approx(25 / 75)
    assert mask_box_xyxy(a) == (0.0, 0.0, 10.0, 5.0)
    assert mask_box_xyxy(np.zeros((3, 3), bool)) is None
    with pytest.raises(ValueError, match="differ"):
        mask_iou(a, np.zeros((3, 3), bool))


def test_the_vertex_budget_follows_the_shape_and_caps_the_vertices():
    yy, xx = np.mgrid[0:400, 0:400]
    big = ((xx - 200) / 180.0) ** 2 + ((yy - 200) / 120.0) ** 2 <= 1.0
    small = ((xx - 50) / 18.0) ** 2 + ((yy - 50) / 12.0) ** 2 <= 1.0
    (fine,) = mask_to_polygons(big, tolerance_px=1.0)
    (rel,) = mask_to_polygons(big, tolerance_px=1.0, tolerance_rel=0.01)
    assert len(rel) < len(fine)  # 1 % of a 433 px diagonal is a looser tolerance than 1 px
    (small_rel,) = mask_to_polygons(small, tolerance_px=0.0, tolerance_rel=0.01)
    (small_fine,) = mask_to_polygons(small, tolerance_px=1.0)
    assert len(small_rel) >= len(small_fine)  # and tighter than 1 px for a shoe ten times smaller
    for cap in (8, 12, 30):
        (capped,) = mask_to_polygons(big, tolerance_px=1.0, max_vertices=cap)
        assert 3 <= len(capped) <= cap
        refill = polygons_to_mask([capped], 400, 400)
        assert (refill & big).sum() / (refill | big).sum() > 0.9  # still the shape
