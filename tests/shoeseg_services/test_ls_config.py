"""Labeling configs and the per-tag output classes (no model, no server)."""

from __future__ import annotations

import numpy as np
import pytest

from shoeseg_services.ls_config import (
    BrushLabelsControl,
    LabelConfigError,
    PolygonLabelsControl,
    RectangleLabelsControl,
    RegionSource,
    cached_label_config,
    parse_label_config,
    polygon_control,
)
from tests.helpers import ALL_CONTROLS_CONFIG, POLYGON_CONFIG, fixture_body


def test_recorded_config_parses():
    cfg = parse_label_config(fixture_body("setup.json")["schema"])
    assert cfg.images["image"].value_key == "image"
    (control,) = cfg.controls
    assert isinstance(control, PolygonLabelsControl)
    assert (control.from_name, control.to_name, control.labels) == ("label", "image", ("shoe",))


def test_every_supported_control_is_read():
    cfg = parse_label_config(ALL_CONTROLS_CONFIG)
    assert [type(c) for c in cfg.controls] == [PolygonLabelsControl, RectangleLabelsControl, BrushLabelsControl]
    brush = cfg.controls[2]
    assert brush.label_for("shoe", ["shoe"]) == "footwear"  # predicted_values
    assert cfg.controls[1].label_for("shoe", ["shoe"]) == "Shoe"  # case-insensitive


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("", "empty"),
        ("<View><Image name='image'", "not valid XML"),
        ('<View><PolygonLabels name="l" toName="image"><Label value="shoe"/></PolygonLabels></View>', "no <Image"),
        ('<View><Image name="image" value="$image"/><RectangleLabels name="b" toName="image">'
         '<Label value="shoe"/></RectangleLabels></View>', "no <PolygonLabels>"),
        ('<View><Image name="image" value="$image"/><PolygonLabels name="l" toName="image"></PolygonLabels></View>',
         "no <Label"),
        ('<View><Image name="image" value="$image"/><PolygonLabels name="l" toName="other">'
         '<Label value="shoe"/></PolygonLabels></View>', "no <PolygonLabels>"),
        ('<!DOCTYPE x [<!ENTITY a "aaaa">]><View><Image name="image" value="&a;"/></View>', "not valid XML"),
    ],
)
def test_bad_configs_are_refused_with_a_reason(xml, message):
    with pytest.raises(LabelConfigError, match=message):
        parse_label_config(xml)


def test_class_mapping_rules():
    c = PolygonLabelsControl(from_name="l", to_name="image", labels=("Sneaker", "Boot"),
                             predicted_values=(("Boot", ("wellington",)),))
    names = ["sneaker", "wellington", "sandal"]
    assert c.label_for("sneaker", names) == "Sneaker"
    assert c.label_for("wellington", names) == "Boot"
    assert c.label_for("sandal", names) is None
    assert c.unmapped(names) == ["sandal"]
    single = PolygonLabelsControl(from_name="l", to_name="image", labels=("Footwear",))
    assert single.label_for("shoe", ["shoe"]) == "Footwear"  # one class, one label


def test_check_classes_names_the_labels():
    cfg = parse_label_config(
        '<View><Image name="image" value="$image"/><PolygonLabels name="l" toName="image">'
        '<Label value="Cat"/><Label value="Dog"/></PolygonLabels></View>'
    )
    with pytest.raises(LabelConfigError, match=r"\['Cat', 'Dog'\]"):
        cfg.check_classes(["shoe"])
    parse_label_config(POLYGON_CONFIG).check_classes(["shoe"])


def _square_source(score=0.8):
    poly = np.array([[10, 5], [30, 5], [30, 25], [10, 25]], float)
    mask = np.zeros((40, 50), bool)
    mask[5:25, 10:30] = True
    return RegionSource(label="shoe", score=score, box_xyxy=(10, 5, 30, 25), mask=mask, polygons=(poly,))


def test_polygon_result_is_in_percent_and_closed():
    c = PolygonLabelsControl(from_name="label", to_name="image", labels=("shoe",))
    (r,) = c.results([_square_source()], width_px=50, height_px=40)
    assert r["type"] == "polygonlabels" and r["original_width"] == 50 and r["original_height"] == 40
    assert r["value"]["points"] == [[20.0, 12.5], [60.0, 12.5], [60.0, 62.5], [20.0, 62.5]]
    assert r["value"]["closed"] is True and r["value"]["polygonlabels"] == ["shoe"]
    assert r["score"] == 0.8


def test_polygon_parts_become_regions():
    src = _square_source()
    part2 = np.array([[40, 30], [45, 30], [45, 35]], float)
    two = RegionSource(src.label, src.score, src.box_xyxy, src.mask, (src.polygons[0], part2))
    c = PolygonLabelsControl(from_name="label", to_name="image", labels=("shoe",))
    results = c.results([two], width_px=50, height_px=40)
    assert len(results) == 2 and len({r["id"] for r in results}) == 2


def test_rectangle_result():
    c = RectangleLabelsControl(from_name="box", to_name="image", labels=("shoe",))
    (r,) = c.results([_square_source()], width_px=50, height_px=40)
    value = dict(r["value"])
    assert value.pop("rectanglelabels") == ["shoe"]
    assert value == pytest.approx({"x": 20.0, "y": 12.5, "width": 40.0, "height": 50.0, "rotation": 0})


def test_brush_result_decodes_to_the_mask():
    from label_studio_sdk.converter.brush import decode_rle

    c = BrushLabelsControl(from_name="brush", to_name="image", labels=("shoe",))
    src = _square_source()
    (r,) = c.results([src], width_px=50, height_px=40)
    assert r["value"]["format"] == "rle" and r["value"]["brushlabels"] == ["shoe"]
    decoded = decode_rle(r["value"]["rle"]).reshape(40, 50, 4)[:, :, 3] > 0
    np.testing.assert_array_equal(decoded, src.mask)


def test_config_cache_parses_once_and_raises_every_time_for_a_bad_config():
    assert cached_label_config(POLYGON_CONFIG) is cached_label_config(POLYGON_CONFIG)
    for _ in range(2):
        with pytest.raises(LabelConfigError):
            cached_label_config("<View/>")


def test_polygon_control_names_where_it_looked():
    assert polygon_control(POLYGON_CONFIG)[2] == ["shoe"]
    with pytest.raises(LabelConfigError, match="project 7: .*no <PolygonLabels>"):
        polygon_control('<View><Image name="image" value="$image"/></View>', where="project 7")


@pytest.mark.parametrize("xml", [
    '<!DOCTYPE v [<!ENTITY a "aaaa">]><View><Image name="image" value="$image"/></View>',
    '<!DOCTYPE v SYSTEM "file:///etc/passwd"><View/>',
])
def test_a_dtd_is_refused_before_the_sdk_parses_the_config(xml):
    with pytest.raises(LabelConfigError, match="not valid XML"):
        parse_label_config(xml)
