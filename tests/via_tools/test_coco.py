"""COCO instances: reading, writing, bbox/area, RLE, multi-part regions, round trips and bad inputs."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest

from via_tools import coco, via2
from via_tools.errors import AnnotationError
from via_tools.model import AnnotationSet, ImageRecord, Region, as_polygon, polygons_close
from via_tools.report import Report

SQUARE = [10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]
TRIANGLE = [40.0, 5.0, 60.0, 5.0, 50.0, 25.0]


def coco_doc() -> dict:
    return {
        "info": {"description": "test set"},
        "licenses": [{"id": 1, "name": "CC"}],
        "images": [
            {"id": 7, "file_name": "a.jpg", "width": 64, "height": 48, "license": 1},
            {"id": 9, "file_name": "b.jpg", "width": 80, "height": 60},
        ],
        "annotations": [
            {"id": 101, "image_id": 7, "category_id": 3, "segmentation": [SQUARE], "area": 1, "bbox": [0, 0, 1, 1],
             "iscrowd": 0},
            {"id": 102, "image_id": 7, "category_id": 5, "segmentation": [SQUARE, TRIANGLE], "iscrowd": 0,
             "attributes": {"occluded": True}},
            {"id": 103, "image_id": 9, "category_id": 3, "segmentation": [TRIANGLE], "iscrowd": 1, "score": 0.75},
        ],
        "categories": [{"id": 5, "name": "boot", "supercategory": "footwear"},
                       {"id": 3, "name": "shoe", "supercategory": "footwear"}],
    }


def test_read_keeps_ids_labels_crowd_and_other_keys():
    ds = coco.read(coco_doc(), source="t.json")
    assert [img.image_id for img in ds.images] == ["7", "9"]
    assert ds.labels == ["shoe", "boot"]  # category id order
    a, b = ds.images
    assert (a.width_px, a.height_px) == (64, 48)
    assert [r.region_id for r in a.regions] == ["101", "102"]
    assert [r.label for r in a.regions] == ["shoe", "boot"]
    assert a.regions[0].polygons[0].tolist() == [[10, 10], [30, 10], [30, 30], [10, 30]]
    assert len(a.regions[1].polygons) == 2  # multi-part stays one region
    assert a.regions[1].extra["coco"] == {"attributes": {"occluded": True}}
    assert b.regions[0].extra["iscrowd"] == 1 and b.regions[0].score == 0.75
    assert a.extra["coco"] == {"license": 1}


def test_write_computes_bbox_and_area_and_round_trips():
    doc = coco_doc()
    out = coco.write(coco.read(doc, source="t.json"))
    anns = {a["id"]: a for a in out["annotations"]}
    assert anns[101]["bbox"] == [10.0, 10.0, 20.0, 20.0]
    assert anns[101]["area"] == pytest.approx(400.0)
    # two parts: square 400 + triangle 200, box around both
    assert anns[102]["area"] == pytest.approx(600.0)
    assert anns[102]["bbox"] == [10.0, 5.0, 50.0, 25.0]
    assert anns[102]["segmentation"] == [SQUARE, TRIANGLE]
    assert anns[102]["attributes"] == {"occluded": True}
    assert anns[103]["iscrowd"] == 1 and anns[103]["score"] == 0.75
    assert anns[103]["image_id"] == 9 and anns[101]["image_id"] == 7
    assert out["categories"] == doc["categories"] or sorted(out["categories"], key=lambda c: c["id"]) == sorted(
        doc["categories"], key=lambda c: c["id"])
    assert {c["name"]: c["id"] for c in out["categories"]} == {"shoe": 3, "boot": 5}
    assert out["info"] == doc["info"] and out["licenses"] == doc["licenses"]
    assert out["images"][0] == doc["images"][0]
    # and a second pass gives the same document (JSON-equal)
    again = coco.write(coco.read(json.loads(json.dumps(out)), source="t2.json"))
    assert json.dumps(again, sort_keys=True) == json.dumps(out, sort_keys=True)


def test_write_numbers_non_integer_ids_and_new_labels():
    img = ImageRecord("x.png", 20, 20, image_id="x.png123",
                      regions=[Region("sandal", (as_polygon([(0, 0), (5, 0), (5, 5)]),), region_id="abc"),
                               Region("shoe", (as_polygon([(1, 1), (6, 1), (6, 6)]),))])
    out = coco.write(AnnotationSet([img]))
    assert out["images"][0]["id"] == 1
    assert [a["id"] for a in out["annotations"]] == [1, 2]
    assert [c["name"] for c in out["categories"]] == ["sandal", "shoe"]
    assert [c["id"] for c in out["categories"]] == [1, 2]


def test_passive_regions_are_left_out_with_a_warning(caplog):
    img = ImageRecord("x.png", 20, 20, regions=[
        Region("shoe", (as_polygon([(0, 0), (5, 0), (5, 5)]),)),
        Region("lace", shape={"name": "polyline", "all_points_x": [0, 3], "all_points_y": [0, 3]}),
    ])
    with caplog.at_level("WARNING"):
        out = coco.write(AnnotationSet([img]))
    assert len(out["annotations"]) == 1
    assert "1 region(s) without area" in caplog.text


def test_bbox_only_annotation_becomes_rect():
    doc = coco_doc()
    doc["annotations"] = [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [2, 3, 10, 5], "iscrowd": 0}]
    report = Report()
    ds = coco.read(doc, source="t.json", report=report)
    r = ds.images[0].regions[0]
    assert r.shape == {"name": "rect", "x": 2, "y": 3, "width": 10, "height": 5}
    assert r.bbox_xyxy() == (2.0, 3.0, 12.0, 8.0)
    assert sum(report.counts.values()) == 1


# ------------------------------------------------------------------------------------------- RLE
def _random_masks():
    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (5, 7), (30, 40), (64, 33)]:
        yield rng.random((h, w)) > 0.5
    m = np.zeros((40, 50), bool)
    m[5:30, 8:20] = True
    yield m
    yield np.ones((9, 4), bool)
    yield np.zeros((9, 4), bool)


@pytest.mark.parametrize("mask", list(_random_masks()))
def test_rle_decode_matches_pycocotools(mask):
    from pycocotools import mask as mask_utils

    enc = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    compressed = {"size": list(enc["size"]), "counts": enc["counts"].decode("ascii")}
    assert np.array_equal(coco.rle_decode(compressed, where="t"), mask)
    unc = coco.rle_encode(mask)
    assert np.array_equal(coco.rle_decode(unc, where="t"), mask)
    # our uncompressed encoding is what pycocotools understands too
    assert mask_utils.frPyObjects(unc, *unc["size"])["counts"] == enc["counts"]


@pytest.mark.parametrize("compressed", [False, True])
def test_rle_annotation_is_traced_and_written_back(compressed):
    from pycocotools import mask as mask_utils

    mask = np.zeros((48, 64), bool)
    mask[10:30, 5:25] = True
    mask[35:45, 40:60] = True
    if compressed:
        enc = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle = {"size": [48, 64], "counts": enc["counts"].decode("ascii")}
    else:
        rle = coco.rle_encode(mask)
    doc = coco_doc()
    doc["annotations"] = [{"id": 5, "image_id": 7, "category_id": 3, "segmentation": rle, "iscrowd": 1}]
    report = Report()
    ds = coco.read(doc, source="t.json", report=report)
    r = ds.images[0].regions[0]
    assert len(r.polygons) == 2  # two blobs, one region
    x0, y0, x1, y1 = r.bbox_xyxy()
    assert (x0, y0, x1, y1) == pytest.approx((5.5, 10.5, 59.5, 44.5))  # pixel centres of the edge pixels
    assert report.counts["RLE masks traced to polygons"] == 1
    out = coco.write(ds)["annotations"][0]
    assert out["segmentation"] == rle
    assert out["area"] == mask.sum()
    assert out["iscrowd"] == 1


@pytest.mark.parametrize("mask", list(_random_masks()))
def test_our_encodings_are_pycocotools_own_and_decode_with_it_to_the_same_mask(mask):
    from pycocotools import mask as mask_utils

    enc = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    ours = coco.rle_encode(mask, compressed=True)
    assert ours == {"size": list(mask.shape), "counts": enc["counts"].decode("ascii")}
    assert json.loads(json.dumps(ours)) == ours  # JSON-able as it is
    assert np.array_equal(mask_utils.decode(ours), mask)
    unc = coco.rle_encode(mask)
    assert np.array_equal(mask_utils.decode(mask_utils.frPyObjects(unc, *unc["size"])), mask)
    assert np.array_equal(coco.rle_decode(ours, where="t"), mask)
    assert np.array_equal(coco.rle_decode({**ours, "counts": ours["counts"].encode()}, where="t"), mask)  # bytes


@pytest.mark.parametrize("compressed", [False, True])
def test_rle_written_by_our_writer_reads_with_pycocotools_to_the_same_mask(compressed):
    from pycocotools.coco import COCO

    mask = np.zeros((48, 64), bool)
    mask[3:20, 30:50] = True
    mask[25:40, 2:12] = True
    mask[30:35, 5:8] = False  # a hole: kept by the RLE, lost by the traced polygons
    doc = coco_doc()
    doc["annotations"] = [{"id": 5, "image_id": 7, "category_id": 3, "iscrowd": 0,
                           "segmentation": coco.rle_encode(mask, compressed=compressed)}]
    written = json.loads(json.dumps(coco.write(coco.read(doc, source="t.json"))))
    api = COCO()
    api.dataset = written
    api.createIndex()
    ann = api.loadAnns([5])[0]
    assert np.array_equal(api.annToMask(ann).astype(bool), mask)
    assert ann["area"] == mask.sum()
    # and back: what pycocotools decodes, our reader decodes the same
    assert np.array_equal(coco.rle_decode(written["annotations"][0]["segmentation"], where="t"), mask)


@pytest.mark.parametrize(("counts", "message"), [
    ("", "RLE runs cover 0 pixels, the 3x2 mask has 6"),
    ("1", "RLE runs cover 1 pixels, the 3x2 mask has 6"),
    ("9", "RLE runs cover 9 pixels, the 3x2 mask has 6"),  # more than the mask: pycocotools would overrun
    ("1P", "compressed RLE string ends in the middle of a number"),  # "P" (0x20 + 48): more follows
    ("1é", "compressed RLE string has a bad character 'é'"),
    (b"1\xff", "compressed RLE string has a bad character"),
    ("1\x00", "compressed RLE string has a bad character"),
    ("0" + "P" * 6 + "0", "compressed RLE string has a number longer than 6 characters"),
    ("O", "compressed RLE decodes to a negative run length"),  # "O" (0x1f + 48): -1
    ([1, -1, 6], "RLE 'counts' must be non-negative integers"),
    ([1, True, 4], "RLE 'counts' must be non-negative integers"),
    ({"a": 1}, "RLE 'counts' must be a list or a string, got object"),
])
def test_damaged_rle_counts_are_refused_with_the_annotation_named(counts, message):
    with pytest.raises(AnnotationError, match="^" + re.escape("img 'a.jpg': annotation 3: " + message)):
        coco.rle_decode({"size": [2, 3], "counts": counts}, where="img 'a.jpg': annotation 3")


def test_an_rle_size_pycocotools_cannot_hold_is_refused():
    with pytest.raises(AnnotationError, match="too large"):
        coco.rle_decode({"size": [70000, 70000], "counts": [70000 * 70000]}, where="a")


# ------------------------------------------------------------------------------------- sanitize
def test_out_of_bounds_and_self_intersecting_polygons_are_fixed_and_counted():
    doc = coco_doc()
    doc["annotations"] = [
        {"id": 1, "image_id": 7, "category_id": 3, "segmentation": [[-5, 2, 70, 2, 70, 50, 0, 40]]},
        {"id": 2, "image_id": 7, "category_id": 3, "segmentation": [[0, 0, 20, 20, 20, 0, 0, 20]]},  # bow tie
    ]
    report = Report()
    ds = coco.read(doc, source="t.json", report=report)
    clipped, bowtie = ds.images[0].regions
    pts = clipped.polygons[0]
    assert pts[:, 0].min() >= 0 and pts[:, 0].max() <= 64 and pts[:, 1].max() <= 48
    assert len(bowtie.polygons) == 2
    assert report.counts["clipped points"] == 1 and report.counts["repaired polygons"] == 1


# ---------------------------------------------------------------------------- VIA -> COCO -> VIA
def test_via_to_coco_to_via_keeps_polygons():
    via = {
        "a.jpg100": {"filename": "a.jpg", "size": 100, "file_attributes": {}, "regions": [
            {"shape_attributes": {"name": "polygon", "all_points_x": [1.5, 20.25, 18, 3],
                                  "all_points_y": [2, 3.75, 30.5, 25]}, "region_attributes": {"label": "shoe"}},
            {"shape_attributes": {"name": "rect", "x": 30, "y": 5, "width": 10, "height": 12},
             "region_attributes": {"label": "boot"}},
        ]},
        "b.jpg200": {"filename": "b.jpg", "size": 200, "file_attributes": {}, "regions": [
            {"shape_attributes": {"name": "polygon", "all_points_x": [5, 40, 22], "all_points_y": [5, 6, 33]},
             "region_attributes": {"label": "shoe"}},
        ]},
    }
    first = via2.read(via, source="v.json")
    coco_doc_ = json.loads(json.dumps(coco.write(first)))
    back = via2.read(via2.write(coco.read(coco_doc_, source="c.json")), source="v2.json")
    assert [i.file_name for i in back.images] == ["a.jpg", "b.jpg"]
    for i0, i1 in zip(first.images, back.images, strict=True):
        assert [r.label for r in i0.regions] == [r.label for r in i1.regions]
        for r0, r1 in zip(i0.regions, i1.regions, strict=True):
            assert polygons_close(r0.polygons, r1.polygons, tol_px=1e-3)


# ------------------------------------------------------------------------------------ bad inputs
def _mutate(fn):
    doc = coco_doc()
    fn(doc)
    return doc


BAD = [
    ("not an object", lambda d: None, ["x"], "a COCO file is a JSON object"),
    ("images missing", lambda d: d.pop("images"), None, "'images' must be a list"),
    ("annotations not a list", lambda d: d.update(annotations={}), None, "'annotations' must be a list"),
    ("unknown image", lambda d: d["annotations"][0].update(image_id=99), None, "annotation 101: image_id 99 is not in 'images'"),
    ("unknown category", lambda d: d["annotations"][0].update(category_id=42), None, "annotation 101: category_id 42"),
    ("odd coordinates", lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, 4, 5, 6, 7]]), None,
     "image 'a.jpg': annotation 101: polygon 0: polygon has an odd number of coordinates"),
    ("two points", lambda d: d["annotations"][1].update(segmentation=[SQUARE, [1, 2, 3, 4]]), None,
     "annotation 102: polygon 1: polygon has 2 points"),
    ("text coordinate", lambda d: d["annotations"][0].update(segmentation=[[1, 2, "x", 4, 5, 6]]), None,
     "annotation 101: polygon 0: polygon coordinates must be numbers"),
    ("NaN coordinate", lambda d: d["annotations"][0].update(segmentation=[[1, 2, float("nan"), 4, 5, 6]]), None,
     "annotation 101: polygon 0: polygon has NaN"),
    ("zero area", lambda d: d["annotations"][0].update(segmentation=[[1, 1, 2, 2, 3, 3]]), None, "annotation 101"),
    ("segmentation text", lambda d: d["annotations"][0].update(segmentation="abc"), None,
     "annotation 101: 'segmentation' must be a list of polygons or an RLE object"),
    ("duplicate image id", lambda d: d["images"][1].update(id=7), None, "image 'b.jpg': image id 7 is used twice"),
    ("duplicate annotation id", lambda d: d["annotations"][1].update(id=101), None, "annotation 101: annotation id is used twice"),
    ("image without file name", lambda d: d["images"][0].pop("file_name"), None, "image #0: an image needs an 'id' and a 'file_name'"),
    ("bad width", lambda d: d["images"][0].update(width=-3), None, "image 'a.jpg': width_px must be a positive integer"),
    ("RLE size differs", lambda d: d["annotations"][0].update(segmentation={"size": [4, 4], "counts": [16]}), None,
     "annotation 101: RLE size [4, 4] differs"),
    ("RLE runs do not add up", lambda d: d["annotations"][0].update(segmentation={"size": [48, 64], "counts": [3, 4]}), None,
     "annotation 101: RLE runs cover 7 pixels"),
    ("RLE bad string", lambda d: d["annotations"][0].update(segmentation={"size": [48, 64], "counts": "\x01"}), None,
     "annotation 101: compressed RLE string has a bad character"),
    ("score above 1", lambda d: d["annotations"][0].update(score=3), None, "annotation 101: score must be a number in [0, 1]"),
    ("category without name", lambda d: d["categories"][0].pop("name"), None, "category #0"),
]


@pytest.mark.parametrize("name,mutate,replace,message", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs_name_the_file_and_the_place(name, mutate, replace, message):
    doc = replace if replace is not None else _mutate(mutate)
    with pytest.raises(AnnotationError) as e:
        coco.read(copy.deepcopy(doc), source="bad.json")
    assert str(e.value).startswith("bad.json"), str(e.value)
    assert message in str(e.value), str(e.value)
