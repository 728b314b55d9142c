"""A detection's soft mask before thresholding: edge-guided refinement and mask-quality rescoring, on constructed
cases with known answers, and as the predictor applies them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shoeseg.model import build_model
from shoeseg.outlines import grey, guided_filter, maskness, refine_in_box
from shoeseg.predict import Predictor


def _step_scene(edge_true: int = 40, edge_soft: int = 36, size: int = 80):
    """An image dark left of column ``edge_true`` and bright from it on, and a soft mask of the bright side whose
    probabilities cross 0.5 at ``edge_soft`` instead, with a ramp 12 pixels wide (a blob's rounded edge)."""
    image = np.full((size, size, 3), 40, np.uint8)
    image[:, edge_true:] = 200
    cols = np.arange(size, dtype=np.float32)
    soft = np.clip(0.5 + (cols - edge_soft) / 12.0, 0.0, 1.0)[None, :].repeat(size, axis=0).astype(np.float32)
    return image, soft


def _crossing(row: np.ndarray) -> int:
    """The first column where a row of probabilities exceeds 0.5."""
    return int(np.argmax(row > 0.5))


@pytest.mark.parametrize(("edge_soft", "crossing"), [(36, 37), (44, 45)])
def test_the_refined_edge_moves_onto_the_image_edge(edge_soft, crossing):
    image, soft = _step_scene(edge_soft=edge_soft)
    assert _crossing(soft[40]) == crossing  # the head's edge: 3 pixels short of the image's, or 5 past it
    refine_in_box(grey(image), soft, (10, 10, 70, 70), radius_rel=0.12, eps=0.01)  # a window radius of 10 pixels
    assert _crossing(soft[40]) == 40  # on the image's edge
    assert soft.min() >= 0.0 and soft.max() <= 1.0
    far = _step_scene(edge_soft=24)[1]  # an edge farther from the image's than the window reaches stays near
    refine_in_box(grey(image), far, (10, 10, 70, 70), radius_rel=0.12, eps=0.01)
    assert _crossing(far[40]) < 30


def test_a_flat_image_gives_the_box_mean_and_no_radius_changes_nothing():
    src = np.random.default_rng(0).random((30, 30)).astype(np.float32)
    flat = np.full((30, 30), 0.5, np.float32)
    out = guided_filter(flat, src, 2, 0.01)  # no intensity edge: the filter is two box means of the source
    inner = out[6:-6, 6:-6]
    k = np.ones((5, 5), np.float32) / 25
    once = np.array([[(src[i - 2:i + 3, j - 2:j + 3] * k).sum() for j in range(2, 28)] for i in range(2, 28)])
    twice = np.array([[(once[i - 2:i + 3, j - 2:j + 3] * k).sum() for j in range(2, 24)] for i in range(2, 24)])
    assert inner == pytest.approx(twice[2:-2, 2:-2], abs=1e-5)

    image, soft = _step_scene()
    before = soft.copy()
    refine_in_box(grey(image), soft, (10, 10, 70, 70), radius_rel=0.0)
    assert np.array_equal(soft, before)


def test_refinement_stays_inside_the_box_and_its_margin():
    image, soft = _step_scene(size=120)
    before = soft.copy()
    refine_in_box(grey(image), soft, (20, 20, 60, 60), radius_rel=0.1)  # margin: 0.1 * 40 + 2 = 6 pixels
    changed = np.argwhere(soft != before)
    assert len(changed)
    assert changed.min() >= 14 and changed.max() < 66


def test_a_faint_mask_is_not_erased():
    guide = np.random.default_rng(1).random((60, 60)).astype(np.float32)  # no edge to snap to: noise
    soft = np.zeros((60, 60), np.float32)
    soft[20:40, 20:40] = 0.5 + 0.04 * np.random.default_rng(2).random((20, 20))  # barely above 0.5
    before = soft.copy()
    refine_in_box(guide, soft, (20, 20, 40, 40), radius_rel=0.1)  # would smooth most of it under 0.5
    assert np.array_equal(soft, before)


def test_maskness_is_the_mean_kept_probability():
    soft = np.zeros((10, 10), np.float32)
    assert maskness(soft, 0.5) == 0.0  # keeps nothing
    soft[2:4, 2:4] = [[1.0, 0.8], [0.6, 0.4]]
    assert maskness(soft, 0.5) == pytest.approx(0.8)  # 1.0, 0.8 and 0.6 kept; 0.4 not


def test_guided_filter_names_a_shape_mismatch():
    with pytest.raises(ValueError, match="differ in shape"):
        guided_filter(np.zeros((4, 4), np.float32), np.zeros((4, 5), np.float32), 1, 0.01)


@pytest.fixture(scope="module")
def tiny_predictor_args():
    """A random model whose boxes are its anchors (box deltas zeroed): random deltas give strips a pixel or two
    tall, whose masks the predictor drops as too thin to outline (:data:`shoeseg.geometry.MIN_PART_WIDTH_PX`)."""
    torch.manual_seed(0)
    model = build_model(num_classes=1, weights=None, min_size=64, max_size=96, box_detections_per_img=8)
    with torch.no_grad():
        for layer in (model.rpn.head.bbox_pred, model.roi_heads.box_predictor.bbox_pred):
            layer.weight.zero_()
            layer.bias.zero_()
    return model


def _outputs(probabilities: list[float], scores: list[float]) -> dict[str, torch.Tensor]:
    """Outputs as ``forward_raw`` gives them: one detection per probability, its soft mask that value inside its
    box (and 0 outside)."""
    masks = torch.zeros((len(scores), 1, 60, 80))
    boxes = []
    for i, p in enumerate(probabilities):
        x0 = 5 + 25 * i
        masks[i, 0, 10:50, x0:x0 + 20] = p
        boxes.append([x0, 10, x0 + 20, 50])
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores),
            "labels": torch.ones(len(scores), dtype=torch.int64), "masks": masks}


