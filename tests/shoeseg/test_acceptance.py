"""Live acceptance: the arithmetic of one annotation against its pre-label, and the per-version records that
never count an annotation twice and outlive the process (they live in the registry)."""

from __future__ import annotations

import pytest

from shoeseg.acceptance import COUNTS, compare, summarize
from shoeseg_services.registry import ModelRegistry, RegistryError


def poly(x0, y0, x1, y1, *, label="shoe", size=(200, 100), rid=None) -> dict:
    """A rectangle as a Label Studio polygon result, corners in percent."""
    return {"id": rid or f"r{x0}{y0}", "type": "polygonlabels", "from_name": "label", "to_name": "image",
            "original_width": size[0], "original_height": size[1],
            "value": {"points": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]], "polygonlabels": [label], "closed": True}}


def test_kept_moved_deleted_drawn_and_vertices():
    pred = [poly(10, 10, 30, 50), poly(40, 10, 60, 50), poly(70, 10, 90, 50)]
    ann = [
        poly(10, 10, 30, 50),      # the first kept as it was (IoU 1)
        poly(42, 12, 62, 52),      # the second moved: IoU 684/916 = 0.75; its four corners off the new outline
        poly(10, 70, 30, 95),      # a shoe the model missed: drawn
    ]                              # the third pre-label deleted
    c = compare(ann, pred)
    assert c == {"kept": 1, "moved": 1, "deleted": 1, "drawn": 1, "vertices_changed": 4, "predicted": 3,
                 "annotated": 3}


def test_the_keep_threshold_is_iou_0_9_and_a_shoe_cut_short_along_its_edge_moves_no_vertex():
    pred = [poly(10, 10, 30, 50)]
    assert compare([poly(10, 10, 30, 60)], pred)["vertices_changed"] == 0  # its corners lie on the new outline
    assert compare([poly(10, 10, 30, 48)], pred)["kept"] == 1   # IoU 0.95
    assert compare([poly(10, 10, 30, 45)], pred)["moved"] == 1  # IoU 0.875


def test_a_shoe_relabelled_is_deleted_and_drawn():
    c = compare([poly(10, 10, 30, 50, label="sandal")], [poly(10, 10, 30, 50)])
    assert (c["kept"], c["deleted"], c["drawn"]) == (0, 1, 1)


def test_empty_sides_and_other_result_types():
    rect = {"type": "rectanglelabels", "value": {"x": 1, "y": 1, "width": 5, "height": 5}}
    assert compare([], [])["predicted"] == 0
    assert compare([rect], [poly(1, 1, 9, 9)]) == {**dict.fromkeys(COUNTS, 0), "deleted": 1, "predicted": 1}
    assert compare([poly(1, 1, 9, 9)], [rect])["drawn"] == 1


def test_summarize_adds_up_and_gives_the_kept_share():
    s = summarize([{"kept": 2, "moved": 1, "predicted": 3, "annotated": 3, "at": "2025-01-01T00:00:00+00:00"},
                   {"deleted": 2, "drawn": 1, "vertices_changed": 4, "predicted": 2, "annotated": 1,
                    "at": "2025-01-03T00:00:00+00:00"}])
    assert s["annotations"] == 2 and (s["kept"], s["moved"], s["deleted"], s["drawn"]) == (2, 1, 2, 1)
    assert s["vertices_changed"] == 4 and s["kept_share"] == 0.4 and s["updated_at"] == "2025-01-03T00:00:00+00:00"
    assert summarize([])["kept_share"] is None


@pytest.fixture
def registry(tmp_path):
    from tests.helpers import make_checkpoint

    reg = ModelRegistry(tmp_path / "models")
    for version in ("acc-v1", "acc-v2"):
        reg.register(make_checkpoint(tmp_path / f"{version}.pt", version=version, fg_logit=1.0, detections=1, seed=1),
                     metrics={"segm_AP": 0.2}, meta={"project": 1})
    return reg


def test_an_annotation_updated_again_replaces_its_record(registry):
    assert registry.acceptance("acc-v1") is None
    registry.record_acceptance("acc-v1", 7, {"kept": 1, "predicted": 2, "deleted": 1})
    registry.record_acceptance("acc-v1", 8, {"kept": 3, "predicted": 3})
    s = registry.record_acceptance("acc-v1", 7, {"kept": 2, "predicted": 2})  # annotation 7 updated
    assert (s["annotations"], s["kept"], s["predicted"], s["deleted"]) == (2, 5, 5, 0)
    # what another process (the backend, after a restart) reads
    again = ModelRegistry(registry.root).acceptance("acc-v1")
    assert again == s
    assert sorted(r["annotation"] for r in ModelRegistry(registry.root).acceptance_records("acc-v1")) == [7, 8]


def test_an_annotation_counts_under_one_version_only_and_can_be_forgotten(registry):
    registry.record_acceptance("acc-v1", 7, {"kept": 1, "predicted": 1})
    registry.record_acceptance("acc-v2", 7, {"moved": 1, "predicted": 1})
    assert registry.acceptance("acc-v1") is None
    assert registry.acceptance("acc-v2")["moved"] == 1
    assert registry.forget_acceptance(7) == "acc-v2"
    assert registry.acceptance("acc-v2") is None and registry.forget_acceptance(7) is None


def test_bad_records_are_refused(registry):
    with pytest.raises(RegistryError, match="not in the registry"):
        registry.record_acceptance("nope", 1, {})
    with pytest.raises(RegistryError, match="not a positive integer"):
        registry.record_acceptance("acc-v1", "../x", {})
