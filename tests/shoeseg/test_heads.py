"""The boundary term of the mask loss (shoeseg.heads) on masks with known outlines."""

from __future__ import annotations

import pytest
import torch

from shoeseg.heads import BOUNDARY_LOSS, BoundaryRoIHeads, boundary_dice_loss, outline_band
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
    assert isinstance(model.roi_heads, BoundaryRoIHeads) and model_config_of(model).mask_boundary_weight == 2.0
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
    assert not isinstance(model.roi_heads, BoundaryRoIHeads)
    model.train()
    assert BOUNDARY_LOSS not in model(*_batch())
    with pytest.raises(ValueError, match="mask_boundary_weight"):
        build_model(num_classes=1, weights=None, mask_boundary_weight=-1)
