"""Bad input found by probing every reader as a broken exporter or a careless user would (issue 27): each case
ends in a valid result or one located line, never a traceback, a numpy warning, or NaN / Infinity written."""

from __future__ import annotations

import copy
import json
import math
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.via_tools.yolo_sets import TRI, make_set
from via_tools import coco, via1, via2, via3, via_csv
from via_tools.errors import AnnotationError
from via_tools.io import load, save, written_count
from via_tools.jsontext import DUPLICATE_KEYS, MAX_DEPTH, dump_json, parse_json
from via_tools.model import AnnotationSet, ImageRecord, Region, as_polygon
from via_tools.report import Report
from via_tools.via_common import GROUP_ATTR


@pytest.fixture(autouse=True)
def _numpy_warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


def _cli(*args: str):
    from shoeseg_app.cli.via import via_app

    return CliRunner().invoke(via_app, [str(a) for a in args])


def _one_line_error(result, *parts: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    err = result.output.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for part in parts:
        assert part in err, (part, err)
    return err


def _via2(shape: dict, **extra) -> dict:
    return {"a.jpg5": {"filename": "a.jpg", "size": 5, "file_attributes": {},
                       "regions": [{"shape_attributes": shape, "region_attributes": {"label": "shoe", **extra}}]}}


# ------------------------------------------------------------------------------------------ nesting
def test_deep_nesting_in_a_csv_cell_is_a_located_error(tmp_path):
    deep = "[" * 2000 + "]" * 2000
    cell = '"' + deep.replace('"', '""') + '"'
    path = tmp_path / "a.csv"
    path.write_text(via_csv.HEADER + f'\na.jpg,5,"{{}}",1,0,"{{""name"":""rect""}}",{cell}\n')
    with pytest.raises(AnnotationError) as e:
        load(path)
    assert str(e.value) == (f"{path}: row 2: image 'a.jpg': region 0: region_attributes: line 1 column {MAX_DEPTH + 1}: "
                            f"arrays and objects nested deeper than {MAX_DEPTH} levels (the limit)")
    _one_line_error(_cli("stats", path, "--json"), "row 2", "nested deeper")


def test_deep_nesting_in_a_json_file_is_a_located_error(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"a.jpg5": ' + '{"x": ' * 3000 + "1" + "}" * 3001)
    _one_line_error(_cli("stats", path, "--json"), str(path), "nested deeper than 100 levels")


def test_deep_nesting_in_a_data_yaml_is_a_clear_error(tmp_path):
    make_set(tmp_path, {"data.yaml": "names: [shoe]\ntrain: images\nx: " + "[" * 1000 + "]" * 1000 + "\n",
                        "images/a.png": (10, 10)})
    _one_line_error(_cli("stats", tmp_path / "data.yaml", "--json"), "data.yaml", "nested deeper than 32 levels")


# --------------------------------------------------------------------------------- numbers that overflow
@pytest.mark.parametrize("shape", [
    {"name": "rect", "x": 1e308, "y": 0, "width": 1e308, "height": 5},
    {"name": "rect", "x": 0, "y": 0, "width": 1e12, "height": 5},
    {"name": "circle", "cx": 5, "cy": 5, "r": 1e300},
    {"name": "ellipse", "cx": 5, "cy": 5, "rx": 1e300, "ry": 1e300, "theta": 0.3},
    {"name": "polygon", "all_points_x": [0, 1e200, 1e200], "all_points_y": [0, 0, 1e200]},
])
def test_finite_shapes_that_overflow_as_pixels_are_refused(tmp_path, shape):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(_via2(shape)))
    err = _one_line_error(_cli("stats", path, "--json"), f"{path}: image 'a.jpg': region 0: {shape['name']} point",
                          "beyond ±1e+09 px (the coordinate limit)")
    assert "nan" not in err.lower()
    out = tmp_path / "c.json"
    _one_line_error(_cli("convert", path, "--to", "coco", "-o", out), "region 0")
    assert not out.exists()


@pytest.mark.parametrize(("shape", "message"), [
    ({"name": "polyline", "all_points_x": [0, -math.inf], "all_points_y": [0, 1]},
     "polyline point 1 is (-Infinity, 1), not a finite number"),
    ({"name": "polyline", "all_points_x": [0, math.nan], "all_points_y": [0, 1]},
     "polyline point 1 is (NaN, 1), not a finite number"),
    ({"name": "polyline", "all_points_x": [0, 1, 2], "all_points_y": [0, 1]},
     "polyline all_points_x has 3 values but all_points_y has 2"),
    ({"name": "polyline", "all_points_x": [0], "all_points_y": [0]}, "polyline has 1 points, at least 2"),
    ({"name": "point", "cx": math.inf, "cy": 1}, "point 'cx' is Infinity, not a finite number"),
    ({"name": "point", "cx": 1e300, "cy": 1}, "point point 0 is (1e+300, 1), beyond"),
    ({"name": "point", "cx": "1", "cy": 1}, "point 'cx' must be a number, got \"1\""),
])
def test_polylines_and_points_are_checked_like_every_shape(shape, message):
    with pytest.raises(AnnotationError, match="^" + "x.json: image 'a.jpg': region 0: .*" + message.replace("(", r"\(")
                       .replace(")", r"\)").replace("+", r"\+")):
        via2.read(_via2(shape), source="x.json")


def test_a_polyline_with_infinity_is_never_written_back(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"a.jpg5": {"filename": "a.jpg", "size": 5, "file_attributes": {}, "regions": [{"shape_attributes":'
                    ' {"name": "polyline", "all_points_x": [0, -Infinity], "all_points_y": [0, 1]}}]}}')
    out = tmp_path / "b.json"
    _one_line_error(_cli("convert", path, "--to", "via2", "-o", out), f"{path}: line 1 column", "-Infinity is not a JSON number")
    assert not out.exists()


@pytest.mark.parametrize(("text", "message"), [
    ('{"a": NaN}', "line 1 column 7: NaN is not a JSON number"),
    ('{"a":\n [1, -Infinity]}', "line 2 column 6: -Infinity is not a JSON number"),
    ('{"a": [1, 2e400]}', "line 1 column 11: 2e400 is too large for a JSON number (64-bit float)"),
])
def test_what_python_reads_but_json_is_not_is_refused(text, message):
    with pytest.raises(AnnotationError, match="^f.json: " + message.replace("(", r"\(").replace(")", r"\)")):
        parse_json(text, where="f.json")


def test_label_studio_percentages_that_overflow_name_the_file_and_result(tmp_path):
    task = {"id": 9, "data": {"image": "a.jpg"}, "annotations": [{"id": 3, "result": [
        {"id": "r1", "type": "polygonlabels", "original_width": 100, "original_height": 100,
         "value": {"points": [[0, 0], [1e308, 0], [1e308, 1e308]], "polygonlabels": ["shoe"], "closed": True}},
    ]}]}
    path = tmp_path / "ls.json"
    path.write_text(json.dumps([task]))
    _one_line_error(_cli("stats", path, "--json"),
                    f"{path}: task #0: task 9: annotation 3: result r1: polygon point 1 is (1e+308, 0), beyond")
    del task["annotations"][0]["result"][0]["id"]
    path.write_text(json.dumps([task]))
    err = _one_line_error(_cli("stats", path, "--json"), "annotation 3: result #0: polygon point 1")
    assert "None" not in err


def test_label_studio_open_polygon_with_ragged_points_speaks_json(tmp_path):
    task = {"data": {"image": "a.jpg"}, "annotations": [{"id": 3, "result": [
        {"id": "p", "type": "polygonlabels", "original_width": 100, "original_height": 100,
         "value": {"points": [[0, 0], [1, 2, 3]], "polygonlabels": ["shoe"], "closed": False}}]}]}
    path = tmp_path / "ls.json"
    path.write_text(json.dumps([task]))
    err = _one_line_error(_cli("stats", path, "--json"), "result p: open polygon points must be an array of [x, y] pairs")
    assert "inhomogeneous" not in err


# ------------------------------------------------------------------------------------ writers never write NaN
@pytest.mark.parametrize("fmt", ["via1", "via2", "via3", "csv", "coco", "ls"])
def test_writers_refuse_non_finite_geometry_whatever_the_reader_let_through(tmp_path, fmt):
    region = Region("shoe", (as_polygon([(0, 0), (4, 0), (4, 4)]),), region_id="7")
    region.polygons = (np.array([[0, 0], [math.nan, 0], [4, 4]]),)  # set after the checks of Region
    ds = AnnotationSet([ImageRecord("a.jpg", 8, 8, regions=[region])])
    out = tmp_path / "out"
    with pytest.raises(AnnotationError, match="NaN"):
        save(ds, out, fmt=fmt)
    assert not out.exists()


def test_dump_json_names_the_path_of_a_non_finite_number():
    with pytest.raises(AnnotationError, match=r"^o.json: _via_img_metadata > a > regions > \[0\] > x is -Infinity, "):
        dump_json({"_via_img_metadata": {"a": {"regions": [{"x": -math.inf}]}}}, where="o.json")


# ---------------------------------------------------------------------------------------------- YOLO
@pytest.mark.parametrize("entry", ["/etc", "../../../../etc"])
def test_yolo_folders_outside_the_dataset_are_refused(tmp_path, entry):
    make_set(tmp_path / "ds", {"data.yaml": f"names: [shoe]\ntrain: {entry}\n"})
    _one_line_error(_cli("stats", tmp_path / "ds" / "data.yaml", "--json"),
                    f"train: {entry!r} leaves the dataset's folder", "--allow-outside")


def test_yolo_folder_outside_allowed_is_said(tmp_path):
    make_set(tmp_path, {"other/images/a.png": (10, 10), "other/labels/a.txt": TRI,
                        "ds/data.yaml": "names: [shoe]\ntrain: ../other/images\n"})
    r = _cli("stats", tmp_path / "ds" / "data.yaml", "--json", "--allow-outside")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["images"] == 1 and s["problems"]["data.yaml folders outside the dataset's folder (allowed)"] == 1


def test_yolo_stats_count_images_without_labels_and_labels_without_images(tmp_path):
    make_set(tmp_path, {"data.yaml": "names: [shoe]\ntrain: images/train\nval: images/val\n",
                        "images/train/a.png": (10, 10), "labels/train/a.txt": TRI,
                        "images/train/b.png": (10, 10), "labels/train/orphan.txt": TRI, "images/val/.keep": ""})
    r = _cli("stats", tmp_path, "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["images_without_label_file"] == 1 and s["label_files_without_image"] == 1
    assert s["problems"]["label files without an image (ignored)"] == 1
    assert s["problems"]["split folders without images"] == 1


@pytest.mark.parametrize(("line", "message"), [
    ("0 0.1 0.1 0.5 1_000 0.5 0.6", "line 1: token 5 ('1_000') is not a number (ASCII decimal)"),
    ("0 0.1 0.1 0.5 \u0660.\u0661 0.5 0.6", "line 1: token 5 ('٠.١') is not a number (ASCII decimal)"),
    ("0.0 0.1 0.1 0.5 0.1 0.5 0.6", "line 1: class id '0.0' is not a whole number (ASCII digits)"),
    ("\u0660 0.1 0.1 0.5 0.1 0.5 0.6", "line 1: class id '٠' is not a whole number (ASCII digits)"),
    ("0 0.1 0.1 0.5 0.1 0.5 1e999", "line 1: token 7 ('1e999') is too large for a 64-bit float"),
])
def test_yolo_numbers_are_ascii_decimal_and_class_ids_integers(tmp_path, line, message):
    make_set(tmp_path, {"data.yaml": "names: [shoe]\ntrain: images\n", "images/a.png": (10, 10), "labels/a.txt": line})
    _one_line_error(_cli("stats", tmp_path / "data.yaml", "--json"), str(tmp_path / "labels" / "a.txt") + ": " + message)


# ------------------------------------------------------------------------------------- duplicates, words
def test_duplicate_json_keys_are_counted_as_fixed(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"a.jpg5": {"filename": "a.jpg", "filename": "b.jpg", "size": 5, "regions": []},'
                    ' "a.jpg5": {"filename": "c.jpg", "size": 5, "regions": [], "size": 5}}')
    report = Report()
    ds = load(path, report=report)
    assert [img.file_name for img in ds.images] == ["c.jpg"]
    assert report.counts[DUPLICATE_KEYS] == 3
    r = _cli("stats", path, "--json")
    assert json.loads(r.stdout.strip().splitlines()[-1])["problems"] == {DUPLICATE_KEYS: 3}


@pytest.mark.parametrize(("text", "message"), [
    ("null", "a JSON null is no annotation format"),
    ('"x"', "a JSON string is no annotation format"),
    ('{"images": [], "annotations": [], "categories": {}}', "COCO 'categories' must be a list, got object"),
])
def test_messages_name_json_types(tmp_path, text, message):
    path = tmp_path / "a.json"
    path.write_text(text)
    _one_line_error(_cli("stats", path, "--json"), message)


# ----------------------------------------------------------------------------------- multi-part instances
COCO_MULTI = {
    "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
               {"id": 2, "file_name": "b.jpg", "width": 100, "height": 80}],
    "annotations": [
        {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 0, "bbox": [0, 0, 0, 0],
         "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]},
        {"id": 11, "image_id": 1, "category_id": 2, "iscrowd": 0, "area": 0, "bbox": [0, 0, 0, 0],  # a collar in two parts
         "segmentation": [[40, 10, 50, 10, 50, 20], [60, 10, 70, 10, 70, 20.5, 60, 20]]},
        {"id": 12, "image_id": 2, "category_id": 1, "iscrowd": 0, "area": 0, "bbox": [0, 0, 0, 0],  # a shoe cut in two
         "segmentation": [[0, 0, 20, 0, 20, 20], [30, 0, 50, 0, 50, 20], [60, 0, 80, 0, 80, 20.25]]},
    ],
    "categories": [{"id": 1, "name": "shoe", "supercategory": ""}, {"id": 2, "name": "collar", "supercategory": ""}],
}


def _instances(ds: AnnotationSet) -> list:
    return [(img.file_name, r.label, [p.tolist() for p in r.polygons]) for img in ds.images for r in img.instances]


@pytest.mark.parametrize("fmt", ["via1", "via2", "csv", "via3"])
def test_coco_multi_part_instances_survive_a_trip_through_via(tmp_path, fmt):
    src = tmp_path / "in.json"
    src.write_text(json.dumps(COCO_MULTI))
    first = load(src)
    via = save(first, tmp_path / f"v.{fmt}", fmt=fmt)
    middle = load(via, fmt=fmt)
    assert _instances(middle) == _instances(first) and middle.count_instances() == 3
    middle.images[0].width_px = middle.images[1].width_px = 100  # VIA does not keep sizes
    middle.images[0].height_px = middle.images[1].height_px = 80
    back = load(save(middle, tmp_path / "c.json", fmt="coco"))
    assert _instances(back) == _instances(first)
    assert [len(a["segmentation"]) for a in json.loads((tmp_path / "c.json").read_text())["annotations"]] == [1, 2, 3]


def test_via2_writes_one_grouped_region_per_part_and_says_so(tmp_path):
    src = tmp_path / "in.json"
    src.write_text(json.dumps(COCO_MULTI))
    r = _cli("convert", src, "--to", "via2", "-o", tmp_path / "v.json")
    assert r.exit_code == 0, r.output
    assert "2 images, 6 VIA regions (from 3 regions, 3 instances)" in r.output
    doc = json.loads((tmp_path / "v.json").read_text())
    regions = doc["_via_img_metadata"]["a.jpg-1"]["regions"]
    assert [x["region_attributes"].get(GROUP_ATTR) for x in regions] == [None, "11", "11"]
    assert written_count(load(src), "coco") == (3, "annotations")
    r = _cli("stats", tmp_path / "v.json", "--json")
    assert json.loads(r.stdout.strip().splitlines()[-1])["instances"] == 3


def test_parts_of_one_instance_with_different_labels_are_refused():
    doc = _via2({"name": "rect", "x": 0, "y": 0, "width": 5, "height": 5}, **{GROUP_ATTR: "g"})
    second = copy.deepcopy(doc["a.jpg5"]["regions"][0])
    second["region_attributes"]["label"] = "boot"
    doc["a.jpg5"]["regions"].append(second)
    with pytest.raises(AnnotationError, match=r"^x\.json: image 'a\.jpg': region 1: a part of instance 'g' "
                                              r"\(region attribute shoeseg_instance\) labelled 'boot', but its first "
                                              r"part \(region 0\) is labelled 'shoe'$"):
        via2.read(doc, source="x.json")


def test_via1_and_coco_writers_agree_on_what_they_wrote():
    ds = coco.read(copy.deepcopy(COCO_MULTI), source="c.json")
    doc = via1.write(ds)
    assert sum(len(e["regions"]) for e in doc.values()) == written_count(ds, "via1")[0] == 6
    assert len(via3.write(ds)["metadata"]) == written_count(ds, "via3")[0] == 6
