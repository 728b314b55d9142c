"""Evaluation: COCO AP checked against hand-computed cases, and the evaluate() plumbing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from shoeseg.evaluate import coco_metrics, evaluate
from shoeseg.geometry import mask_iou, polygons_to_mask
from shoeseg.losses import LOSS_KEYS
from shoeseg.model import build_model
from shoeseg.predict import Detection, Predictor
from tests.synth import make_shoe_dataset


def _rect_mask(x1, y1, x2, y2, h=100, w=100):
    m = np.zeros((h, w), bool)
    m[y1:y2, x1:x2] = True
    return m


def _det(box, mask, score):
    return Detection(label="shoe", score=score, box_xyxy=box, mask=mask, polygons=())


def test_ap_matches_a_hand_computed_case():
    # One image, two shoes: A = [10,40) x [10,60) (30x50 px), B = [60,90) x [20,50) (30x30 px).
    gt_a, gt_b = _rect_mask(10, 10, 40, 60), _rect_mask(60, 20, 90, 50)
    truth = [{"height_px": 100, "width_px": 100, "masks": np.stack([gt_a, gt_b]),
              "boxes_xyxy": np.array([[10, 10, 40, 60], [60, 20, 90, 50]], float), "labels": ["shoe", "shoe"]}]
    # Detections, by score: (1) A exactly, 0.9; (2) a false positive far away, 0.8;
    # (3) B cut to its top 22 rows, IoU 22/30 = 0.733, 0.7.
    part_b = _rect_mask(60, 20, 90, 42)
    assert mask_iou(part_b, gt_b) == pytest.approx(22 / 30)
    dets = [[_det((10, 10, 40, 60), gt_a, 0.9), _det((0, 70, 20, 95), _rect_mask(0, 70, 20, 95), 0.8),
             _det((60, 20, 90, 42), part_b, 0.7)]]
    m = coco_metrics(truth, dets, class_names=["shoe"])
    # IoU thresholds 0.50, 0.55, 0.60, 0.65, 0.70 (B matches): ranked TP, FP, TP -> precision 1, 1/2, 2/3
    # at recall 1/2, 1/2, 1. Interpolated precision (the maximum to the right): 1 for recall <= 0.5,
    # 2/3 above. Over COCO's 101 recall points 0, 0.01, ..., 1: (51 * 1 + 50 * 2/3) / 101.
    both = (51 + 50 * 2 / 3) / 101
    # Thresholds 0.75 ... 0.95 (B does not match): TP, FP, FP -> precision 1 up to recall 0.5 and none
    # above: 51 / 101.
    only_a = 51 / 101
    assert m["segm_AP50"] == pytest.approx(both, abs=1e-6)
    assert m["segm_AP75"] == pytest.approx(only_a, abs=1e-6)
    assert m["segm_AP"] == pytest.approx((5 * both + 5 * only_a) / 10, abs=1e-6)
    # the boxes overlap exactly as the masks do here
    assert m["bbox_AP50"] == pytest.approx(both, abs=1e-6) and m["bbox_AP75"] == pytest.approx(only_a, abs=1e-6)


def test_ap_edge_cases():
    gt = _rect_mask(10, 10, 40, 60)
    truth = [{"height_px": 100, "width_px": 100, "masks": gt[None], "boxes_xyxy": np.array([[10, 10, 40, 60]], float),
              "labels": ["shoe"]}]
    assert coco_metrics(truth, [[]], class_names=["shoe"])["segm_AP"] == 0.0  # nothing found
    empty = [{"height_px": 10, "width_px": 10, "masks": np.zeros((0, 10, 10), bool), "boxes_xyxy": np.zeros((0, 4)),
              "labels": []}]
    assert coco_metrics(empty, [[]], class_names=["shoe"])["segm_AP"] is None  # nothing to measure
    perfect = coco_metrics(truth, [[_det((10, 10, 40, 60), gt, 0.5)]], class_names=["shoe"])
    assert perfect["segm_AP"] == pytest.approx(1.0) and perfect["bbox_AP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="1 images"):
        coco_metrics(truth, [[], []], class_names=["shoe"])


class _Oracle:
    """A stand-in predictor that returns the annotated shoes (a unit-test double)."""

    class_names = ["shoe"]

    def __init__(self, ds):
        self.by_size = ds

    def predict(self, images, *, score_thresh=None):
        out = []
        for image in images:
            rec = next(r for r in self.by_size.images if r.extra.get("pixels_sum") == int(image.sum()))
            h, w = image.shape[:2]
            out.append([_det(r.bbox_xyxy(), polygons_to_mask(r.polygons, h, w), 0.99) for r in rec.instances])
        return out


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from via_tools.images import read_image

    d = tmp_path_factory.mktemp("eval")
    ds = make_shoe_dataset(d, n_images=2, size_px=(64, 80), seed=21)
    for r in ds.images:
        r.extra["pixels_sum"] = int(read_image(d / r.file_name).sum())
    return ds, d


def test_evaluate_reads_images_and_scores_a_perfect_predictor_at_1(synth):
    ds, d = synth
    res = evaluate(_Oracle(ds), ds, images_dir=d)
    assert res.metrics["segm_AP"] == pytest.approx(1.0) and res.metrics["bbox_AP75"] == pytest.approx(1.0)
    assert res.n_images == 2 and res.n_instances == ds.count_instances()
    assert [p["file_name"] for p in res.per_image] == [r.file_name for r in ds.images]
    assert all(p["best_mask_iou"] == [1.0] * p["n_truth"] for p in res.per_image)
    assert res.losses == {}  # no model to compute losses with
    # the per-image measures give the annotator's numbers at any threshold: every shoe kept, nothing to delete
    assert len(res.measures) == 2 and "measures" not in res.to_json()
    assert all(m.at(0.5).n_missed == 0 and m.at(0.5).n_false_positives == 0 for m in res.measures)
    assert sum(m.at(0.995).n_missed for m in res.measures) == ds.count_instances()  # over every score: all missed
    json.dumps(res.to_json())
    assert "segm" in res.table()


def test_evaluate_computes_the_loss_table_without_changing_the_model(synth):
    ds, d = synth
    torch.manual_seed(0)
    model = build_model(num_classes=1, weights=None, min_size=64, max_size=80, box_detections_per_img=10)
    predictor = Predictor(model, class_names=["shoe"], device="cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = evaluate(predictor, ds, images_dir=d)
    assert list(res.losses) == list(LOSS_KEYS) and all(np.isfinite(v) for v in res.losses.values())
    assert all(set(p["losses"]) == set(LOSS_KEYS) for p in res.per_image)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # batch-norm statistics untouched
    assert not model.training
    again = evaluate(predictor, ds, images_dir=d)
    assert again.losses == res.losses  # seeded sampling: the same numbers twice
    for key, value in res.metrics.items():
        assert value is None or 0.0 <= value <= 1.0, key
