"""VIA CSV exports: rows to images and regions, damaged cells, and the text given back by writing."""

from __future__ import annotations

import numpy as np
import pytest

from via_tools import via_csv
from via_tools.errors import AnnotationError
from via_tools.model import AnnotationSet, ImageRecord, Region
from via_tools.report import Report

ROWS = [
    'a.jpg,100,"{}",2,0,"{""name"":""rect"",""x"":1,""y"":2,""width"":30,""height"":40}","{""label"":""shoe""}"',
    'a.jpg,100,"{}",2,1,"{""name"":""polygon"",""all_points_x"":[0,9,9],""all_points_y"":[0,0,9]}","{""label"":{""boot"":true}}"',
    'empty.jpg,7,"{""q"":""x""}",0,0,"{}","{}"',
    '"with, comma.jpg",-1,"{}",1,0,"{""name"":""point"",""cx"":3,""cy"":4}","{}"',
]


def _text(header=via_csv.HEADER, newline="\n", final=False):
    return newline.join([header, *ROWS]) + (newline if final else "")


def test_read_groups_rows_into_images():
    ds = via_csv.read(_text(), source="e.csv")
    assert [(i.file_name, len(i.regions)) for i in ds] == [("a.jpg", 2), ("empty.jpg", 0), ("with, comma.jpg", 1)]
    assert [r.label for r in ds.images[0].regions] == ["shoe", "boot"]
    assert ds.images[1].file_attributes == {"q": "x"} and ds.images[2].file_size is None
    assert ds.count_instances() == 2


@pytest.mark.parametrize("kwargs", [{}, {"header": via_csv.HEADER_V1}, {"newline": "\r\n", "final": True}])
def test_round_trip_gives_the_same_text(kwargs):
    text = _text(**kwargs)
    assert via_csv.write(via_csv.read(text, source="e.csv")) == text


def test_bare_undefined_cells_are_read_counted_and_written_back():
    row = 'u.jpg,-1,"{}",1,0,"{""name"":""rect"",""x"":1,""y"":1,""width"":3,""height"":3}","{""Age"":""25"",""Emotion"":undefined,""note"":""undefined""}"'
    text = via_csv.HEADER + "\n" + row
    report = Report()
    ds = via_csv.read(text, source="u.csv", report=report)
    (r,) = ds.images[0].regions
    assert r.attributes == {"Age": "25", "Emotion": None, "note": "undefined"}
    assert report.counts["CSV cells with bare 'undefined' read as null"] == 1
    assert "u.csv: row 2: image 'u.jpg': region 0" in report.examples["CSV cells with bare 'undefined' read as null"][0]
    assert via_csv.write(ds) == text
    r.attributes = {"Age": "30", "Emotion": None, "note": "undefined"}  # edited: written as JSON
    assert '""Emotion"":null' in via_csv.write(ds)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ('a.jpg,1,"{}",1,0,"{""name"":""rect""","{}"', "row 2: image 'a.jpg': region 0: region_shape_attributes: line 1 column 15: not valid JSON"),
        ('a.jpg,1,"{}",1,0,"{}","{""a"":nope}"', "row 2: image 'a.jpg': region 0: region_attributes: line 1 column 6: not valid JSON"),
        ('a.jpg,1,"[]",1,0,"{}","{}"', "row 2: image 'a.jpg': file_attributes must be a JSON object"),
        ('a.jpg,1,"{}",x,0,"{}","{}"', "row 2: image 'a.jpg': region_count 'x' is not a number"),
        ('a.jpg,1,"{}",1,0,"{}"', "row 2: 6 columns, expected 7"),
        ('a.jpg,1,"{}",1,0,"{""name"":""blob""}","{}"', "row 2: image 'a.jpg': region 0: unknown shape 'blob'"),
        ('a.jpg,1,"{}",1,0,"{""name"":""polygon"",""all_points_x"":[1,2],""all_points_y"":[1,2]}","{}"',
         "region 0: polygon has 2 points"),
    ],
)
def test_bad_rows_name_file_row_image_and_region(row, message):
    with pytest.raises(AnnotationError) as e:
        via_csv.read(via_csv.HEADER + "\n" + row, source="b.csv")
    assert str(e.value).startswith("b.csv: ") and message in str(e.value)


def test_bad_header():
    with pytest.raises(AnnotationError, match="b.csv: line 1: not a VIA CSV header"):
        via_csv.read("name,x\n1,2", source="b.csv")


def test_region_count_that_disagrees_is_counted():
    text = via_csv.HEADER + '\na.jpg,1,"{}",3,0,"{""name"":""rect"",""x"":1,""y"":1,""width"":3,""height"":3}","{}"'
    report = Report()
    via_csv.read(text, source="c.csv", report=report)
    assert sum(report.counts.values()) == 1


def test_foreign_set_to_csv_and_back():
    poly = np.array([[1, 1], [9, 1], [9, 9.5]], dtype=float)
    ds = AnnotationSet(images=[ImageRecord("x.jpg", file_size=3, regions=[Region("shoe", polygons=(poly,))]),
                               ImageRecord("y.jpg")], source_format="coco")
    text = via_csv.write(ds)
    assert text.splitlines()[0] == via_csv.HEADER and text.splitlines()[2] == 'y.jpg,-1,"{}",0,0,"{}","{}"'
    back = via_csv.read(text, source="x.csv")
    assert back.images[0].regions[0].label == "shoe"
    assert np.array_equal(back.images[0].regions[0].polygons[0], poly)