def test_rescoring_multiplies_by_mask_quality_reorders_and_drops_below_the_threshold(tiny_predictor_args):
    image = np.full((60, 80, 3), 128, np.uint8)
    outs = _outputs([0.55, 0.95, 0.9], [0.9, 0.8, 0.6])
    plain = Predictor(tiny_predictor_args, class_names=["shoe"], device="cpu", mask_refine=0.0, mask_rescore=False)
    dets = plain.detections([outs], [image], min_score=0.5)[0]
    assert [round(d.score, 3) for d in dets] == [0.9, 0.8, 0.6]

    rescoring = Predictor(tiny_predictor_args, class_names=["shoe"], device="cpu", mask_refine=0.0,
                          mask_rescore=True)
    dets = rescoring.detections([outs], [image], min_score=0.5)[0]
    # 0.9 * 0.55 = 0.495 falls below 0.5; 0.8 * 0.95 = 0.76 and 0.6 * 0.9 = 0.54 stay, highest first
    assert [round(d.score, 3) for d in dets] == [0.76, 0.54]
    assert [d.box_xyxy[0] for d in dets] == [30.0, 55.0]
    every = rescoring.detections([outs], [image])[0]  # no threshold given: all three, re-ranked
    assert [round(d.score, 3) for d in every] == [0.76, 0.54, 0.495]


def test_the_predictor_refines_what_it_thresholds(tiny_predictor_args):
    image, soft = _step_scene()
    outs = {"boxes": torch.tensor([[30.0, 10.0, 79.0, 70.0]]), "scores": torch.tensor([0.9]),
            "labels": torch.ones(1, dtype=torch.int64), "masks": torch.from_numpy(soft)[None, None].clone()}
    outs["masks"][..., :, :22] = 0  # nothing left of the box's margin
    raw = Predictor(tiny_predictor_args, class_names=["shoe"], device="cpu", mask_refine=0.0, mask_rescore=False)
    refined = Predictor(tiny_predictor_args, class_names=["shoe"], device="cpu", mask_refine=0.12,
                        mask_rescore=False)
    given = outs["masks"].clone()
    after = refined.detections([outs], [image])[0][0].mask
    assert torch.equal(outs["masks"], given)  # the outputs stay as the model gave them
    before = raw.detections([outs], [image])[0][0].mask
    assert _crossing(before[40]) == 37 and _crossing(after[40]) == 40
    with pytest.raises(ValueError, match="mask_refine"):
        Predictor(tiny_predictor_args, class_names=["shoe"], device="cpu", mask_refine=-0.1)


def test_with_rescoring_every_detection_gets_its_mask(tiny_predictor_args):
    image = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    rescoring = Predictor(tiny_predictor_args, class_names=["shoe"], device="cpu", score_thresh=0.0,
                          mask_rescore=True)
    dets = rescoring.predict([image], masks_from=1.0)[0]  # masks_from would leave every one without a mask
    assert dets and all(d.mask is not None for d in dets)
    assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)
