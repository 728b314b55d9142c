"""The predictor (batched detections, a given box, flips) and the pictures made from detections."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from shoeseg.checkpoint import save_checkpoint
from shoeseg.geometry import MIN_PART_WIDTH_PX, mask_iou, mask_to_polygons, polygons_to_mask
from shoeseg.model import build_model
from shoeseg.predict import Detection, Predictor
from shoeseg.visualize import dilate_mask, draw_overlay, inpainting_masks, plot_losses
from tests.synth import make_image


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    # A random model scores every proposal near 0.5: with a threshold of 0 it returns plenty of
    # detections with irregular masks, which is what the plumbing below needs.
    torch.manual_seed(0)
    model = build_model(num_classes=1, weights=None, min_size=64, max_size=96, box_detections_per_img=8)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, model=model, class_names=["shoe"])
    return Predictor.from_checkpoint(path, device="cpu", score_thresh=0.0)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [make_image(rng, 64, 96, 2)[0] for _ in range(2)]


def test_detections_have_full_size_masks_and_matching_polygons(predictor, images):
    results = predictor.predict(images)
    assert len(results) == 2 and all(results)
    for dets in results:
        scores = [d.score for d in dets]
        assert scores == sorted(scores, reverse=True)
        for d in dets:
            assert d.label == "shoe" and 0.0 <= d.score <= 1.0
            assert d.mask.shape == (64, 96) and d.mask.dtype == bool and d.mask.any()
            x1, y1, x2, y2 = d.box_xyxy
            assert 0 <= x1 <= x2 <= 96 and 0 <= y1 <= y2 <= 64
            # tracing on a crop around the box gives the same polygons as tracing the whole mask
            full = mask_to_polygons(d.mask, min_area_px=predictor.min_area_px, min_width_px=MIN_PART_WIDTH_PX)
            assert len(full) == len(d.polygons) and all(np.allclose(a, b) for a, b in zip(full, d.polygons, strict=True))
            big = d.mask.sum() >= 32 * 32
            if big:
                assert mask_iou(polygons_to_mask(d.polygons, 64, 96), d.mask) >= 0.9
    assert predictor.model_version and predictor.class_names == ["shoe"]


def test_a_detection_whose_mask_is_a_line_along_the_edge_gives_no_pre_label(tmp_path):
    # a shoe and a sliver two pixels tall along the image's bottom edge (what a random model's box gives in the
    # browser test), whose outline through the pixel centres is one pixel tall:
    # Label Studio would list the sliver's polygon but not draw it, so nobody could see it to delete it
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model=build_model(num_classes=1, weights=None, min_size=64, max_size=96), class_names=["shoe"])
    predictor = Predictor.from_checkpoint(path, device="cpu", score_thresh=0.0, mask_refine=0.0)
    soft = torch.zeros(3, 1, 64, 96)
    soft[0, 0, 10:40, 20:60] = 1.0
    soft[1, 0, 62:64, 5:90] = 1.0
    soft[2, 0, 57:60, 5:90] = 1.0  # three pixels thick: kept
    out = {"boxes": torch.tensor([[20.0, 10, 60, 40], [5, 61, 90, 64], [5, 56, 90, 60]]),
           "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([1, 1, 1]), "masks": soft}
    (dets,) = predictor.detections([out], [np.zeros((64, 96, 3), np.uint8)])
    assert [round(d.score, 2) for d in dets] == [0.9, 0.7]
    assert len(dets[0].polygons) == len(dets[1].polygons) == 1
    assert mask_iou(polygons_to_mask(dets[0].polygons, 64, 96), soft[0, 0].numpy() > 0.5) > 0.9
    assert dets[1].polygons[0][:, 1].min() >= 57 and dets[1].polygons[0][:, 1].max() <= 60


def test_batches_threshold_and_single_images_agree(predictor, images):
    batched = predictor.predict(images)
    single = [predictor.predict([im])[0] for im in images]
    for a, b in zip(batched, single, strict=True):
        assert np.allclose([d.box_xyxy for d in a], [d.box_xyxy for d in b], atol=1e-3)
    k = max(range(len(images)), key=lambda i: len(batched[i]))  # the image with the most pre-labels
    assert len(batched[k]) >= 2, [len(b) for b in batched]
    cut = np.median([d.score for d in batched[k]])
    high = predictor.predict(images[k : k + 1], score_thresh=float(cut))[0]
    assert high and all(d.score >= cut for d in high) and len(high) < len(batched[k])
    assert predictor.model.roi_heads.score_thresh == 0.05  # the model's own setting is restored


def test_bad_images_are_named(predictor, images):
    with pytest.raises(ValueError, match="image 1.*uint8"):
        predictor.predict([images[0], images[1].astype(np.float32)])
    with pytest.raises(ValueError, match="image 0.*shape"):
        predictor.predict([np.zeros((4, 4, 5), np.uint8)])
    with pytest.raises(TypeError, match="list"):
        predictor.predict(images[0])
    gray = predictor.predict([images[0][:, :, 0]])  # gray images are accepted
    assert isinstance(gray[0], list)


def test_mask_head_on_a_detected_box_reproduces_that_detection(predictor, images):
    det = predictor.predict(images[:1])[0][0]
    again = predictor.predict_in_box(images[0], det.box_xyxy)
    assert again is not None and again.label == "shoe" and 0 < again.score < 1
    assert again.box_xyxy == pytest.approx(det.box_xyxy)
    assert mask_iou(again.mask, det.mask) >= 0.95


def test_predict_in_box_clips_and_rejects_bad_boxes(predictor, images):
    det = predictor.predict_in_box(images[0], (-10, -5, 40, 30))
    assert det is None or det.box_xyxy == (0.0, 0.0, 40.0, 30.0)
    for bad in [(1, 2, 3), (0, 0, float("nan"), 5), (200, 200, 300, 300), ("a", 0, 1, 1)]:
        with pytest.raises(ValueError, match="box"):
            predictor.predict_in_box(images[0], bad)


def test_flip_predictions_are_mapped_back_to_the_original_frame(predictor, images):
    plain, back = predictor.predict_with_flip(images)
    assert [len(x) for x in plain] == [len(x) for x in predictor.predict(images)]
    on_flipped = predictor.predict([np.ascontiguousarray(im[:, ::-1]) for im in images])
    for mirrored, direct in zip(back, on_flipped, strict=True):
        assert len(mirrored) == len(direct)
        for m, d in zip(mirrored, direct, strict=True):
            assert np.array_equal(m.mask, d.mask[:, ::-1])
            assert np.allclose(m.box_xyxy, (96 - d.box_xyxy[2], d.box_xyxy[1], 96 - d.box_xyxy[0], d.box_xyxy[3]))
            # scan conversion rounds edge crossings one way, so a mirrored outline may differ by a pixel here
            # and there
            assert mask_iou(polygons_to_mask(m.polygons, 64, 96), polygons_to_mask(d.polygons, 64, 96)[:, ::-1]) > 0.9


def _det(mask, score=0.9):
    ys, xs = np.nonzero(mask)
    return Detection(label="shoe", score=score, box_xyxy=(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), mask=mask,
                     polygons=mask_to_polygons(mask))


def test_overlay_and_inpainting_masks(tmp_path):
    image = np.full((60, 80, 3), 128, np.uint8)
    a = np.zeros((60, 80), bool)
    a[10:30, 10:30] = True
    b = np.zeros((60, 80), bool)
    b[35:55, 50:75] = True
    dets = [_det(a), _det(b, 0.7)]
    out = draw_overlay(image, dets)
    assert out.shape == image.shape and not np.array_equal(out[20, 20], image[20, 20])
    assert np.array_equal(out[45, 5], image[45, 5])  # away from every shoe, untouched
    union, each = inpainting_masks(dets, 60, 80, dilate_px=0)
    assert union.dtype == np.uint8 and set(np.unique(union)) == {0, 255}
    assert np.array_equal(union > 0, a | b) and len(each) == 2 and np.array_equal(each[1] > 0, b)
    grown, _ = inpainting_masks(dets, 60, 80, dilate_px=3)
    assert (grown > 0).sum() > (union > 0).sum() and (grown > 0)[a | b].all()
    assert dilate_mask(a, 2)[8, 20] and not dilate_mask(a, 2)[7, 20]
    with pytest.raises(ValueError, match="size"):
        inpainting_masks(dets, 30, 40)
    rows = [{"iteration": i, "total_loss": 3.0 / i, "loss_mask": 1.0 / i} for i in range(1, 6)]
    png = plot_losses(rows, tmp_path / "loss.png")
    assert Image.open(png).size[0] > 100



def _mirrored_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


def test_flip_tta_is_mirror_equivariant_and_keeps_the_detection_cap(predictor, images):
    tta = Predictor(predictor.model, class_names=predictor.class_names, device="cpu", score_thresh=0.0, flip_tta=True)
    mirrored = [np.ascontiguousarray(im[:, ::-1]) for im in images]
    width = images[0].shape[1]
    for a, b in zip(tta.forward_raw(images), tta.forward_raw(mirrored), strict=True):
        assert 0 < len(a["scores"]) <= predictor.model.roi_heads.detections_per_img
        assert a["masks"].shape[-2:] == images[0].shape[:2]
        # an image and its mirror image run the same two views, so each result is the other's mirrored
        order_a, order_b = a["scores"].argsort(), b["scores"].argsort()
        assert torch.allclose(a["scores"][order_a], b["scores"][order_b])
        assert torch.allclose(_mirrored_boxes(a["boxes"][order_a], width), b["boxes"][order_b], atol=1e-3)
        # the mean of both views' mask probabilities (pasting rounds box edges, so compare on the whole)
        diff = (a["masks"][order_a] - b["masks"][order_b].flip(-1)).abs()
        assert diff.mean() < 0.02, diff.mean()
    # this random model on its own is not mirror-equivariant: the property is the TTA's
    plain_a, plain_b = predictor.forward_raw(images[:1])[0], predictor.forward_raw(mirrored[:1])[0]
    assert len(plain_a["scores"]) != len(plain_b["scores"]) or not torch.allclose(
        _mirrored_boxes(plain_a["boxes"][plain_a["scores"].argsort()], width),
        plain_b["boxes"][plain_b["scores"].argsort()], atol=1e-3)
    # detections from TTA go through the same polygons as any other
    dets = tta.predict(images)
    assert all(d.polygons and d.mask.shape == images[0].shape[:2] for per in dets for d in per)


def test_flip_tta_is_a_serving_setting_of_the_checkpoint(tmp_path, predictor, images):
    torch.manual_seed(0)
    model = build_model(num_classes=1, weights=None, min_size=64, max_size=96, box_detections_per_img=8,
                        flip_tta=True)
    save_checkpoint(tmp_path / "tta.pt", model=model, class_names=["shoe"])
    assert Predictor.from_checkpoint(tmp_path / "tta.pt", device="cpu").flip_tta is True
    assert Predictor.from_checkpoint(tmp_path / "tta.pt", device="cpu", flip_tta=False).flip_tta is False
    assert predictor.flip_tta is False  # checkpoints without the setting serve as before
    # flip-consistency scoring compares the plain views, whatever the serving setting
    tta = Predictor(predictor.model, class_names=predictor.class_names, device="cpu", score_thresh=0.0, flip_tta=True)
    with_tta, plain = tta.predict_with_flip(images), predictor.predict_with_flip(images)
    for (a, b), (c, d) in zip(zip(*with_tta, strict=True), zip(*plain, strict=True), strict=True):
        assert [x.score for x in a] == [x.score for x in c] and [x.score for x in b] == [x.score for x in d]
