"""The outline heads (shoeseg.heads) on masks with known outlines: the boundary term and the point head."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from shoeseg.heads import (
    BOUNDARY_LOSS,
    POINT_LOSS,
    SUBDIVISION_POINTS,
    OutlineRoIHeads,
    PointHead,
    boundary_dice_loss,
    fine_features,
    level_scale,
    outline_band,
    point_sample,
    refine_mask_logits,
    training_points,
)
from shoeseg.losses import detectron2_losses
from shoeseg.model import build_model, model_config_of


def _square(side: int, lo: int, hi: int) -> torch.Tensor:
    m = torch.zeros(1, side, side)
    m[0, lo:hi, lo:hi] = 1
    return m


def test_the_outline_band_is_a_ring_along_the_edge():
    band = outline_band(_square(10, 2, 8))
    assert band[0, 5, 5] == 0 and band[0, 0, 0] == 0  # inside and far outside
    assert band[0, 2, 5] == 1 and band[0, 1, 5] == 1 and band[0, 3, 5] == 0  # one pixel either side of the edge


def test_the_loss_is_near_zero_for_the_true_outline_and_grows_as_the_outline_moves():
    target = _square(28, 6, 22)
    logits = (target * 2 - 1) * 20  # the target, confidently
    exact = boundary_dice_loss(logits, target)
    shifted = [boundary_dice_loss((_square(28, 6 + d, 22 + d) * 2 - 1) * 20, target) for d in (1, 2, 4)]
    assert exact < 1e-3
    # a 2-pixel band: past a 2-pixel shift only the crossings overlap (the cross-entropy does the rest)
    assert exact < shifted[0] < shifted[1] <= shifted[2] <= 1
    blob = torch.zeros(1, 28, 28)  # uncertain everywhere: no edge at all
    assert boundary_dice_loss(blob, target) > 0.9


def _batch():
    img = torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(1, 96, 96, dtype=torch.uint8)
    masks[0, 20:70, 15:60] = 1
    return [img], [{"boxes": torch.tensor([[15.0, 20.0, 60.0, 70.0]]), "labels": torch.tensor([1]), "masks": masks}]


def test_training_adds_the_weighted_term_and_it_reaches_the_mask_head():
    torch.manual_seed(0)
    model = build_model(num_classes=1, weights=None, arch="lite0-fpn", min_size=96, max_size=96,
                        roi_batch_size_per_image=32, mask_boundary_weight=2.0)
    assert isinstance(model.roi_heads, OutlineRoIHeads) and model_config_of(model).mask_boundary_weight == 2.0
    model.train()
    losses = model(*_batch())
    assert BOUNDARY_LOSS in losses and 0 < losses[BOUNDARY_LOSS].item() <= 2.0
    model.zero_grad()
    losses[BOUNDARY_LOSS].backward()
    grad = model.roi_heads.mask_predictor.mask_fcn_logits.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    named = detectron2_losses(losses)
    assert named["total_loss"] == pytest.approx(sum(float(v) for v in losses.values()))
    assert BOUNDARY_LOSS in named
    model.eval()
    with torch.inference_mode():
        out = model(_batch()[0])[0]
    assert set(out) == {"boxes", "labels", "scores", "masks"}  # inference as torchvision's heads


def test_without_a_weight_the_heads_are_torchvisions_and_the_losses_detectron2s():
    torch.manual_seed(0)
    model = build_model(num_classes=1, weights=None, arch="lite0-fpn", min_size=96, max_size=96,
                        roi_batch_size_per_image=32)
    assert not isinstance(model.roi_heads, OutlineRoIHeads)
    model.train()
    assert BOUNDARY_LOSS not in model(*_batch())
    with pytest.raises(ValueError, match="mask_boundary_weight"):
        build_model(num_classes=1, weights=None, mask_boundary_weight=-1)


# -- the point head (PointRend) ------------------------------------------------------------------------------

def _point_model(steps: int = 2, **kw):
    torch.manual_seed(0)
    return build_model(num_classes=1, weights=None, arch="lite0-fpn", min_size=96, max_size=96,
                       roi_batch_size_per_image=32, mask_point_steps=steps, **kw)


def test_fine_features_are_read_where_the_points_lie_in_the_image():
    # a stride-4 map whose value is the input's x coordinate at each cell's centre (channel 0) and y (channel 1)
    hf, wf = 10, 12
    ys, xs = torch.meshgrid(torch.arange(hf) + 0.5, torch.arange(wf) + 0.5, indexing="ij")
    feature = torch.stack([xs * 4, ys * 4])[None]
    assert level_scale(feature, [(40, 48)]) == 0.25
    boxes = [torch.tensor([[8.0, 4.0, 24.0, 36.0]])]
    uv = torch.tensor([[[0.5, 0.5], [0.25, 0.75]]])  # the box's centre; a quarter across, three quarters down
    got = fine_features(feature, 0.25, boxes, uv)
    assert got.shape == (1, 2, 2)
    assert got[0, :, 0].tolist() == pytest.approx([16.0, 20.0])
    assert got[0, :, 1].tolist() == pytest.approx([12.0, 28.0])


def test_training_points_crowd_where_the_coarse_mask_is_uncertain():
    torch.manual_seed(0)
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    # a square's logits: 0 on its edge, more confident with every pixel away from it, inside and out
    coarse = (7 - torch.maximum((xs - 13.5).abs(), (ys - 13.5).abs()))[None, None]
    uv = training_points(coarse, n=200)
    assert uv.shape == (1, 200, 2) and 0 <= uv.min() and uv.max() <= 1
    margin = point_sample(coarse, uv)[0, 0].abs()
    important, uniform = margin[:150], margin[150:]
    assert important.mean() < 0.5 * uniform.mean()
    assert important.max() < 2.5  # a quarter of the area lies within 1.75 px of the edge: the least certain points


def test_an_untrained_point_head_serves_the_upsampled_coarse_mask():
    model = _point_model(steps=1).eval()
    heads = model.roi_heads
    assert isinstance(heads.point_head, PointHead) and model_config_of(model).mask_point_steps == 1
    coarse = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    features = {"0": torch.randn(1, 256, 24, 24)}
    boxes = [torch.tensor([[0.0, 0, 50, 40], [10, 10, 90, 90], [30, 5, 60, 70]])]
    with torch.inference_mode():
        refined = refine_mask_logits(heads, features, boxes, torch.tensor([1, 1, 1]), coarse, [(96, 96)])
    upsampled = F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False)
    assert refined.shape == (3, 1, 56, 56)
    assert torch.allclose(refined, upsampled, atol=1e-5)
    # a head that corrects: only the least certain cells change, by the correction
    with torch.no_grad():
        heads.point_head.predictor.bias[1] = 5.0
    with torch.inference_mode():
        corrected = refine_mask_logits(heads, features, boxes, torch.tensor([1, 1, 1]), coarse, [(96, 96)])
    changed = (corrected - upsampled).abs() > 1e-4
    assert changed.flatten(1).sum(1).tolist() == [SUBDIVISION_POINTS] * 3
    assert torch.allclose((corrected - upsampled)[changed], torch.tensor(5.0), atol=1e-4)
    for up, ch in zip(upsampled, changed, strict=True):  # each mask's least certain cells
        assert up[ch].abs().max() <= up[~ch].abs().min() + 1e-6


def test_the_point_loss_trains_the_point_head_and_the_features_not_the_coarse_head():
    model = _point_model().train()
    with torch.no_grad():  # its last layer starts at zero, which passes no gradient back until it has learned
        torch.nn.init.normal_(model.roi_heads.point_head.predictor.weight, std=0.01)
    losses = model(*_batch())
    assert POINT_LOSS in losses and BOUNDARY_LOSS not in losses and losses[POINT_LOSS].item() > 0
    model.zero_grad()
    losses[POINT_LOSS].backward()
    rh = model.roi_heads
    assert rh.point_head.predictor.weight.grad.abs().sum() > 0
    assert model.backbone.fpn.layer_blocks[0][0].weight.grad.abs().sum() > 0  # the stride-4 level
    assert rh.mask_predictor.mask_fcn_logits.weight.grad is None  # the coarse logits enter detached


def test_a_point_model_serves_masks_from_the_same_path_in_every_forward():
    from shoeseg.inference import detect

    model = _point_model(mask_boundary_weight=1.0)
    with torch.no_grad():  # a head that corrects, so that refined masks differ from upsampled ones
        torch.nn.init.normal_(model.roi_heads.point_head.predictor.weight, std=0.5)
        model.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([-4.0, 4.0]))
    model.eval()
    images = _batch()[0]
    with torch.inference_mode():
        direct = model(images)[0]
        batch, _ = model.transform(images)
        ours = detect(model, batch, [tuple(images[0].shape[-2:])])[0]
    assert len(direct["boxes"]) > 0 and direct["masks"].shape[-2:] == (96, 96)
    assert torch.equal(direct["boxes"], ours["boxes"])
    assert torch.allclose(direct["masks"], ours["masks"], atol=1e-5)


def test_checkpoints_warm_start_across_the_point_head_both_ways(tmp_path):
    from shoeseg.checkpoint import save_checkpoint

    plain = _point_model(steps=0)
    save_checkpoint(tmp_path / "plain.pt", model=plain, class_names=["shoe"])
    pointed = build_model(num_classes=1, weights=str(tmp_path / "plain.pt"), mask_point_steps=2,
                          min_size=96, max_size=96)
    assert model_config_of(pointed).mask_point_steps == 2
    assert torch.equal(pointed.roi_heads.point_head.predictor.weight, torch.zeros_like(pointed.roi_heads.point_head.predictor.weight))
    assert torch.equal(pointed.roi_heads.mask_head[0][0].weight, plain.roi_heads.mask_head[0][0].weight)
    save_checkpoint(tmp_path / "pointed.pt", model=pointed, class_names=["shoe"])
    back = build_model(num_classes=1, weights=str(tmp_path / "pointed.pt"), min_size=96, max_size=96)
    assert getattr(back.roi_heads, "point_head", None) is None and model_config_of(back).mask_point_steps == 0
    with pytest.raises(ValueError, match="mask_point_steps"):
        build_model(num_classes=1, weights=None, mask_point_steps=4)


def test_images_without_boxes_get_no_refined_masks_and_the_others_theirs():
    from shoeseg.heads import mask_probabilities

    model = _point_model().eval()
    images = [torch.rand(3, 96, 96), torch.rand(3, 80, 96)]
    with torch.inference_mode():
        batch, _ = model.transform(images)
        features = model.backbone(batch.tensors)
        for boxes in ([torch.zeros(0, 4), torch.zeros(0, 4)], [torch.tensor([[1.0, 1, 50, 50]]), torch.zeros(0, 4)]):
            labels = [torch.ones(len(b), dtype=torch.int64) for b in boxes]
            probs = mask_probabilities(model.roi_heads, features, boxes, labels, batch.image_sizes)
            assert [tuple(p.shape) for p in probs] == [(len(b), 1, 112, 112) for b in boxes]
        model.roi_heads.score_thresh = 1.0  # nothing detected
        assert [tuple(o["masks"].shape) for o in model(images)] == [(0, 1, 96, 96), (0, 1, 80, 96)]
