"""VIA 2.x projects and annotation exports: reading and the document given back by writing."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from via_tools import via2
from via_tools.errors import AnnotationError
from via_tools.model import AnnotationSet, ImageRecord, Region
from via_tools.report import Report


def _entries():
    return {
        "a.jpg100": {"filename": "a.jpg", "size": 100, "regions": [
            {"shape_attributes": {"name": "polygon", "all_points_x": [0, 40, 40, 0], "all_points_y": [0, 0, 30, 30]},
             "region_attributes": {"label": "shoe"}},
            {"shape_attributes": {"name": "ellipse", "cx": 50, "cy": 50, "rx": 10, "ry": 4, "theta": 0.3},
             "region_attributes": {"label": "boot"}},
        ], "file_attributes": {}},
        "http://h/b.jpg-1": {"filename": "http://h/b.jpg", "size": -1, "regions": [], "file_attributes": {"q": "ok"}},
    }


def _project():
    return {
        "_via_settings": {"ui": {"x": 1}, "core": {"buffer_size": 18}, "project": {"name": "shoes"}},
        "_via_img_metadata": _entries(),
        "_via_attributes": {"region": {"label": {"type": "dropdown", "description": "",
                                                 "options": {"shoe": "", "boot": ""}, "default_options": {}}},
                            "file": {}},
        "_via_data_format_version": "2.0.10",
        "_via_image_id_list": ["http://h/b.jpg-1", "a.jpg100"],
    }


def test_read_project():
    ds = via2.read(_project(), source="p.json")
    assert ds.source_format == "via2" and len(ds) == 2 and ds.count_instances() == 2
    a, b = ds.images
    assert [r.label for r in a.regions] == ["shoe", "boot"]
    assert b.file_size is None and b.extra["via_size"] == -1 and b.file_attributes == {"q": "ok"}
    assert ds.meta["via2_layout"] == "project"


@pytest.mark.parametrize("make", [_project, _entries])
def test_round_trip_gives_the_same_document(make):
    doc = make()
    assert via2.write(via2.read(copy.deepcopy(doc), source="p.json")) == doc


def test_project_without_optional_keys_round_trips():
    doc = _project()
    del doc["_via_image_id_list"], doc["_via_data_format_version"]
    out = via2.write(via2.read(copy.deepcopy(doc), source="p.json"))
    assert out == doc and list(out) == list(doc)


def test_image_id_list_is_rebuilt_when_images_change():
    ds = via2.read(_project(), source="p.json")
    ds.images.pop()
    assert via2.write(ds)["_via_image_id_list"] == ["a.jpg100"]


def test_mixed_file_with_dict_regions_round_trips():
    doc = _entries()
    doc["a.jpg100"]["regions"] = {str(i): r for i, r in enumerate(doc["a.jpg100"]["regions"])}
    ds = via2.read(copy.deepcopy(doc), source="m.json")
    assert ds.count_instances() == 2
    assert via2.write(ds) == doc


def test_foreign_set_becomes_a_project_with_attribute_definitions():
    poly = np.array([[1, 1], [9, 1], [9, 9], [1, 9]], dtype=float)
    ds = AnnotationSet(images=[
        ImageRecord("x.jpg", file_size=5, regions=[Region("shoe", polygons=(poly,)),
                                                    Region("boot", polygons=(poly,), attributes={"seen": {"a": True}})]),
        ImageRecord("y.jpg"),
    ], source_format="ls")
    doc = via2.write(ds)
    assert set(doc) == {"_via_settings", "_via_img_metadata", "_via_attributes", "_via_data_format_version",
                        "_via_image_id_list"}
    assert doc["_via_image_id_list"] == ["x.jpg5", "y.jpg-1"]
    attrs = doc["_via_attributes"]["region"]
    assert attrs["label"]["type"] == "dropdown" and set(attrs["label"]["options"]) == {"shoe", "boot"}
    assert attrs["seen"]["type"] == "checkbox"
    back = via2.read(doc, source="p.json")
    assert [r.label for r in back.images[0].regions] == ["shoe", "boot"]
    assert np.array_equal(back.images[0].regions[0].polygons[0], poly)


def test_two_images_with_one_key_is_an_error():
    ds = AnnotationSet(images=[ImageRecord("x.jpg", file_size=5), ImageRecord("x.jpg", file_size=5)])
    with pytest.raises(AnnotationError, match="share the VIA key 'x.jpg5'"):
        via2.write(ds)


def test_report_counts_repairs():
    doc = _entries()
    doc["a.jpg100"]["regions"][0]["shape_attributes"] = {"name": "polygon", "all_points_x": [0, 10, 10, 0],
                                                         "all_points_y": [0, 10, 0, 10]}
    report = Report()
    ds = via2.read(doc, source="p.json", report=report)
    assert report.counts["repaired polygons"] == 1
    assert len(ds.images[0].regions[0].polygons) == 2
    assert ds.images[0].regions[0].shape["all_points_y"] == [0, 10, 0, 10]  # the source shape is kept


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"_via_img_metadata": []}, "_via_img_metadata must be an object"),
        ({"_via_img_metadata": {}, "_via_image_id_list": "a"}, "_via_image_id_list must be a list"),
        ({"_via_img_metadata": {"k": {"filename": "a.jpg", "regions": [{"shape_attributes": {"name": "rect"}}]}}},
         "p.json: image 'a.jpg': region 0: rect shape has no 'x'"),
        ("text", "must be a JSON object"),
    ],
)
def test_bad_input(doc, message):
    with pytest.raises(AnnotationError) as e:
        via2.read(doc, source="p.json")
    assert message in str(e.value)
