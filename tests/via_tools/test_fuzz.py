"""Property tests: damaged VIA documents give an AnnotationError or a set that writes, never another exception;
what a reader accepts writes back to a document that reads again to the same annotations."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
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
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 1e200, 1e150, 1e9 + 1, -0.0, 5e-324]),
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


# ------------------------------------------------------------------------------------------------------
# Every reader, from the file's text: mutations of valid files of each format (structure, types, numbers
# including non-finite and overflowing ones, strings, encodings, depth) end in a valid set or one located
# AnnotationError; what is read is written in every format without NaN, Infinity or a numpy warning.
# A fixed seed (derandomize) in the default run; more examples, random, under the `slow` mark.

COCO_DOC = {
    "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}, {"id": 2, "file_name": "b.jpg"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [[1, 1, 30, 1, 30, 20, 1, 20]]},
        {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [[40, 5, 50, 5, 50, 15], [52, 5, 60, 5, 60, 9]]},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [2, 2, 8, 8]},
    ],
    "categories": [{"id": 1, "name": "shoe"}],
}
LS_DOC = [{"id": 4, "data": {"image": "/data/upload/1/0a1b2c3d-a.jpg"}, "annotations": [{"id": 1, "result": [
    {"id": "p", "type": "polygonlabels", "original_width": 64, "original_height": 48,
     "value": {"points": [[1, 1], [50, 1], [50, 40]], "polygonlabels": ["shoe"], "closed": True}},
    {"id": "o", "type": "polygonlabels", "original_width": 64, "original_height": 48,
     "value": {"points": [[1, 1], [5, 9]], "polygonlabels": ["shoe"], "closed": False}},
    {"id": "r", "type": "rectanglelabels", "original_width": 64, "original_height": 48,
     "value": {"x": 10, "y": 10, "width": 20, "height": 10, "rotation": 15, "rectanglelabels": ["shoe"]}},
]}]}]
FILE_CASES = {"via1.json": json.dumps(VIA1), "via2.json": json.dumps(VIA2), "via3.json": json.dumps(VIA3),
              "coco.json": json.dumps(COCO_DOC), "ls.json": json.dumps(LS_DOC), "via.csv": CSV}
SNIPPETS = ["NaN", "-Infinity", "1e999", "-1e400", "1e308", "1e200", "0.0", "-0", "true", "null", '""', '"\\ud800"',
            "[" * 150 + "]" * 150, '{"a":1,"a":2}', "{", "]", ",", '"', "\\", "\u00e9", "\u0660", "1_000", "undefined"]


def _mutate_text(text: str, data) -> bytes:
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        i = data.draw(st.integers(0, len(text)), label="at")
        action = data.draw(st.sampled_from(["insert", "replace number", "delete", "truncate"]), label="action")
        if action == "insert":
            text = text[:i] + data.draw(st.sampled_from(SNIPPETS), label="snippet") + text[i:]
        elif action == "replace number":
            j = next((k for k in range(i, len(text)) if text[k].isdigit()), None)
            if j is not None:
                end = j
                while end < len(text) and (text[end].isdigit() or text[end] in ".eE+-"):
                    end += 1
                text = text[:j] + data.draw(st.sampled_from(SNIPPETS[:8]), label="number") + text[end:]
        elif action == "delete":
            text = text[:i] + text[i + data.draw(st.integers(1, 8), label="n"):]
        else:
            text = text[:i]
    raw = text.encode("utf-8", "surrogatepass")
    if data.draw(st.booleans(), label="bad bytes"):
        k = data.draw(st.integers(0, len(raw)), label="byte at")
        raw = raw[:k] + data.draw(st.sampled_from([b"\xff", b"\xc3", b"\x00", b"\xef\xbb\xbf"]), label="bytes") + raw[k:]
    return raw


def _written_texts(ds) -> list[str]:
    from via_tools.io import FORMATS
    from via_tools.jsontext import dump_json

    out = []
    for fmt in ("via1", "via2", "via3", "csv", "coco", "ls"):
        if fmt == "ls" and any(img.regions and img.resolution_wh is None for img in ds.images):
            continue
        try:
            doc = FORMATS[fmt].write(ds)
            out.append(doc if isinstance(doc, str) else dump_json(doc, where=fmt))
        except AnnotationError:
            continue
    return out


def _check_file(tmp_path, name: str, raw: bytes) -> None:
    import warnings

    from via_tools.io import load

    path = tmp_path / name
    path.write_bytes(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a numpy warning is a failure
        try:
            ds = load(path)
        except AnnotationError as e:
            msg = str(e)
            assert msg.startswith(str(path)) and "\n" not in msg, msg
            assert "NoneType" not in msg and "inhomogeneous" not in msg and "Traceback" not in msg, msg
            return
        for text in _written_texts(ds):
            _assert_strict_json(text)


def _assert_strict_json(text: str) -> None:
    """Written JSON (or the JSON cells of written CSV) reads with the strict reader: no NaN, no Infinity."""
    import csv
    import io

    from via_tools.jsontext import parse_json

    if text.startswith(("filename,", "#filename,")):
        for row in list(csv.reader(io.StringIO(text, newline="")))[1:]:
            for cell in (row[2], row[5], row[6]):
                parse_json(cell, where="written csv")
    else:
        parse_json(text, where="written")


def _check_files(tmp_path_factory, name, data):
    _check_file(tmp_path_factory.mktemp("fuzz"), name, _mutate_text(FILE_CASES[name], data))


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(name=st.sampled_from(sorted(FILE_CASES)), data=st.data())
def test_damaged_files_of_every_format(tmp_path_factory, name, data):
    _check_files(tmp_path_factory, name, data)


@pytest.mark.slow
@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=st.sampled_from(sorted(FILE_CASES)), data=st.data())
def test_damaged_files_of_every_format_many(tmp_path_factory, name, data):
    _check_files(tmp_path_factory, name, data)


def _check_parsed(fmt: str, data) -> None:
    """Python values a JSON file cannot hold (NaN, huge ints) reach the readers too: via the API."""
    import warnings

    from via_tools.io import FORMATS
    from via_tools.jsontext import dump_json

    base = {"coco": COCO_DOC, "ls": LS_DOC, "via2": VIA2, "via3": VIA3}[fmt]
    doc = _mutate(copy.deepcopy(base), data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        try:
            ds = FORMATS[fmt].read(doc, source="api.json")
        except AnnotationError as e:
            assert str(e).startswith("api.json: ") and "\n" not in str(e), str(e)
            return
        for out in ("via2", "via3", "coco"):
            try:
                dump_json(FORMATS[out].write(ds), where=out)
            except AnnotationError as e:  # only attributes kept verbatim may hold what JSON cannot
                assert "which JSON cannot hold" in str(e), str(e)


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(fmt=st.sampled_from(["coco", "ls", "via2", "via3"]), data=st.data())
def test_damaged_documents_of_every_json_format(fmt, data):
    _check_parsed(fmt, data)


@pytest.mark.slow
@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(fmt=st.sampled_from(["coco", "ls", "via2", "via3"]), data=st.data())
def test_damaged_documents_of_every_json_format_many(fmt, data):
    _check_parsed(fmt, data)


YOLO_TOKENS = ["0", "1", "0.5", "1e-3", "-0.1", "1.5", "nan", "inf", "1e999", "1_000", "\u0660", "0.0", "+1", ".5",
               "5.", "0x1", "", "\t", "\r"]


def _check_yolo_text(data) -> None:
    from via_tools import yolo

    lines = []
    for _ in range(data.draw(st.integers(1, 4), label="lines")):
        tokens = data.draw(st.lists(st.sampled_from(YOLO_TOKENS), min_size=0, max_size=10), label="tokens")
        lines.append(" ".join(tokens))
    try:
        parsed = yolo.parse_label_text("\n".join(lines), source="a.txt", n_classes=2)
    except AnnotationError as e:
        assert str(e).startswith("a.txt: line ") and "\n" not in str(e), str(e)
        return
    for ln in parsed:
        assert ln.class_id in (0, 1) and np.isfinite(ln.points).all() and (0 <= ln.points).all() and (ln.points <= 1).all()


@settings(max_examples=150, deadline=None, derandomize=True)
@given(data=st.data())
def test_damaged_yolo_label_lines(data):
    _check_yolo_text(data)


@pytest.mark.slow
@settings(max_examples=5000, deadline=None)
@given(data=st.data())
def test_damaged_yolo_label_lines_many(data):
    _check_yolo_text(data)
