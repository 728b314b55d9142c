"""Format detection, loading (with its bad-file table), atomic saving and the images folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from via_tools import via1, via2
from via_tools.errors import AnnotationError
from via_tools.io import FORMATS, detect_format, load, save
from via_tools.model import AnnotationSet, ImageRecord, Region
from via_tools.options import ReadOptions
from via_tools.report import Report
from via_tools.via_csv import HEADER, HEADER_V1

RECT = {"name": "rect", "x": 2, "y": 2, "width": 10, "height": 8}
POLY = {"name": "polygon", "all_points_x": [1, 20, 20, 1], "all_points_y": [1, 1, 15, 15]}


def _via1():
    return {"a.jpg5": {"fileref": "", "size": 5, "filename": "a.jpg", "base64_img_data": "", "file_attributes": {},
                       "regions": {"0": {"shape_attributes": POLY, "region_attributes": {"label": "shoe"}}}}}


def _via2_export():
    return {"a.jpg5": {"filename": "a.jpg", "size": 5, "regions": [
        {"shape_attributes": POLY, "region_attributes": {"label": "shoe"}}], "file_attributes": {}}}


def _via3():
    return {"project": {"vid_list": ["1"]}, "config": {}, "attribute": {},
            "file": {"1": {"fid": "1", "fname": "a.jpg", "type": 2, "loc": 1, "src": ""}},
            "view": {"1": {"fid_list": ["1"]}},
            "metadata": {"1_x": {"vid": "1", "flg": 0, "z": [], "xy": [7, 1, 1, 20, 1, 20, 15, 1, 15], "av": {}}}}


@pytest.mark.parametrize(
    ("doc", "fmt"),
    [
        (_via1(), "via1"),
        ({"a.jpg5": {"fileref": "", "size": 5, "filename": "a.jpg", "base64_img_data": "", "file_attributes": {},
                     "regions": []}}, "via1"),
        (_via2_export(), "via2"),
        ({"_via_settings": {}, "_via_img_metadata": {}, "_via_attributes": {}}, "via2"),
        ({}, "via2"),
        (_via3(), "via3"),
        (HEADER + '\na.jpg,1,"{}",0,0,"{}","{}"', "csv"),
        ("\ufeff" + HEADER_V1 + "\r\n", "csv"),
        ({"images": [], "annotations": [], "categories": []}, "coco"),
        ([{"id": 1, "data": {"image": "/data/a.jpg"}, "annotations": []}], "ls"),
        (json.dumps(_via1()), "via1"),
    ],
)
def test_detect_format(doc, fmt):
    assert detect_format(doc, source="x") == fmt


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([1, 2], "not a list of Label Studio tasks"),
        (3, "a JSON number is no annotation format"),
        ({"name": "x", "version": 2}, "not a recognised annotation file (top-level keys: name, version)"),
        ("hello", "neither JSON nor a VIA CSV export"),
        ('{"a": ', "line 1 column 7: not valid JSON"),
    ],
)
def test_detect_format_refuses_other_documents(doc, message):
    with pytest.raises(AnnotationError) as e:
        detect_format(doc, source="thing.json")
    assert str(e.value).startswith("thing.json: ") and message in str(e.value)


def test_formats_table():
    assert list(FORMATS) == ["via1", "via2", "via3", "csv", "coco", "ls", "yolo"]
    assert FORMATS["via1"] is via1 and FORMATS["via2"] is via2
    assert all(callable(FORMATS[n].read) and callable(FORMATS[n].write) for n in ("via1", "via2", "via3", "csv"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"", "line 1 column 1: not valid JSON"),
        (b'{"a.jpg5": {"filename": "a.jpg",\n "regions": [', "line 2 column 14: not valid JSON"),
        (b'{"a": 1,}', "line 1 column 9: not valid JSON"),
        (b"\xff\xfe\x00garbage", "not UTF-8 text"),
        (b'{"images": 1}', "not a recognised annotation file"),
        (b"name,x\n1,2", "line 1 column 1: not valid JSON"),
        (json.dumps({"a.jpg5": {"filename": "a.jpg", "regions": [{"shape_attributes": {"name": "rect", "x": 1}}]}}).encode(),
         "image 'a.jpg': region 0: rect shape has no 'y'"),
    ],
)
def test_load_bad_files(tmp_path, content, message):
    path = tmp_path / "bad file.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AnnotationError) as e:
        load(path)
    assert str(e.value).startswith(str(path)) and message in str(e.value)


def test_load_directory_is_an_error(tmp_path):
    with pytest.raises(AnnotationError, match="cannot read"):
        load(tmp_path)


def test_load_unknown_format_name(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(_via1()))
    with pytest.raises(AnnotationError, match="unknown format 'pascal'"):
        load(path, fmt="pascal")


@pytest.mark.parametrize("fmt", ["via1", "via2", "via3", "csv"])
def test_save_then_load_every_via_format(tmp_path, fmt):
    ds = via1.read(_via1(), source="x")
    path = save(ds, tmp_path / "sub" / f"out.{fmt}", fmt=fmt)
    back = load(path)
    assert back.source_format == fmt
    assert [r.label for r in back.images[0].regions] == ["shoe"]
    assert np.array_equal(back.images[0].regions[0].polygons[0], ds.images[0].regions[0].polygons[0])


def test_chain_of_conversions_keeps_polygons_labels_and_attributes(tmp_path):
    ds = via1.read(_via1(), source="x")
    for fmt in ("via2", "via3", "csv", "via1", "via2"):
        ds = load(save(ds, tmp_path / f"c.{fmt}", fmt=fmt))
    (r,) = ds.images[0].regions
    assert r.label == "shoe" and r.shape == POLY and ds.images[0].file_name == "a.jpg"


def test_save_is_atomic(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    bad = AnnotationSet(images=[ImageRecord("a.jpg", regions=[
        Region("shoe", polygons=([[0, 0], [4, 0], [4, 4]],), attributes={"not json": {1, 2}})])])
    with pytest.raises(TypeError):
        save(bad, path, fmt="via2")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]
    save(via1.read(_via1(), source="x"), path, fmt="via2")
    assert "_via_img_metadata" in json.loads(path.read_text())
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_images_dir_fills_sizes_and_clips(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (16, 12)).save(tmp_path / "img" / "a.jpg")
    path = tmp_path / "v.json"
    path.write_text(json.dumps(_via1()))
    report = Report()
    ds = load(path, options=ReadOptions(images_dir=tmp_path / "img"), report=report)
    img = ds.images[0]
    assert (img.width_px, img.height_px) == (16, 12)
    assert img.regions[0].polygons[0].max(axis=0).tolist() == [16, 12]
    assert report.counts["clipped points"] == 1
    assert img.regions[0].shape == POLY  # the source shape stays as written


def test_images_dir_with_missing_images_lists_them(tmp_path):
    (tmp_path / "img").mkdir()
    doc = _via2_export()
    doc["b.jpg1"] = {"filename": "b.jpg", "size": 1, "regions": [], "file_attributes": {}}
    path = tmp_path / "v.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(AnnotationError) as e:
        load(path, options=ReadOptions(images_dir=tmp_path / "img"))
    assert str(path) in str(e.value) and "2 image(s) missing" in str(e.value) and "'a.jpg', 'b.jpg'" in str(e.value)


def test_images_dir_with_unreadable_image(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(b"not an image")
    path = tmp_path / "v.json"
    path.write_text(json.dumps(_via2_export()))
    with pytest.raises(AnnotationError, match="image 'a.jpg'.*not a readable image"):
        load(path, options=ReadOptions(images_dir=tmp_path / "img"))


def test_load_logs_the_report(tmp_path, caplog):
    doc = _via2_export()
    doc["a.jpg5"]["regions"][0]["shape_attributes"] = {"name": "polygon", "all_points_x": [-3, 20, 20, 1],
                                                       "all_points_y": [1, 1, 15, 15]}
    path = tmp_path / "v.json"
    path.write_text(json.dumps(doc))
    with caplog.at_level("WARNING", logger="via_tools"):
        load(path)
    assert any("1 clipped points" in m and str(path) in m for m in caplog.messages)
