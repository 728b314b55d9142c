"""Real VIA files from ../shared: the balloon and shoe sets, and 16 VIA files found in public repositories."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from via_tools.io import detect_format, load, save
from via_tools.model import AnnotationSet, polygons_close
from via_tools.options import ReadOptions

pytestmark = pytest.mark.shared

#: SOURCES.tsv's ``via_version`` column → the format name detection must give.
VERSION_TO_FORMAT = {"1": "via1", "2": "via2", "2 (annotation export)": "via2", "3": "via3",
                     "csv (2.x)": "csv", "csv (1.x header #filename)": "csv"}


def _sources(shared: Path) -> list[dict[str, str]]:
    with open(shared / "datasets" / "via-wild" / "SOURCES.tsv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _wild_names() -> list[str]:
    path = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "via-wild" / "SOURCES.tsv"
    if not path.is_file():
        return ["(absent)"]
    with open(path, newline="", encoding="utf-8") as f:
        return [row["saved_name"] for row in csv.DictReader(f, delimiter="\t")]


def assert_same_set(a: AnnotationSet, b: AnnotationSet) -> None:
    assert [i.file_name for i in a] == [i.file_name for i in b]
    for ia, ib in zip(a, b, strict=True):
        assert (ia.file_size, ia.file_attributes) == (ib.file_size, ib.file_attributes), ia.file_name
        assert len(ia.regions) == len(ib.regions), ia.file_name
        for ra, rb in zip(ia.regions, ib.regions, strict=True):
            where = f"{ia.file_name} region {ra.region_id}"
            assert (ra.label, ra.shape, ra.attributes, ra.region_id) == (rb.label, rb.shape, rb.attributes, rb.region_id), where
            assert polygons_close(ra.polygons, rb.polygons), where


@pytest.mark.parametrize(("split", "n_images", "n_polygons"), [("train", 61, 255), ("val", 13, 50)])
def test_balloon(shared_dir, split, n_images, n_polygons):
    folder = shared_dir / "datasets" / "balloon" / split
    ds = load(folder / "via_region_data.json", options=ReadOptions(default_label="balloon", images_dir=folder))
    assert ds.source_format == "via1"
    assert len(ds) == n_images and ds.count_instances() == n_polygons == ds.count_regions()
    assert ds.labels == ["balloon"]
    assert all(img.width_px and img.height_px for img in ds)
    for img in ds:
        for r in img.instances:
            x0, y0, x1, y1 = r.bbox_xyxy()
            assert 0 <= x0 < x1 <= img.width_px and 0 <= y0 < y1 <= img.height_px


def test_shoes_project(shared_dir, tmp_path):
    folder = shared_dir / "datasets" / "shoes"
    ds = load(folder / "via_project.json", options=ReadOptions(images_dir=folder / "images"))
    assert ds.source_format == "via2" and len(ds) == 76 and ds.count_instances() == 150
    assert ds.labels == ["shoe"]
    out = save(ds, tmp_path / "via_project.json", fmt="via2")
    assert json.loads(out.read_text()) == json.loads((folder / "via_project.json").read_text())


@pytest.mark.parametrize("name", _wild_names())
def test_via_wild_file(shared_dir, tmp_path, name):
    rows = {row["saved_name"]: row for row in _sources(shared_dir)}
    if name not in rows:
        pytest.skip("SOURCES.tsv is absent")
    row = rows[name]
    path = shared_dir / "datasets" / "via-wild" / name
    fmt = VERSION_TO_FORMAT[row["via_version"]]
    text = path.read_text(encoding="utf-8-sig")
    if row["parse_check"] != "OK" and not row["parse_check"].startswith("CSV OK"):
        pytest.fail(f"SOURCES.tsv says {row['parse_check']!r}: add the expected error here")

    assert detect_format(text, source=name) == fmt
    ds = load(path)
    assert ds.source_format == fmt
    assert len(ds) == int(row["n_images"])
    assert ds.count_regions() == int(row["n_regions"])
    kinds = {}
    for img in ds:
        for r in img.regions:
            kind = r.shape_name if r.shape is not None else "(temporal only)"
            kinds[kind] = kinds.get(kind, 0) + 1
    expected_kinds = dict(k.split(":") for k in row["shape_kinds"].split(", "))
    if "(temporal only)" in expected_kinds:
        assert set(kinds) == {"(temporal only)"} and ds.count_instances() == 0
    else:
        assert {k: str(v) for k, v in kinds.items()} == expected_kinds

    out = save(ds, tmp_path / name, fmt=fmt)
    if fmt == "csv":
        assert out.read_text(encoding="utf-8") == text
    else:
        assert json.loads(out.read_text(encoding="utf-8")) == json.loads(text)
    assert_same_set(ds, load(out))
