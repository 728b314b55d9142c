"""The shared shoes set: its COCO file and its VIA project hold the same 150 polygons on 76 images."""

from __future__ import annotations

import pytest

from tests.helpers import shared_dataset
from via_tools.io import load
from via_tools.model import polygons_close

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def shoes(shared_dir):
    return shared_dataset(shared_dir, "shoes", "coco.json")


def test_coco_and_via_hold_the_same_polygons(shoes):
    from_coco = load(shoes / "coco.json")
    from_via = load(shoes / "via_project.json")
    assert from_coco.source_format == "coco" and from_via.source_format == "via2"
    for ds in (from_coco, from_via):
        assert len(ds) == 76 and ds.count_instances() == 150 and ds.labels == ["shoe"]
    via_by_name = from_via.by_file_name()
    assert set(via_by_name) == {img.file_name for img in from_coco}
    for img in from_coco:
        other = via_by_name[img.file_name]
        assert len(img.regions) == len(other.regions), img.file_name
        for a, b in zip(img.regions, other.regions, strict=True):
            # the VIA file rounds coordinates to 2 decimals
            assert polygons_close(a.polygons, b.polygons, tol_px=0.0051), (img.file_name, a.region_id)


def test_via_to_coco_with_images_matches_the_shared_coco(shoes, tmp_path):
    from via_tools.io import save
    from via_tools.options import ReadOptions

    via = load(shoes / "via_project.json", options=ReadOptions(images_dir=shoes / "images"))
    out = save(via, tmp_path / "c.json", fmt="coco")
    ours, theirs = load(out), load(shoes / "coco.json")
    ref = theirs.by_file_name()
    for img in ours:
        r = ref[img.file_name]
        assert (img.width_px, img.height_px) == (r.width_px, r.height_px)
        for a, b in zip(img.regions, r.regions, strict=True):
            assert a.bbox_xyxy() == pytest.approx(b.bbox_xyxy(), abs=0.01)
            assert polygons_close(a.polygons, b.polygons, tol_px=0.0051)
