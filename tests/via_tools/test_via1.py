"""VIA 1.x: reading, labels, and the document given back by writing."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from via_tools import via1
from via_tools.errors import AnnotationError
from via_tools.model import AnnotationSet, ImageRecord, Region
from via_tools.options import ReadOptions, WriteOptions
from via_tools.report import Report


def _region(shape, attrs=None):
    return {"shape_attributes": shape, "region_attributes": {} if attrs is None else attrs}


def _doc():
    poly = {"name": "polygon", "all_points_x": [10, 60, 60, 10], "all_points_y": [10, 10, 50, 50]}
    return {
        "a.jpg1000": {"fileref": "", "size": 1000, "filename": "a.jpg", "base64_img_data": "",
                      "file_attributes": {"scene": "street"},
                      "regions": {"0": _region(poly, {"label": "shoe"}),
                                  "1": _region({"name": "rect", "x": 5, "y": 6, "width": 20, "height": 30},
                                               {"label": {"boot": True}}),
                                  "2": _region({"name": "polyline", "all_points_x": [0, 5], "all_points_y": [0, 5]})}},
        "b.png22": {"fileref": "http://x/b.png", "size": 22, "filename": "b.png", "base64_img_data": "",
                    "file_attributes": {}, "regions": {}},
    }


def test_read_gives_images_regions_labels_and_polygons():
    ds = via1.read(_doc(), source="v1.json")
    assert ds.source_format == "via1" and [i.file_name for i in ds] == ["a.jpg", "b.png"]
    a = ds.images[0]
    assert a.image_id == "a.jpg1000" and a.file_size == 1000 and a.file_attributes == {"scene": "street"}
    assert [r.label for r in a.regions] == ["shoe", "boot", "shoe"]
    assert [r.region_id for r in a.regions] == ["0", "1", "2"]
    assert [r.is_instance for r in a.regions] == [True, True, False]
    assert np.array_equal(a.regions[1].polygons[0], [[5, 6], [25, 6], [25, 36], [5, 36]])
    assert ds.labels == ["shoe", "boot"]


def test_round_trip_gives_the_same_document():
    doc = _doc()
    assert via1.write(via1.read(copy.deepcopy(doc), source="v1.json")) == doc


def test_round_trip_keeps_unusual_layouts():
    doc = _doc()
    doc["a.jpg1000"]["regions"] = [doc["a.jpg1000"]["regions"]["0"]]  # a 1.x file with list regions
    doc["a.jpg1000"]["note"] = "kept"
    del doc["b.png22"]["file_attributes"]
    doc["b.png22"]["regions"] = {"5": {"shape_attributes": {"name": "circle", "cx": 5, "cy": 5, "r": 2},
                                       "region_attributes": {}, "id": 9}}
    ds = via1.read(copy.deepcopy(doc), source="v1.json")
    assert ds.images[1].regions[0].region_id == "5"
    assert via1.write(ds) == doc


def test_default_label_and_label_attr_options():
    doc = {"a.jpg1": {"filename": "a.jpg", "size": 1, "regions": {"0": _region(
        {"name": "rect", "x": 0, "y": 0, "width": 3, "height": 3}, {"type": "balloon"})}}}
    assert via1.read(doc, source="x").images[0].regions[0].label == "shoe"
    assert via1.read(doc, source="x", options=ReadOptions(default_label="thing")).images[0].regions[0].label == "thing"
    assert via1.read(doc, source="x", options=ReadOptions(label_attr="type")).images[0].regions[0].label == "balloon"


def test_write_of_a_foreign_set_generates_polygon_shapes_and_labels():
    poly = np.array([[0, 0], [4.5, 0], [4.5, 3]])
    ds = AnnotationSet(images=[ImageRecord("c.jpg", file_size=7, regions=[
        Region("sneaker", polygons=(poly, poly + 10), attributes={"colour": "red"})])], source_format="coco")
    doc = via1.write(ds, options=WriteOptions(label_attr="kind"))
    regions = doc["c.jpg7"]["regions"]
    assert list(regions) == ["0", "1"]
    assert regions["0"]["shape_attributes"] == {"name": "polygon", "all_points_x": [0, 4.5, 4.5],
                                                "all_points_y": [0, 0, 3]}
    # one VIA region per part, grouped by the shoeseg_instance attribute; read back as one two-part region
    assert regions["0"]["region_attributes"] == regions["1"]["region_attributes"] == {
        "colour": "red", "kind": "sneaker", "shoeseg_instance": "1"}
    back = via1.read(doc, source="x", options=ReadOptions(label_attr="kind"))
    assert [r.label for r in back.images[0].regions] == ["sneaker"]
    assert [p.tolist() for p in back.images[0].regions[0].polygons] == [poly.tolist(), (poly + 10).tolist()]


def test_changed_label_is_written_into_the_attributes():
    ds = via1.read(_doc(), source="v1.json")
    ds.images[0].regions[0].label = "sandal"
    ds.images[0].regions[1].label = "sandal"
    regions = via1.write(ds)["a.jpg1000"]["regions"]
    assert regions["0"]["region_attributes"] == {"label": "sandal"}
    assert regions["1"]["region_attributes"] == {"label": {"sandal": True}}


def test_checkbox_with_several_labels_is_counted():
    doc = {"a.jpg1": {"filename": "a.jpg", "size": 1, "regions": {"0": _region(
        {"name": "rect", "x": 0, "y": 0, "width": 3, "height": 3}, {"label": {"shoe": True, "boot": True}})}}}
    report = Report()
    assert via1.read(doc, source="x", report=report).images[0].regions[0].label == "shoe"
    assert sum(report.counts.values()) == 1


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update({"a.jpg1000": "nope"}), "image 'a.jpg1000': entry must be an object"),
        (lambda d: d["a.jpg1000"].update(filename=3), "'filename' must be a string"),
        (lambda d: d["a.jpg1000"].update(regions="x"), "image 'a.jpg': 'regions' must be a list or an object"),
        (lambda d: d["a.jpg1000"].update(file_attributes=[1]), "image 'a.jpg': file_attributes must be an object"),
        (lambda d: d["a.jpg1000"]["regions"].update({"7": 5}), "image 'a.jpg': region 7: a region must be an object"),
        (lambda d: d["a.jpg1000"]["regions"]["1"].pop("shape_attributes"), "region 1: region has no shape_attributes"),
        (lambda d: d["a.jpg1000"]["regions"]["1"].update(region_attributes=[]), "region 1: region_attributes must"),
        (lambda d: d["a.jpg1000"]["regions"]["0"]["shape_attributes"]["all_points_x"].pop(),
         "image 'a.jpg': region 0: polygon all_points_x has 3 values"),
        (lambda d: d["a.jpg1000"]["regions"]["1"]["shape_attributes"].update(name="star"),
         "image 'a.jpg': region 1: unknown shape 'star'"),
    ],
)
def test_bad_input_names_file_image_and_region(mutate, message):
    doc = _doc()
    mutate(doc)
    with pytest.raises(AnnotationError) as e:
        via1.read(doc, source="v1.json")
    assert str(e.value).startswith("v1.json: ") and message in str(e.value)


def test_not_a_dict_is_an_error():
    with pytest.raises(AnnotationError, match="v1.json: a VIA 1.x file must be an object"):
        via1.read([1, 2], source="v1.json")
