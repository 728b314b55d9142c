"""Label Studio tasks: percent points, results, tasks and exports, labeling config."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import FIXTURES
from via_tools import labelstudio as ls
from via_tools.errors import AnnotationError
from via_tools.model import AnnotationSet, ImageRecord, Region, as_polygon, polygons_close
from via_tools.report import Report

size = st.integers(min_value=1, max_value=20000)


@settings(max_examples=200, deadline=None)
@given(w=size, h=size, data=st.data())
def test_percent_points_round_trip_within_a_hundredth_of_a_pixel(w, h, data):
    n = data.draw(st.integers(min_value=3, max_value=30))
    xs = data.draw(st.lists(st.floats(0, w, allow_nan=False), min_size=n, max_size=n))
    ys = data.draw(st.lists(st.floats(0, h, allow_nan=False), min_size=n, max_size=n))
    poly = np.stack([xs, ys], axis=1)
    pct = ls.polygon_to_ls_points(poly, w, h)
    # through JSON, as Label Studio stores them
    back = ls.ls_points_to_polygon(json.loads(json.dumps(pct)), w, h)
    assert np.abs(back - poly).max() <= 0.01


# percent coordinates on a 0.1 % grid, a little outside the image too (clipped on reading)
percent = st.integers(-50, 1050).map(lambda v: v / 10)


@st.composite
def ls_result(draw, k: int, w: int, h: int) -> dict:
    kind = draw(st.sampled_from(["polygon", "open polygon", "rectangle"]))
    label = draw(st.sampled_from(["shoe", "boot", 'high "heel"']))
    res = {"id": f"r{k}", "from_name": "label", "to_name": "image", "original_width": w, "original_height": h}
    if kind == "rectangle":
        res["type"] = "rectanglelabels"
        res["value"] = {"x": draw(percent), "y": draw(percent), "width": draw(st.integers(1, 600)) / 10,
                        "height": draw(st.integers(1, 600)) / 10, "rotation": draw(st.sampled_from([0, 0, 30, 90, 212.5])),
                        "rectanglelabels": [label]}
    else:
        n = draw(st.integers(2 if kind == "open polygon" else 3, 8))
        points = draw(st.lists(st.lists(percent, min_size=2, max_size=2), min_size=n, max_size=n))
        res["type"] = "polygonlabels"
        res["value"] = {"points": points, "closed": kind == "polygon", "polygonlabels": [label]}
    if draw(st.booleans()):
        res["score"] = draw(st.floats(0, 1))
    return res


@st.composite
def ls_task(draw, k: int) -> dict:
    w, h = draw(st.integers(1, 6000)), draw(st.integers(1, 6000))
    results = [draw(ls_result(j, w, h)) for j in range(draw(st.integers(0, 4)))]
    if draw(st.booleans()):
        results.append({"id": "q", "type": "choices", "from_name": "q", "to_name": "image", "value": {"choices": ["ok"]}})
    task = {"id": k + 1, "data": {"image": f"/data/upload/1/0badf00d-img{k}.jpg"}}
    if draw(st.booleans()):
        task["annotations"] = [{"id": 1, "was_cancelled": False, "result": results}]
    else:
        task["predictions"] = [{"id": 1, "model_version": "m1", "score": draw(st.floats(0, 1)), "result": results}]
    return task


def _ls_parts(ds: AnnotationSet) -> list:
    """Per image: name, size, URL, the other results kept, and one (label, score, closed, points) per polygon
    part (Label Studio has no multi-part polygon: a repaired region is written as one result per part)."""
    images = []
    for img in ds.images:
        parts = []
        for r in img.regions:
            if r.polygons:
                parts += [(r.label, r.score, r.attributes, True, p) for p in r.polygons]
            else:
                line = np.stack([r.shape["all_points_x"], r.shape["all_points_y"]], axis=1)
                parts.append((r.label, r.score, r.attributes, False, line))
        images.append((img.file_name, img.resolution_wh, img.extra.get("ls_image"), img.extra.get("ls_other_results"),
                       parts))
    return images


@settings(max_examples=150, deadline=None)
@given(tasks=st.integers(1, 3).flatmap(lambda n: st.tuples(*(ls_task(k) for k in range(n)))))
def test_tasks_read_write_read_give_the_same_regions(tasks):
    try:
        ds = ls.read(json.loads(json.dumps(list(tasks))), source="tasks.json")
    except AnnotationError:
        return  # e.g. a polygon with no area left inside the image
    written = json.loads(json.dumps(ls.write(ds)))
    again = ls.read(written, source="written.json")
    first, second = _ls_parts(ds), _ls_parts(again)
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert a[:4] == b[:4]
        assert len(a[4]) == len(b[4]), (a[4], b[4])
        for (label, score, attrs, closed, pts), (label2, score2, attrs2, closed2, pts2) in zip(a[4], b[4], strict=True):
            assert (label, score, attrs, closed) == (label2, score2, attrs2, closed2)
            # pixels -> percent -> pixels: equal to far better than a thousandth of a pixel
            assert pts.shape == pts2.shape and np.allclose(pts, pts2, rtol=0, atol=1e-6), (pts, pts2)


def test_region_result_round_trip():
    r = Region("boot", (as_polygon([(3.3, 4.4), (60.1, 5), (40, 47.9)]),), region_id="abc", score=0.42)
    res = ls.region_to_ls_result(r, 64, 48, from_name="tag", to_name="img")
    assert res["from_name"] == "tag" and res["to_name"] == "img" and res["type"] == "polygonlabels"
    assert res["original_width"] == 64 and res["original_height"] == 48
    assert res["value"]["closed"] is True and res["value"]["polygonlabels"] == ["boot"] and res["id"] == "abc"
    assert res["value"]["points"][1] == pytest.approx([60.1 / 64 * 100, 5 / 48 * 100])
    back = ls.ls_result_to_region(res)
    assert back.label == "boot" and back.score == 0.42 and back.region_id == "abc"
    assert polygons_close(back.polygons, r.polygons, tol_px=1e-9)


def test_multi_part_region_is_one_result_per_part():
    sq = as_polygon([(0, 0), (10, 0), (10, 10), (0, 10)])
    tri = as_polygon([(20, 0), (30, 0), (25, 8)])
    r = Region("shoe", (sq, tri), region_id="m")
    results = ls.region_to_ls_results(r, 40, 20)
    assert [x["id"] for x in results] == ["m", "m_2"]
    with pytest.raises(AnnotationError, match="region m: .*2 polygon part"):
        ls.region_to_ls_result(r, 40, 20)


def test_rectangle_results_become_rects():
    res = {"id": "r", "type": "rectanglelabels", "original_width": 200, "original_height": 100,
           "value": {"x": 10, "y": 20, "width": 25, "height": 50, "rotation": 0, "rectanglelabels": ["shoe"]}}
    r = ls.ls_result_to_region(res)
    assert r.shape == {"name": "rect", "x": 20.0, "y": 20.0, "width": 50.0, "height": 50.0}
    assert r.bbox_xyxy() == (20.0, 20.0, 70.0, 70.0)
    rotated = ls.ls_result_to_region({**res, "value": {**res["value"], "rotation": 90}})
    assert rotated.shape is None
    assert rotated.polygons[0][2] == pytest.approx([20 - 50, 20 + 50])  # corner (w, h) turned a quarter around (x, y)


def test_open_polygon_is_a_polyline_and_goes_back_open():
    res = {"id": "p", "type": "polygonlabels", "original_width": 100, "original_height": 100,
           "value": {"points": [[1, 1], [50, 50]], "closed": False, "polygonlabels": ["lace"]}}
    r = ls.ls_result_to_region(res)
    assert r.shape_name == "polyline" and not r.is_instance
    out = ls.region_to_ls_results(r, 100, 100)
    assert out[0]["value"]["closed"] is False and out[0]["value"]["points"] == [[1.0, 1.0], [50.0, 50.0]]


@pytest.mark.parametrize("url,name", [
    ("/data/upload/3/1a2b3c4d-left%20shoe.jpg", "left shoe.jpg"),
    ("/data/upload/3/not-a-hash.jpg", "not-a-hash.jpg"),
    ("/data/local-files/?d=shoes/images/a.jpg", "a.jpg"),
    ("http://example.com/img/b.png?token=1", "b.png"),
    ("s3://bucket/dir/c.jpg", "c.jpg"),
    ("sub/d.jpg", "sub/d.jpg"),
])
def test_file_name_from_url(url, name):
    assert ls.file_name_from_ls_url(url) == name


def test_labeling_config_is_valid_xml_with_every_label():
    cfg = ls.labeling_config(["shoe", 'boot "high" & <low>'], from_name="poly", to_name="photo")
    root = ET.fromstring(cfg)
    image = root.find("Image")
    control = root.find("PolygonLabels")
    assert image.get("name") == "photo" and image.get("value") == "$image"
    assert control.get("name") == "poly" and control.get("toName") == "photo"
    assert [lab.get("value") for lab in control.findall("Label")] == ["shoe", 'boot "high" & <low>']
    with pytest.raises(AnnotationError):
        ls.labeling_config([])


def _export_task():
    res = {"type": "polygonlabels", "original_width": 200, "original_height": 100, "from_name": "label",
           "to_name": "image"}
    return {
        "id": 11,
        "data": {"image": "/data/upload/2/0badf00d-a.jpg"},
        "annotations": [
            {"id": 1, "was_cancelled": False, "updated_at": "2026-01-01T10:00:00Z",
             "result": [{**res, "id": "old", "value": {"points": [[0, 0], [10, 0], [10, 10]], "polygonlabels": ["shoe"]}}]},
            {"id": 2, "was_cancelled": False, "updated_at": "2026-01-02T10:00:00Z",
             "result": [{**res, "id": "new", "value": {"points": [[5, 5], [20, 5], [20, 20]], "polygonlabels": ["shoe"],
                                                        "closed": True}},
                        {"id": "c", "type": "choices", "from_name": "q", "to_name": "image", "value": {"choices": ["ok"]}}]},
            {"id": 3, "was_cancelled": True, "updated_at": "2026-01-03T10:00:00Z", "result": []},
        ],
        "predictions": [{"id": 9, "model_version": "v1", "score": 0.3, "result": []}],
    }


def test_export_takes_latest_live_annotation_and_keeps_other_results():
    report = Report()
    ds = ls.read([_export_task()], source="export.json", report=report)
    img = ds.images[0]
    assert img.file_name == "a.jpg" and img.image_id == "11" and (img.width_px, img.height_px) == (200, 100)
    assert img.extra["ls_annotation_id"] == 2 and img.extra["ls_image"] == "/data/upload/2/0badf00d-a.jpg"
    assert [r.region_id for r in img.regions] == ["new"]
    assert img.regions[0].polygons[0].tolist() == [[10, 5], [40, 5], [40, 20]]
    assert report.counts["tasks with several annotations (latest kept)"] == 1
    assert img.extra["ls_other_results"][0]["type"] == "choices"
    # writing Label Studio again keeps the choices result and the URL
    task = ls.write(ds)[0]
    assert task["data"] == {"image": "/data/upload/2/0badf00d-a.jpg"}
    types = [r["type"] for r in task["annotations"][0]["result"]]
    assert types == ["polygonlabels", "choices"]


def test_real_label_studio_tasks_with_predictions():
    body = json.loads((FIXTURES / "predict.json").read_text())["body"]
    ds = ls.read(body["tasks"], source="predict.json")
    assert [img.file_name for img in ds.images][:2] == ["img1.jpg", "img1.jpg"]
    first = ds.images[0]
    assert first.image_id == "2" and first.extra["ls_model_version"] == "probe-v1"
    r = first.regions[0]
    assert r.score == pytest.approx(0.1)  # the prediction's score, the result having none
    assert np.allclose(r.polygons[0], [[12.8, 9.6], [25.6, 9.6], [25.6, 19.2]])


def test_write_predictions_with_task_score_and_model_version():
    img = ImageRecord("a.jpg", 100, 50, regions=[
        Region("shoe", (as_polygon([(0, 0), (10, 0), (10, 10)]),), score=0.9),
        Region("shoe", (as_polygon([(20, 0), (30, 0), (30, 10)]),), score=0.5),
    ])
    task = ls.write(AnnotationSet([img]), as_="predictions", model_version="m7")[0]
    pred = task["predictions"][0]
    assert pred["model_version"] == "m7" and pred["score"] == pytest.approx(0.7)
    assert [r["score"] for r in pred["result"]] == [0.9, 0.5]
    assert [r["id"] for r in pred["result"]] == ["r1", "r2"]
    assert "annotations" not in task


def test_plain_import_tasks_without_results_read_as_unlabelled_images():
    ds = ls.read([{"image": "x.jpg"}, {"data": {"image": "y.jpg"}}], source="tasks.json")
    assert [i.file_name for i in ds.images] == ["x.jpg", "y.jpg"]
    assert ds.count_regions() == 0


BAD = [
    ("not a list", "abc", "Label Studio tasks are a JSON list"),
    ("no image", [{"data": {"text": "hi"}}], "task #0: task has no image URL"),
    ("no size", [{"id": 4, "data": {"image": "a.jpg"}, "annotations": [{"id": 1, "result": [
        {"id": "r", "type": "polygonlabels", "value": {"points": [[0, 0], [1, 0], [1, 1]], "polygonlabels": ["shoe"]}}]}]}],
     "task 4: annotation 1: result r: result needs original_width"),
    ("two points", [{"id": 4, "data": {"image": "a.jpg"}, "annotations": [{"id": 1, "result": [
        {"id": "r", "type": "polygonlabels", "original_width": 10, "original_height": 10,
         "value": {"points": [[0, 0], [1, 0]], "polygonlabels": ["shoe"]}}]}]}],
     "task 4: annotation 1: result r: polygon has 2 points"),
    ("bad labels", [{"id": 4, "data": {"image": "a.jpg"}, "annotations": [{"id": 1, "result": [
        {"id": "r", "type": "polygonlabels", "original_width": 10, "original_height": 10,
         "value": {"points": [[0, 0], [1, 0], [1, 1]], "polygonlabels": "shoe"}}]}]}],
     "result r: 'polygonlabels' must be an array"),
    ("result not a list", [{"id": 4, "data": {"image": "a.jpg"}, "annotations": [{"id": 1, "result": {}}]}],
     "task 4: annotation 1: 'result' must be a list"),
]


@pytest.mark.parametrize("name,doc,message", BAD, ids=[b[0] for b in BAD])
def test_bad_tasks_name_the_file_task_and_result(name, doc, message):
    with pytest.raises(AnnotationError) as e:
        ls.read(doc, source="tasks.json")
    assert str(e.value).startswith("tasks.json"), str(e.value)
    assert message in str(e.value), str(e.value)


def test_write_without_image_size_names_the_image():
    img = ImageRecord("nosize.jpg", regions=[Region("shoe", (as_polygon([(0, 0), (1, 0), (1, 1)]),))])
    with pytest.raises(AnnotationError, match="nosize.jpg.*--images"):
        ls.write(AnnotationSet([img]))
