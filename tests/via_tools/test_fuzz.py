"""Property tests: damaged VIA documents give an AnnotationError or a set that writes, never another exception;
what a reader accepts writes back to a document that reads again to the same annotations."""

from __future__ import annotations

import copy
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from via_tools import via1, via2, via3, via_csv
from via_tools.errors import AnnotationError

POLY = {"name": "polygon", "all_points_x": [1, 30, 30, 1], "all_points_y": [1, 1, 20, 20]}
RECT = {"name": "rect", "x": 2, "y": 3, "width": 10, "height": 5}
CIRCLE = {"name": "circle", "cx": 10, "cy": 10, "r": 4}
ELLIPSE = {"name": "ellipse", "cx": 10, "cy": 10, "rx": 4, "ry": 2, "theta": 0.1}


def _regions():
    return [{"shape_attributes": copy.deepcopy(s), "region_attributes": {"label": "shoe", "c": {"x": True}}}
            for s in (POLY, RECT, CIRCLE, ELLIPSE)]


VIA1 = {"a.jpg5": {"fileref": "", "size": 5, "filename": "a.jpg", "base64_img_data": "", "file_attributes": {"k": 1},
                   "regions": {str(i): r for i, r in enumerate(_regions())}}}
VIA2_EXPORT = {"a.jpg5": {"filename": "a.jpg", "size": 5, "regions": _regions(), "file_attributes": {}},
               "b.jpg6": {"filename": "b.jpg", "size": 6, "regions": [], "file_attributes": {}}}
VIA2 = {"_via_settings": {"ui": {}}, "_via_img_metadata": copy.deepcopy(VIA2_EXPORT),
        "_via_attributes": {"region": {}, "file": {}}, "_via_data_format_version": "2.0.10",
        "_via_image_id_list": ["a.jpg5", "b.jpg6"]}
VIA3 = {"project": {"vid_list": ["1"]}, "config": {},
        "attribute": {"1": {"aname": "label", "type": 4, "options": {"0": "shoe"}}},
        "file": {"1": {"fid": "1", "fname": "a.jpg", "type": 2, "loc": 1, "src": ""}},
        "view": {"1": {"fid_list": ["1"]}},
        "metadata": {"1_a": {"vid": "1", "flg": 0, "z": [], "xy": [7, 1, 1, 9, 1, 9, 9], "av": {"1": "0"}},
                     "1_b": {"vid": "1", "flg": 0, "z": [], "xy": [2, 1, 1, 5, 5], "av": {}},
                     "1_c": {"vid": "1", "flg": 0, "z": [1, 2], "xy": [], "av": {"1": "0"}}}}
CSV = via_csv.write(via2.read(copy.deepcopy(VIA2_EXPORT), source="x"))

CASES = [(via1, VIA1), (via2, VIA2), (via2, VIA2_EXPORT), (via3, VIA3)]

json_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**300, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0]),
    st.text(max_size=5), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _mutate(doc, data):
    paths = [p for p in _paths(doc) if p]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        parent = doc
        try:
            for k in path[:-1]:
                parent = parent[k]
            if not isinstance(parent, dict | list):
                continue
            current = parent[path[-1]]
        except (KeyError, IndexError, TypeError):
            continue
        action = data.draw(st.sampled_from(["delete", "replace", "truncate", "stringify"]))
        if action == "delete":
            if isinstance(parent, dict):
                del parent[path[-1]]
            else:
                parent.pop(path[-1])
        elif action == "replace":
            parent[path[-1]] = data.draw(json_values)
        elif action == "truncate" and isinstance(current, list | str):
            parent[path[-1]] = current[: data.draw(st.integers(0, max(len(current) - 1, 0)))]
        elif action == "stringify":
            parent[path[-1]] = json.dumps(current)
    return doc


def _canonical(module, ds) -> str:
    """The annotations a reader made of a document, as JSON text (NaN and -0.0 compare as written)."""
    images = []
    for img in ds.images:
        ids = [r.region_id for r in img.regions]
        # VIA 1/2 and CSV writers keep region ids that are unique numbers and number the regions otherwise
        kept = module is via3 or (all(isinstance(i, str) and i.isdigit() for i in ids) and len(set(ids)) == len(ids))
        regions = [[r.region_id if kept else str(k), r.label, r.shape, r.attributes, r.score, r.is_instance,
                    [p.tolist() for p in r.polygons]] for k, r in enumerate(img.regions)]
        images.append([img.image_id, img.file_name, img.width_px, img.height_px, img.file_size, img.file_attributes,
                       regions])
    return json.dumps(images)


def _check(module, doc):
    try:
        ds = module.read(doc, source="fuzz.json")
    except AnnotationError:
        return
    written = module.write(ds)
    # through the file's text, as a user's round trip goes; what we wrote must read without error
    text = written if module is via_csv else json.dumps(written)
    again = module.read(text if module is via_csv else json.loads(text), source="written.json")
    assert _canonical(module, again) == _canonical(module, ds)
    # and writing the second reading gives the same document again
    rewritten = module.write(again)
    assert (rewritten if module is via_csv else json.dumps(rewritten)) == text


def test_via3_metadata_without_xy_round_trips():
    """An entry without 'xy' reads as a region without shape and is written back with xy = []."""
    doc = copy.deepcopy(VIA3)
    del doc["metadata"]["1_a"]["xy"]
    ds = via3.read(doc, source="p.json")
    again = via3.read(json.loads(json.dumps(via3.write(ds))), source="written.json")
    assert _canonical(via3, again) == _canonical(via3, ds)
    _check(via3, copy.deepcopy(doc))


@pytest.mark.parametrize("unviewed", [{"fid": "1", "fname": "a.jpg", "type": 2, "loc": 1, "src": ""}, -math.inf])
def test_via3_view_without_files_round_trips(unviewed):
    """A view with an empty fid_list is written back without files, so an unviewed file with its id stays unviewed."""
    doc = copy.deepcopy(VIA3)
    doc["view"]["1"]["fid_list"] = []
    doc["file"]["1"] = unviewed
    ds = via3.read(doc, source="p.json")
    again = via3.read(json.loads(json.dumps(via3.write(ds))), source="written.json")
    assert _canonical(via3, again) == _canonical(via3, ds)
    _check(via3, copy.deepcopy(doc))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(range(len(CASES))), data=st.data())
def test_damaged_json_documents(case, data):
    module, base = CASES[case]
    _check(module, _mutate(copy.deepcopy(base), data))


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_damaged_csv_text(data):
    text = CSV
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(text)))
        action = data.draw(st.sampled_from(["delete", "insert", "truncate"]))
        if action == "delete":
            text = text[:i] + text[i + 1:]
        elif action == "insert":
            text = text[:i] + data.draw(st.sampled_from(['"', ",", "\n", "{", "}", "x", "-1", "undefined", "NaN"])) + text[i:]
        else:
            text = text[:i]
    _check(via_csv, text)


@settings(max_examples=50, deadline=None)
@given(doc=st.recursive(json_values, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids, max_size=3),
                        max_leaves=12))
def test_arbitrary_json_in_every_reader(doc):
    for module in (via1, via2, via3):
        _check(module, copy.deepcopy(doc))
