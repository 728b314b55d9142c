"""VIA 3.x projects: every shape id, temporal segments, labels, and the document given back by writing."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from via_tools import via2, via3
from via_tools.errors import AnnotationError
from via_tools.model import AnnotationSet, ImageRecord, Region


def _doc(metadata=None):
    return {
        "project": {"pid": "__VIA_PROJECT_ID__", "rev": "__VIA_PROJECT_REV_ID__", "pname": "p", "created": 1,
                    "vid_list": ["1", "2"]},
        "config": {"file": {"loc_prefix": {"1": ""}}, "ui": {"spatial_region_label_attribute_id": "1"}},
        "attribute": {
            "1": {"aname": "label", "anchor_id": "FILE1_Z0_XY1", "type": 4, "desc": "",
                  "options": {"0": "shoe", "1": "boot"}, "default_option_id": ""},
            "2": {"aname": "note", "anchor_id": "FILE1_Z0_XY1", "type": 1, "desc": "", "options": {},
                  "default_option_id": ""},
        },
        "file": {"1": {"fid": "1", "fname": "a.jpg", "type": 2, "loc": 1, "src": ""},
                 "2": {"fid": "2", "fname": "clip.mp4", "type": 4, "loc": 1, "src": ""}},
        "metadata": metadata if metadata is not None else {
            "1_poly": {"vid": "1", "flg": 0, "z": [], "xy": [7, 0, 0, 40, 0, 40, 30], "av": {"1": "0", "2": "x"}},
            "1_rect": {"vid": "1", "flg": 0, "z": [], "xy": [2, 5, 5, 10, 20], "av": {"1": "1"}},
            "2_seg": {"vid": "2", "flg": 0, "z": [1.5, 3.25], "xy": [], "av": {"2": "walking"}},
        },
        "view": {"1": {"fid_list": ["1"]}, "2": {"fid_list": ["2"]}},
    }


def test_read_views_regions_labels():
    ds = via3.read(_doc(), source="p3.json")
    assert ds.source_format == "via3" and [i.file_name for i in ds] == ["a.jpg", "clip.mp4"]
    a, clip = ds.images
    assert [r.region_id for r in a.regions] == ["1_poly", "1_rect"]
    assert [r.label for r in a.regions] == ["shoe", "boot"]
    assert a.regions[0].attributes == {"1": "0", "2": "x"}
    assert np.array_equal(a.regions[1].polygons[0], [[5, 5], [15, 5], [15, 25], [5, 25]])
    (seg,) = clip.regions
    assert not seg.is_instance and seg.extra["via3_metadata"]["z"] == [1.5, 3.25]
    assert ds.count_instances() == 2 and ds.count_regions() == 3


def test_round_trip_gives_the_same_document():
    doc = _doc()
    assert via3.write(via3.read(copy.deepcopy(doc), source="p3.json")) == doc


@pytest.mark.parametrize(
    ("xy", "name", "instance"),
    [
        ([1, 3, 4], "point", False),
        ([2, 1, 2, 3, 4], "rect", True),
        ([3, 10, 10, 5], "circle", True),
        ([4, 10, 10, 5, 2], "ellipse", True),
        ([5, 0, 0, 9, 9], "polyline", False),
        ([6, 0, 0, 9, 9, 3, 4], "polyline", False),
        ([7, 0, 0, 9, 0, 9, 9], "polygon", True),
        ([8, 0, 5, 5, 0, 10, 5, 5, 10], "rect", True),
        ([9, 0, 10, 10, 0, 20, 10], "circle", True),
    ],
)
def test_every_shape_id(xy, name, instance):
    doc = _doc({"1_r": {"vid": "1", "flg": 0, "z": [], "xy": xy, "av": {}}})
    ds = via3.read(copy.deepcopy(doc), source="p3.json")
    (r,) = ds.images[0].regions
    assert r.shape["name"] == name and r.is_instance is instance and r.label == "shoe"
    assert via3.write(ds) == doc


def test_metadata_without_xy_is_a_region_written_with_empty_xy():
    doc = _doc()
    del doc["metadata"]["1_rect"]["xy"]
    ds = via3.read(copy.deepcopy(doc), source="p3.json")
    rect = ds.images[0].regions[1]
    assert (rect.region_id, rect.label, rect.shape, rect.is_instance) == ("1_rect", "boot", None, False)
    assert rect.polygons == ()
    written = via3.write(ds)
    assert written["metadata"]["1_rect"] == {**doc["metadata"]["1_rect"], "xy": []}
    assert list(written["metadata"]) == list(doc["metadata"])
    back = via3.read(written, source="written.json")
    assert [(r.region_id, r.label, r.shape) for r in back.images[0].regions] == \
        [(r.region_id, r.label, r.shape) for r in ds.images[0].regions]
    assert via3.write(back) == written


def test_region_without_geometry_from_another_format_is_file_level_metadata():
    ds = AnnotationSet(images=[ImageRecord("x.jpg", regions=[Region("shoe")])], source_format="coco")
    (m,) = via3.write(ds)["metadata"].values()
    assert (m["xy"], m["z"], m["av"]) == ([], [], {"1": "shoe"})


def test_view_without_files_keeps_the_unviewed_file_with_its_id():
    doc = _doc()
    doc["view"]["2"]["fid_list"] = []  # file "2" is now shown by no view, and shares view 2's id
    ds = via3.read(copy.deepcopy(doc), source="p3.json")
    assert [i.file_name for i in ds] == ["a.jpg", ""] and ds.meta["via3_unviewed_files"] == {"2": doc["file"]["2"]}
    assert via3.write(ds) == doc
    # given a file name, the view gets a new file under an id no other file has
    ds.images[1].file_name = "b.jpg"
    written = via3.write(ds)
    assert written["view"]["2"] == {"fid_list": ["3"]} and written["file"]["2"] == doc["file"]["2"]
    assert written["file"]["3"]["fname"] == "b.jpg"
    back = via3.read(written, source="written.json")
    assert [i.file_name for i in back] == ["a.jpg", "b.jpg"] and back.meta["via3_unviewed_files"] == {"2": doc["file"]["2"]}
    assert [r.region_id for r in back.images[1].regions] == ["2_seg"]


def test_extreme_shapes_geometry():
    rect = via3.xy_to_shape([8, 0, 5, 5, 0, 10, 5, 5, 10], where="r")
    assert rect == {"name": "rect", "x": 0, "y": 0, "width": 10, "height": 10}
    circle = via3.xy_to_shape([9, 0, 10, 10, 0, 20, 10], where="r")
    assert (circle["cx"], circle["cy"], circle["r"]) == pytest.approx((10, 10, 10))


def test_foreign_set_written_and_read_back():
    poly = np.array([[1, 1], [9, 1], [9, 9], [1, 9]], dtype=float)
    ds = AnnotationSet(images=[ImageRecord("x.jpg", regions=[
        Region("shoe", polygons=(poly,), attributes={"colour": "red"}),
        Region("boot", polygons=(poly + 1,), shape={"name": "circle", "cx": 5, "cy": 5, "r": 3})]),
        ImageRecord("https://h/y.jpg")], source_format="coco")
    doc = via3.write(ds)
    assert doc["file"]["2"]["loc"] == via3.LOC_URIHTTP and doc["file"]["1"]["type"] == via3.FILE_IMAGE
    back = via3.read(doc, source="p3.json")
    assert [[r.label for r in img.regions] for img in back] == [["shoe", "boot"], []]
    assert np.array_equal(back.images[0].regions[0].polygons[0], poly)
    assert back.images[0].regions[1].shape == {"name": "circle", "cx": 5, "cy": 5, "r": 3}
    names = {a["aname"] for a in doc["attribute"].values()}
    assert names == {"label", "colour"}


def test_changed_label_uses_the_option_ids():
    ds = via3.read(_doc(), source="p3.json")
    ds.images[0].regions[0].label = "boot"
    ds.images[0].regions[1].label = "sandal"
    doc = via3.write(ds)
    assert doc["metadata"]["1_poly"]["av"]["1"] == "1"
    new_id = doc["metadata"]["1_rect"]["av"]["1"]
    assert doc["attribute"]["1"]["options"][new_id] == "sandal"
    assert [r.label for r in via3.read(doc, source="p").images[0].regions] == ["boot", "sandal"]


def test_via3_to_via2_keeps_spatial_regions():
    ds = via3.read(_doc(), source="p3.json")
    doc = via2.write(ds)
    back = via2.read(doc, source="p2.json")
    assert back.count_instances() == 2
    assert [r.label for r in back.images[0].regions] == ["shoe", "boot"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["metadata"]["1_rect"].update(xy=[2, 1, 2, 3]), "image 'a.jpg': region '1_rect': shape 2 needs 4"),
        (lambda d: d["metadata"]["1_rect"].update(xy=[42, 1, 2]), "unknown VIA 3 shape id 42"),
        (lambda d: d["metadata"]["1_rect"].update(xy=["2", 1, 2, 3, 4]), "must start with a shape id"),
        (lambda d: d["metadata"]["1_rect"].update(xy=[2, 1, math.nan, 3, 4]), "not a finite number"),
        (lambda d: d["metadata"]["1_rect"].update(vid="9"), "metadata '1_rect': its view '9' is not in 'view'"),
        (lambda d: d["metadata"]["1_rect"].update(av=[]), "av an object"),
        (lambda d: d["view"]["1"].update(fid_list=["7"]), "view '1': file '7' is not in 'file'"),
        (lambda d: d["file"]["1"].update(fname=None), "'fname' must be a string"),
        (lambda d: d.update(metadata=[]), "'metadata' must be an object"),
        (lambda d: d.pop("view"), "not a VIA 3.x project"),
        (lambda d: d["metadata"]["1_poly"].update(xy=[7, 0, 0, 1, 1]), "at least 3 points"),
        (lambda d: d["metadata"]["1_poly"].update(xy=[9, 0, 0, 1, 1, 2, 2]), "on one line"),
    ],
)
def test_bad_input_names_the_entry(mutate, message):
    doc = _doc()
    mutate(doc)
    with pytest.raises(AnnotationError) as e:
        via3.read(doc, source="p3.json")
    assert str(e.value).startswith("p3.json: ") and message in str(e.value)
