"""The shared shoe-soles set (a Roboflow YOLO segmentation export): 1,369 images and 1,476 instances, and
YOLO -> COCO -> YOLO gives back every polygon (within 1e-6 of the image size)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import shared_dataset
from via_tools import coco, yolo
from via_tools.io import load
from via_tools.model import polygons_close
from via_tools.report import Report

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def soles(shared_dir):
    return shared_dataset(shared_dir, "shoe-soles-yoloseg", "data.yaml")


@pytest.fixture(scope="module")
def read(soles):
    report = Report(source=str(soles))
    return load(soles / "data.yaml", report=report), report


def _label_texts(soles) -> dict[str, str]:
    return {p.stem: p.read_text(encoding="utf-8") for p in (soles / "train" / "labels").glob("*.txt")}


def _assert_same_lines(ours: str, theirs: str, *, where: str) -> None:
    a = yolo.parse_label_text(ours, source=where)
    b = yolo.parse_label_text(theirs, source=where)
    assert [ln.class_id for ln in a] == [ln.class_id for ln in b], where
    for la, lb in zip(a, b, strict=True):
        assert la.points.shape == lb.points.shape and np.allclose(la.points, lb.points, atol=1e-6, rtol=0), where


def test_counts_names_split_and_sizes(read, soles):
    ds, report = read
    assert ds.source_format == "yolo" and ds.labels == ["shoes"]
    assert len(ds) == 1369 and ds.count_instances() == 1476
    assert {img.extra["split"] for img in ds} == {"train"}
    assert all(img.width_px and img.height_px for img in ds)
    texts = _label_texts(soles)
    assert len(texts) == 1369
    assert sum(not img.regions for img in ds) == sum(not t.strip() for t in texts.values())
    assert ds.meta["yolo_yaml"]["roboflow"]["license"] == "CC BY 4.0"
    assert not report.counts, dict(report.counts)


def test_yolo_to_coco_to_yolo_gives_the_same_polygons(read, soles):
    ds, _ = read
    doc = json.loads(json.dumps(coco.write(ds)))
    assert len(doc["images"]) == 1369 and len(doc["annotations"]) == 1476
    via_coco = coco.read(doc, source="soles.coco.json")
    files = yolo.write(via_coco)
    texts = _label_texts(soles)
    assert set(files) == {"data.yaml"} | {f"labels/train/{stem}.txt" for stem in texts}
    for stem, theirs in texts.items():
        _assert_same_lines(files[f"labels/train/{stem}.txt"], theirs, where=stem)


def test_saved_set_reads_back_the_same(read, tmp_path):
    ds, _ = read
    back = load(yolo.save(ds, tmp_path / "soles", images="link"))
    assert back.labels == ds.labels and len(back) == len(ds)
    for a, b in zip(ds, back, strict=True):
        assert (a.file_name, a.width_px, a.height_px, a.extra["split"]) == (b.file_name, b.width_px, b.height_px,
                                                                            b.extra["split"])
        assert len(a.regions) == len(b.regions), a.file_name
        for ra, rb in zip(a.regions, b.regions, strict=True):
            assert polygons_close(ra.polygons, rb.polygons, tol_px=1e-6), (a.file_name, ra.region_id)
