"""YOLO segmentation datasets: data.yaml and bare folders, label lines, the layout written, round trips
(YOLO -> canonical -> YOLO, COCO -> YOLO -> COCO), the bad-input table, property tests and the command line."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from tests.via_tools.yolo_sets import SQUARE, TRI, make_set
from via_tools import coco, yolo
from via_tools.errors import AnnotationError
from via_tools.io import load, save
from via_tools.model import AnnotationSet, ImageRecord, Region, as_polygon, polygons_close
from via_tools.options import ReadOptions
from via_tools.report import Report


def roboflow_set(root: Path) -> Path:
    """A Roboflow-style export: ``train: ../train/images`` beside ``train/``, a val split, other keys."""
    return make_set(root, {
        "data.yaml": "train: ../train/images\nval: ../valid/images\n\nnc: 2\nnames: ['shoe', 'boot']\n\n"
                     "roboflow:\n  workspace: w\n  version: 3\n",
        "train/images/a.jpg": (200, 100),
        "train/labels/a.txt": f"{TRI}\n{SQUARE}\n",
        "train/images/sub/b.png": (40, 80),
        "train/labels/sub/b.txt": "",  # empty: no instance
        "train/images/c.png": (10, 10),  # no label file: no instance
        "valid/images/d.png": (64, 48),
        "valid/labels/d.txt": SQUARE,  # no final newline
    })


def label_values(text: str) -> list[tuple[int, list[float]]]:
    return [(ln.class_id, ln.points.ravel().tolist()) for ln in yolo.parse_label_text(text, source="t")]


def assert_same_values(a: str, b: str, tol: float = 1e-6) -> None:
    va, vb = label_values(a), label_values(b)
    assert [c for c, _ in va] == [c for c, _ in vb]
    for (_, pa), (_, pb) in zip(va, vb, strict=True):
        assert np.allclose(pa, pb, atol=tol, rtol=0)


def assert_same_sets(a: AnnotationSet, b: AnnotationSet, tol_px: float = 1e-6) -> None:
    assert a.labels == b.labels
    assert [(i.file_name, i.width_px, i.height_px, i.extra.get("split")) for i in a] == \
           [(i.file_name, i.width_px, i.height_px, i.extra.get("split")) for i in b]
    for ia, ib in zip(a, b, strict=True):
        assert [r.label for r in ia.regions] == [r.label for r in ib.regions], ia.file_name
        for ra, rb in zip(ia.regions, ib.regions, strict=True):
            assert polygons_close(ra.polygons, rb.polygons, tol_px=tol_px), (ia.file_name, ra.region_id)


# ------------------------------------------------------------------------------------------ paths
@pytest.mark.parametrize(
    ("image", "label"),
    [
        ("ds/train/images/a.jpg", "ds/train/labels/a.txt"),
        ("ds/images/train/sub/a.b.png", "ds/labels/train/sub/a.b.txt"),
        ("images/x/images/a.JPG", "images/x/labels/a.txt"),  # the last images folder
        ("ds/pics/a.jpg", "ds/pics/a.txt"),  # no images folder: beside the image
        ("ds/images.jpg", "ds/images.txt"),  # a file named images is no folder
    ],
)
def test_label_path_follows_ultralytics(image, label):
    assert yolo.label_path(image).as_posix() == label


def test_is_yolo_path(tmp_path):
    assert yolo.is_yolo_path(tmp_path / "missing.yaml") and yolo.is_yolo_path(tmp_path / "d.yml")
    assert not yolo.is_yolo_path(tmp_path) and not yolo.is_yolo_path(tmp_path / "x.json")
    (tmp_path / "images").mkdir()
    assert not yolo.is_yolo_path(tmp_path)  # a folder of images is not a YOLO set yet
    (tmp_path / "labels").mkdir()
    assert yolo.is_yolo_path(tmp_path)


# ------------------------------------------------------------------------------------------- read
def test_read_roboflow_yaml(tmp_path):
    report = Report()
    ds = yolo.read(roboflow_set(tmp_path), report=report)
    assert ds.source_format == "yolo" and ds.labels == ["shoe", "boot"]
    assert [(i.file_name, i.extra.get("split"), i.width_px, i.height_px, len(i.regions)) for i in ds] == [
        ("a.jpg", "train", 200, 100, 2), ("c.png", "train", 10, 10, 0), ("sub/b.png", "train", 40, 80, 0),
        ("d.png", "val", 64, 48, 1)]
    a = ds.images[0]
    assert [r.label for r in a.regions] == ["shoe", "boot"] and [r.region_id for r in a.regions] == ["1", "2"]
    assert np.allclose(a.regions[0].polygons[0], [[20, 10], [100, 10], [100, 60]])
    assert ds.images[1].extra["yolo_no_label_file"] and "yolo_no_label_file" not in ds.images[2].extra
    assert Path(a.extra["yolo_image"]) == tmp_path / "train" / "images" / "a.jpg"
    assert ds.meta["yolo_yaml"] == {"roboflow": {"workspace": "w", "version": 3}}
    assert not report.counts


def test_read_names_mapping_and_path_key(tmp_path):
    make_set(tmp_path, {
        "cfg/data.yaml": "path: ../ds\ntrain: [images/train, images/more]\ntest: images/test\nnames:\n  0: shoe\n  1: boot\n",
        "ds/images/train/a.png": (20, 20), "ds/labels/train/a.txt": TRI,
        "ds/images/more/b.png": (20, 20), "ds/labels/more/b.txt": SQUARE,
        "ds/images/test/c.png": (20, 20),
    })
    with pytest.raises(AnnotationError, match=r"data\.yaml: path: '\.\./ds' leaves the dataset's folder .*cfg \(refused"):
        load(tmp_path / "cfg" / "data.yaml")
    report = Report()
    ds = load(tmp_path / "cfg" / "data.yaml", options=ReadOptions(allow_outside=True), report=report)
    assert report.counts["data.yaml folders outside the dataset's folder (allowed)"] == 4  # path and its 3 folders
    assert ds.labels == ["shoe", "boot"] and ds.meta["yolo_names_style"] == "dict" and not ds.meta["yolo_nc"]
    assert [(i.file_name, i.extra["split"]) for i in ds] == [("a.png", "train"), ("b.png", "train"), ("c.png", "test")]
    files = yolo.write(ds)
    assert files["data.yaml"] == "train: images/train\ntest: images/test\nnames:\n  0: shoe\n  1: boot\n"


def test_bare_folder_names_default_to_ids(tmp_path):
    make_set(tmp_path, {"images/a.png": (10, 10), "labels/a.txt": "2 0 0 1 0 1 1\n0 0 0 0.5 0 0.5 0.5",
                        "images/val/b.png": (10, 10), "labels/val/b.txt": "1 0 0 1 0 1 1"})
    ds = load(tmp_path)
    assert ds.source_format == "yolo" and ds.labels == ["0", "1", "2"]
    assert [(i.file_name, i.extra.get("split")) for i in ds] == [("b.png", "val"), ("a.png", None)]  # splits first
    assert [r.label for r in ds.images[1].regions] == ["2", "0"]
    files = yolo.write(ds)
    assert files["labels/train/a.txt"].startswith("2 0 0 1 0 1 1\n0 ")  # the same ids back
    assert set(files) == {"data.yaml", "labels/train/a.txt", "labels/val/b.txt"}


def test_bare_folder_names_from_argument_or_classes_txt(tmp_path):
    make_set(tmp_path, {"images/a.png": (10, 10), "labels/a.txt": "1 0 0 1 0 1 1"})
    assert yolo.read(tmp_path, names=["shoe", "boot"]).images[0].regions[0].label == "boot"
    assert yolo.read(tmp_path, names={0: "a", 1: "b"}).labels == ["a", "b"]
    (tmp_path / "classes.txt").write_text("shoe\nsandal\n")
    assert yolo.read(tmp_path).labels == ["shoe", "sandal"]
    with pytest.raises(AnnotationError, match=r"a\.txt: line 1: class id 1 is outside names \(1 class"):
        yolo.read(tmp_path, names=["shoe"])


@pytest.mark.parametrize(
    "text",
    [f"{TRI}\n{SQUARE}", f"{TRI}\n{SQUARE}\n", f"{TRI}\r\n{SQUARE}\r\n", f"\n{TRI}\n\n  \n{SQUARE}\n\n",
     f"\ufeff{TRI}\n{SQUARE}", f"{TRI.replace(' ', chr(9))}\n  {SQUARE.replace(' ', '   ')}  "],
)
def test_newlines_blank_lines_and_whitespace_read_the_same(tmp_path, text):
    make_set(tmp_path, {"images/a.png": (100, 100), "labels/a.txt": text})
    ds = yolo.read(tmp_path, names=["shoe", "boot"])
    assert assert_same_values(yolo.write(ds)["labels/train/a.txt"], f"{TRI}\n{SQUARE}\n") is None
    assert [r.label for r in ds.images[0].regions] == ["shoe", "boot"]


def test_box_lines_are_read_as_rects_counted_and_written_as_polygons(tmp_path):
    make_set(tmp_path, {"images/a.png": (200, 100), "labels/a.txt": f"0 0.5 0.5 0.2 0.4\n{TRI}\n"})
    report = Report()
    ds = yolo.read(tmp_path, names=["shoe"], report=report)
    box, poly = ds.images[0].regions
    assert box.shape == {"name": "rect", "x": 80.0, "y": 30.0, "width": 40.0, "height": 40.0}
    assert box.polygons[0].tolist() == [[80, 30], [120, 30], [120, 70], [80, 70]]
    assert poly.shape is None
    assert report.counts == {"box lines in a segmentation file (read as rect)": 1}
    assert "a.txt: line 1" in report.examples["box lines in a segmentation file (read as rect)"][0]
    assert yolo.write(ds)["labels/train/a.txt"].splitlines()[0] == "0 0.4 0.3 0.6 0.3 0.6 0.7 0.4 0.7"


def test_points_outside_0_1_are_clipped_and_counted(tmp_path):
    make_set(tmp_path, {"images/a.png": (100, 50), "labels/a.txt": "0 -0.1 0 1.2 0 1 1\n0 0 0 1 0 1 1"})
    report = Report()
    ds = yolo.read(tmp_path, report=report)
    assert ds.images[0].regions[0].polygons[0].tolist() == [[0, 0], [100, 0], [100, 50]]
    assert report.counts == {"clipped points": 1}
    assert report.examples["clipped points"][0].endswith("a.txt: line 1: 2 of 3 points outside 0..1")


def test_self_intersecting_polygon_is_repaired_and_counted(tmp_path):
    make_set(tmp_path, {"images/a.png": (10, 10), "labels/a.txt": "0 0 0 0.4 0.4 0.4 0 0 0.4"})
    report = Report()
    (r,) = yolo.read(tmp_path, report=report).images[0].regions
    assert len(r.polygons) == 2 and report.counts["repaired polygons"] == 1


def test_orphan_labels_and_images_in_two_splits_are_counted(tmp_path):
    make_set(tmp_path, {"data.yaml": "train: images\nval: images\nnames: [shoe]\n",
                        "images/a.png": (10, 10), "labels/a.txt": TRI, "labels/gone.txt": TRI})
    report = Report()
    ds = yolo.read(tmp_path, report=report)
    assert [i.extra["split"] for i in ds] == ["train"]
    assert report.counts == {"images in several splits (kept in the first)": 1,
                             "label files without an image (ignored)": 1}


def test_same_file_name_in_two_splits_is_counted(tmp_path):
    make_set(tmp_path, {"data.yaml": "train: t/images\nval: v/images\nnames: [shoe]\n",
                        "t/images/a.png": (10, 10), "v/images/a.png": (10, 10)})
    report = Report()
    assert len(yolo.read(tmp_path, report=report)) == 2
    assert report.counts == {"file names used in several splits": 1}


# ------------------------------------------------------------------------------------------ write
def test_write_layout_and_text():
    img = ImageRecord("shots/a.jpg", 200, 100, extra={"split": "val"}, regions=[
        Region("boot", (as_polygon([(0, 0), (50, 0), (50, 25)]), as_polygon([(100, 50), (150, 50), (150, 100)]))),
        Region("lace", shape={"name": "polyline", "all_points_x": [0, 3], "all_points_y": [0, 3]}),
    ])
    empty = ImageRecord("https://host/x/b.png?sig=1", regions=[])
    files = yolo.write(AnnotationSet([img, empty], labels=["shoe", "boot"]))
    assert files["labels/val/shots/a.txt"] == "1 0 0 0.25 0 0.25 0.25\n1 0.5 0.5 0.75 0.5 0.75 1\n"
    assert files["labels/train/b.txt"] == ""
    assert files["data.yaml"] == "train: images/train\nval: images/val\nnc: 2\nnames:\n- shoe\n- boot\n"


def test_write_gives_every_digit_and_no_exponent():
    p = as_polygon([(1 / 3, 2 / 3), (100 / 7, -0.0), (640, 0.005)])
    text = yolo.write(AnnotationSet([ImageRecord("a.jpg", 640, 500, regions=[Region("s", (p,))])]))["labels/train/a.txt"]
    assert text == "0 0.0005208333333333333 0.0013333333333333333 0.022321428571428572 0 1 0.00001\n"
    (ln,) = yolo.parse_label_text(text, source="t")
    assert np.array_equal(ln.points, p / (640, 500))


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ([ImageRecord("a.jpg", regions=[Region("s", (as_polygon([(0, 0), (4, 0), (4, 4)]),))])],
         "image 'a.jpg': no known size"),
        ([ImageRecord("a.jpg", 8, 8, extra={"split": "valid"})], "image 'a.jpg': split 'valid' is not one of"),
        ([ImageRecord("a.jpg", 8, 8), ImageRecord("a.png", 8, 8)],
         "image 'a.png': same label file labels/train/a.txt as image 'a.jpg'"),
        ([ImageRecord("/data/", 8, 8)], "image '/data/': no image file name"),
    ],
)
def test_write_refuses(images, message):
    with pytest.raises(AnnotationError) as e:
        yolo.write(AnnotationSet(images))
    assert message in str(e.value)


def test_write_logs_parts_passive_and_clipped(caplog):
    img = ImageRecord("a.jpg", 10, 10, regions=[
        Region("s", (as_polygon([(0, 0), (4, 0), (4, 4)]), as_polygon([(5, 5), (12, 5), (9, 9)]))),
        Region("s", shape={"name": "point", "cx": 1, "cy": 1})])
    with caplog.at_level(logging.WARNING, logger="via_tools"):
        files = yolo.write(AnnotationSet([img]))
    assert files["labels/train/a.txt"].splitlines()[1] == "0 0.5 0.5 1 0.5 0.9 0.9"
    text = caplog.text
    assert "1 region(s) without area" in text and "1 multi-part region(s)" in text and "1 polygon(s) outside" in text


def test_save_writes_labels_and_yaml_and_says_where_images_go(tmp_path, caplog):
    ds = yolo.read(roboflow_set(tmp_path / "src"))
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="via_tools"):
        assert save(ds, out, fmt="yolo") == out / "data.yaml"
    assert "images not written: put each one at images/<split>/<file name> (e.g. images/train/a.jpg)" in caplog.text
    got = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert got == ["data.yaml", "images", "images/train", "images/val", "labels", "labels/train", "labels/train/a.txt",
                   "labels/train/sub", "labels/train/sub/b.txt", "labels/val", "labels/val/d.txt"]
    assert (out / "data.yaml").read_text() == ("train: images/train\nval: images/val\nnc: 2\nnames:\n- shoe\n- boot\n"
                                               "roboflow:\n  workspace: w\n  version: 3\n")


@pytest.mark.parametrize("mode", ["copy", "link"])
def test_save_copies_or_links_images_and_reads_back_the_same(tmp_path, mode):
    src = roboflow_set(tmp_path / "src")
    ds = yolo.read(src)
    out = yolo.save(ds, tmp_path / "out", images=mode).parent
    for img in ds:
        dest = out / "images" / img.extra["split"] / img.file_name
        assert dest.read_bytes() == Path(img.extra["yolo_image"]).read_bytes()
        assert os.path.samefile(dest, img.extra["yolo_image"]) == (mode == "link")
    back = load(out)
    assert_same_sets(ds, back)
    assert back.images[1].extra.get("yolo_no_label_file") and not back.images[2].extra.get("yolo_no_label_file")
    for rel in ("train/labels/a.txt", "valid/labels/d.txt"):
        split = "val" if rel.startswith("valid") else "train"
        assert_same_values((src / rel).read_text(), (out / "labels" / split / Path(rel).name).read_text())
    yolo.save(back, out, images=mode)  # into the folder it was read from: images are left in place
    assert_same_sets(ds, load(out))


def test_save_refuses_missing_images_before_writing(tmp_path):
    ds = AnnotationSet([ImageRecord("a.png", 8, 8), ImageRecord("b.png", 8, 8)])
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a.png")
    with pytest.raises(AnnotationError, match=r"1 image\(s\) to copy not found in .*imgs: 'b.png'"):
        yolo.save(ds, tmp_path / "out", images="copy", images_dir=tmp_path / "imgs")
    assert not (tmp_path / "out").exists()
    with pytest.raises(AnnotationError, match="images='all': must be one of none, copy, link"):
        yolo.save(ds, tmp_path / "out", images="all")


def test_save_leaves_other_label_files_and_says_so(tmp_path, caplog):
    make_set(tmp_path, {"out/labels/train/old.txt": TRI})
    with caplog.at_level(logging.WARNING, logger="via_tools"):
        yolo.save(AnnotationSet([ImageRecord("a.png", 8, 8)]), tmp_path / "out")
    assert (tmp_path / "out/labels/train/old.txt").is_file() and (tmp_path / "out/labels/train/a.txt").read_text() == ""
    assert "1 label file(s) of images not in this set left as they are" in caplog.text


# ------------------------------------------------------------------------------------- round trips
def test_yolo_canonical_yolo_gives_the_same_files(tmp_path):
    src = roboflow_set(tmp_path)
    files = yolo.write(yolo.read(src))
    assert set(files) == {"data.yaml", "labels/train/a.txt", "labels/train/sub/b.txt", "labels/val/d.txt"}
    assert files["labels/train/a.txt"] == f"{TRI}\n{SQUARE}\n"
    assert files["labels/val/d.txt"] == SQUARE + "\n" and files["labels/train/sub/b.txt"] == ""


def test_coco_yolo_coco_keeps_the_polygons(tmp_path):
    rng = np.random.default_rng(3)
    images, anns = [], []
    for i, (w, h) in enumerate([(64, 48), (33, 97), (640, 480)], start=1):
        images.append({"id": i, "file_name": f"p{i}.png", "width": w, "height": h})
        make_set(tmp_path / "imgs", {f"p{i}.png": (w, h)})
        for _ in range(3):
            c = rng.uniform(0.3, 0.7, 2) * (w, h)
            ang = np.sort(rng.uniform(0, 2 * np.pi, 7))
            pts = c + np.stack([np.cos(ang), np.sin(ang)], 1) * rng.uniform(0.05, 0.25, (7, 1)) * min(w, h)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(rng.integers(1, 3)),
                         "segmentation": [pts.ravel().tolist()], "iscrowd": 0})
    doc = {"images": images, "annotations": anns,
           "categories": [{"id": 1, "name": "shoe", "supercategory": ""}, {"id": 2, "name": "boot", "supercategory": ""}]}
    (tmp_path / "c.json").write_text(json.dumps(doc))
    ds = load(tmp_path / "c.json")
    out = yolo.save(ds, tmp_path / "yolo", images="copy", images_dir=tmp_path / "imgs")
    back = coco.write(load(out))
    assert back["images"] == images and back["categories"] == doc["categories"]
    for a, b in zip(doc["annotations"], back["annotations"], strict=True):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert np.allclose(a["segmentation"], b["segmentation"], atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0 0.1 0.1 0.5 0.1 0.5", "line 1: odd number of coordinates (5)"),
        (f"{TRI}\n\n7 0.1 0.1 0.5 0.1 0.5 0.6", "line 3: class id 7 is outside names (2 class(es): ids 0-1)"),
        ("-1 0.1 0.1 0.5 0.1 0.5 0.6", "line 1: class id -1 is outside names"),
        ("0.5 0.1 0.1 0.5 0.1 0.5 0.6", "line 1: class id '0.5' is not a whole number"),
        ("shoe 0.1 0.1 0.5 0.1 0.5 0.6", "line 1: class id 'shoe' is not a whole number"),
        ("0 0.1 0.1", "line 1: polygon has 1 point(s), at least 3 are needed"),
        ("0", "line 1: class id 0 without coordinates"),
        ("0 0.1 0.1 0.5 x 0.5 0.6", "line 1: token 5 ('x') is not a number"),
        ("0 0.1 0.1 0.5 0.1 nan 0.6", "line 1: token 6 ('nan') is not a finite number"),
        ("0 0.1 0.1 0.5 0.1 0.5 inf", "line 1: token 7 ('inf') is not a finite number"),
        ("0 0.5 0.5 0 0.2", "line 1: box (cx cy w h) 0.5 0.5 0 0.2 has no area"),
        ("0 0.1 0.1 0.2 0.2 0.3 0.3", "line 1: polygon has zero area (3 points)"),
        ("0 1.5 0.1 2 0.5 3 0.9", "line 1: polygon has zero area (3 points)"),
    ],
)
def test_bad_label_lines_name_the_file_and_line(tmp_path, text, message):
    make_set(tmp_path, {"data.yaml": "train: images\nnames: [shoe, boot]\n", "images/a.png": (10, 10), "labels/a.txt": text})
    with pytest.raises(AnnotationError) as e:
        load(tmp_path)
    assert str(e.value).startswith(str(tmp_path / "labels" / "a.txt")) and message in str(e.value)


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("train: images\nnc: 1\n", "no 'names'"),
        ("train: images\nnames:\n", "no 'names'"),
        ("train: images\nnc: 2\nnames: [shoe]\n", "nc is 2 but names lists 1 class(es)"),
        ("train: images\nnc: one\nnames: [shoe]\n", "nc is 'one' but names lists 1 class(es)"),
        ("train: images\nnames: {0: shoe, 2: boot}\n", "names: ids must be 0..1, got [0, 2]"),
        ("train: images\nnames: {a: shoe}\n", "names: key 'a' is not a class id"),
        ("train: images\nnames: [shoe, shoe]\n", "names: 'shoe' appears twice"),
        ("train: images\nnames: shoe\n", "names must be a list or a mapping id -> name, got a string"),
        ("train: images\nnames: [shoe\n", "line 3 column 1: not valid YAML"),
        ("- train\n", "a data.yaml is a mapping"),
        ("names: [shoe]\n", "has no images folder (train, val or test)"),
        ("train: nowhere/images\nnames: [shoe]\n", "train: images folder"),
        ("train: list.txt\nnames: [shoe]\n", "train: 'list.txt' is a file; only images folders are supported"),
        ("path: gone\ntrain: images\nnames: [shoe]\n", "path 'gone': folder"),
        ("train: 3\nnames: [shoe]\n", "train: must be an images folder or a list of them, got 3"),
    ],
)
def test_bad_data_yaml_is_named(tmp_path, yaml_text, message):
    make_set(tmp_path, {"data.yaml": yaml_text, "images/a.png": (10, 10), "list.txt": "images/a.png\n"})
    with pytest.raises(AnnotationError) as e:
        load(tmp_path / "data.yaml")
    assert str(e.value).startswith(str(tmp_path / "data.yaml")) and message in str(e.value)


def test_bad_files_are_named(tmp_path):
    make_set(tmp_path, {"images/a.png": b"not an image", "labels/a.txt": ""})
    with pytest.raises(AnnotationError, match=r"image 'a.png': .*a\.png: not a readable image"):
        load(tmp_path)
    make_set(tmp_path, {"images/a.png": (4, 4), "labels/a.txt": b"0 \xff"})
    with pytest.raises(AnnotationError, match=r"labels/a\.txt: byte 2: not UTF-8 text"):
        load(tmp_path)
    with pytest.raises(AnnotationError, match="no such file or folder"):
        load(tmp_path / "gone.yaml")
    with pytest.raises(AnnotationError, match="neither a data.yaml nor a folder"):
        yolo.read(tmp_path / "images")
    make_set(tmp_path, {"data.yaml": "train: images\nnames: [shoe]\n"})
    with pytest.raises(AnnotationError, match="names come from the data.yaml"):
        yolo.read(tmp_path, names=["x"])


def test_io_detects_yolo_and_leaves_other_folders_alone(tmp_path):
    with pytest.raises(AnnotationError, match="cannot read"):
        load(tmp_path)  # an empty folder is no dataset
    roboflow_set(tmp_path)
    assert load(tmp_path).source_format == load(tmp_path / "data.yaml").source_format == "yolo"


# ------------------------------------------------------------------------------------- properties
def _star(rng_vals, w, h):
    """A simple polygon inside a ``w x h`` image: around its centre, angles increasing by less than pi each."""
    cx, cy, r, *rest = rng_vals
    n = len(rest) // 2
    steps = 1.0 + 0.9 * np.array(rest[:n])  # each step under half of all of them (3 steps: 1.9 < 1 + 1)
    ang = np.concatenate([[0.0], np.cumsum(steps)[:-1]]) / steps.sum() * 2 * np.pi
    rad = (0.2 + 0.8 * np.array(rest[n:2 * n])) * r * min(cx, cy, w - cx, h - cy)
    return as_polygon(np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], axis=1))


@st.composite
def datasets(draw):
    labels = draw(st.lists(st.sampled_from(["shoe", "boot", "sandal", "0"]), min_size=1, max_size=3, unique=True))
    images = []
    for k in range(draw(st.integers(1, 3))):
        w, h = draw(st.integers(4, 300)), draw(st.integers(4, 300))
        regions = []
        for _ in range(draw(st.integers(0, 3))):
            n = draw(st.integers(3, 9))
            unit = st.floats(0.0, 1.0)
            vals = [draw(st.floats(0.25, 0.75)) * w, draw(st.floats(0.25, 0.75)) * h, draw(st.floats(0.3, 1.0)),
                    *[draw(unit) for _ in range(2 * n)]]
            regions.append(Region(draw(st.sampled_from(labels)), (_star(vals, w, h),)))
        split = draw(st.sampled_from([None, "train", "val", "test"]))
        images.append(ImageRecord(f"im{k}.png", w, h, regions=regions, extra={"split": split} if split else {}))
    return AnnotationSet(images, labels=labels)


def _materialise(ds: AnnotationSet, root: Path) -> Path:
    files = yolo.write(ds)
    make_set(root, files)
    for img in ds:
        make_set(root, {f"images/{img.extra.get('split') or 'train'}/{img.file_name}": (img.width_px, img.height_px)})
    return root


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets())
def test_property_what_the_writer_writes_reads_back_the_same(ds):
    with tempfile.TemporaryDirectory() as d:
        report = Report()
        back = yolo.read(_materialise(ds, Path(d)), report=report)
    assert not report.counts
    assert back.labels == ds.labels
    assert sorted((i.file_name, i.extra.get("split") or "train", i.width_px, i.height_px) for i in back) == \
        sorted((i.file_name, i.extra.get("split") or "train", i.width_px, i.height_px) for i in ds)
    by_name = {i.file_name: i for i in ds}
    for img in back:
        src = by_name[img.file_name]
        assert [r.label for r in img.regions] == [r.label for r in src.regions]
        for a, b in zip(img.regions, src.regions, strict=True):
            assert polygons_close(a.polygons, b.polygons, tol_px=1e-6)


_tokens = st.one_of(
    st.floats(-0.2, 1.2).map(repr), st.floats(0, 1).map(lambda v: f"{v:.3f}"), st.sampled_from(["0", "1", "0.5"]),
    st.sampled_from(["x", "nan", "-inf", "1e400", "", "1.0", "-1", "2", "1_0", "0x1", "٣"]),
)
_junk_lines = st.tuples(st.sampled_from(["0", "1", "1.0", "2", "-1", "a"]),
                        st.lists(_tokens, min_size=0, max_size=12)).map(lambda t: " ".join([t[0], *t[1]]))
_good_lines = st.tuples(st.sampled_from(["0", "1"]),
                        st.lists(st.tuples(*[st.floats(-0.1, 1.1).map(repr)] * 2), min_size=2, max_size=8)
                        ).map(lambda t: " ".join([t[0], *(v for xy in t[1] for v in xy)]))


def _parts(ds: AnnotationSet) -> list[list[tuple[str, np.ndarray]]]:
    return [[(r.label, p) for r in img.regions for p in r.polygons] for img in ds]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_good_lines, _junk_lines), max_size=5), st.sampled_from(["\n", "\r\n"]), st.booleans(),
       st.integers(1, 50))
def test_property_read_write_read_is_stable(lines, newline, final, size):
    text = newline.join(lines) + (newline if final else "")
    with tempfile.TemporaryDirectory() as d:
        root = make_set(Path(d) / "a", {"data.yaml": "train: images\nnames: [shoe, boot]\n",
                                        "images/x.png": (size, size + 3), "labels/x.txt": text})
        try:
            first = yolo.read(root)
        except AnnotationError as e:
            assert str(e).startswith(str(root))
            return
        again = yolo.read(yolo.save(first, Path(d) / "b", images="link"))
        third = yolo.read(yolo.save(again, Path(d) / "c", images="link"))
    # a self-intersecting line is read as one region of several parts, written back as one line per part
    for pa, pb in zip(_parts(first), _parts(again), strict=True):
        assert [lab for lab, _ in pa] == [lab for lab, _ in pb]
        assert all(p.shape == q.shape and np.allclose(p, q, atol=1e-6, rtol=0) for (_, p), (_, q) in zip(pa, pb, strict=True))
    assert_same_sets(again, third)
    if not any(len(r.polygons) > 1 for img in first for r in img.regions):
        assert_same_sets(first, again)


# ------------------------------------------------------------------------------------- command line
def test_cli_stats_and_convert(tmp_path):
    from shoeseg_app.cli.via import via_app

    runner = CliRunner()
    src = roboflow_set(tmp_path / "src")
    r = runner.invoke(via_app, ["stats", str(src), "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert (s["format"], s["images"], s["instances"], s["labels"]) == ("yolo", 4, 3, ["shoe", "boot"])
    r = runner.invoke(via_app, ["convert", str(src / "data.yaml"), "--to", "coco", "-o", str(tmp_path / "c.json")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(via_app, ["convert", str(tmp_path / "c.json"), "--to", "yolo", "-o", str(tmp_path / "y"),
                                "--images", str(src / "train" / "images"), "--yolo-images", "link"])
    assert r.exit_code == 2 and "d.png" in r.output, r.output  # d.png is in valid/images, not in that folder
    r = runner.invoke(via_app, ["convert", str(src), "--to", "yolo", "-o", str(tmp_path / "y"), "--yolo-images", "copy"])
    assert r.exit_code == 0, r.output
    assert_same_sets(load(src), load(tmp_path / "y"))
    r = runner.invoke(via_app, ["convert", str(tmp_path / "c.json"), "--to", "yolo", "-o", str(tmp_path / "z")])
    assert r.exit_code == 0 and (tmp_path / "z" / "labels" / "train" / "a.txt").is_file(), r.output
    r = runner.invoke(via_app, ["stats", str(src / "valid" / "labels")])
    assert r.exit_code == 2 and "error:" in r.output
