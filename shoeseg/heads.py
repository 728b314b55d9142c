"""A boundary term for the mask loss: Mask R-CNN's RoI heads that also learn where a shoe's outline runs.

The mask head's per-pixel cross-entropy (``loss_mask``) weighs every pixel of the RoI alike; the few pixels
along the outline, which decide whether an annotator keeps a pre-label, are a small share of them. With
``mask_boundary_weight > 0`` the heads add ``loss_mask_boundary``: one minus the Dice overlap between the
outline band of the predicted mask and that of the target, both taken as a morphological gradient (3x3
dilation minus erosion) of the mask at the head's resolution, the prediction's on its probabilities so that
the term has a gradient. It is zero when the outlines coincide and grows with every pixel the predicted edge
is off, whatever the size of the shoe.

Only training changes; inference, the weights and the exported graphs are those of torchvision's RoI heads.
The term is computed from what torchvision's heads already produce for the positive proposals (their boxes
and mask logits, read with forward hooks), each matched again to the target box it overlaps most, as
torchvision's matcher did for proposals at IoU >= 0.5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads, project_masks_on_boxes
from torchvision.ops import box_iou

#: The loss's name in loss dicts, logs and metrics files (beside detectron2's names).
BOUNDARY_LOSS = "loss_mask_boundary"


def outline_band(masks: Tensor) -> Tensor:
    """The morphological gradient of ``masks`` (N x M x M, values in [0, 1]): 3x3 dilation minus erosion,
    1 on the pixels next to the outline of a binary mask and soft for probabilities.

    Example:
        >>> m = torch.zeros(1, 6, 6); m[0, 1:5, 1:5] = 1
        >>> int(outline_band(m).sum())  # a 2-pixel-wide ring around the square's edge
        32
    """
    x = masks[:, None]
    dilated = F.max_pool2d(x, 3, stride=1, padding=1)
    eroded = -F.max_pool2d(-x, 3, stride=1, padding=1)
    return (dilated - eroded)[:, 0]


def boundary_dice_loss(mask_logits: Tensor, targets: Tensor, eps: float = 1.0) -> Tensor:
    """Mean over RoIs of 1 - Dice(outline band of sigmoid(logits), outline band of targets); N x M x M each."""
    pred = outline_band(mask_logits.sigmoid())
    true = outline_band(targets.clamp(0, 1))
    inter = (pred * true).flatten(1).sum(1)
    total = pred.flatten(1).sum(1) + true.flatten(1).sum(1)
    return (1 - (2 * inter + eps) / (total + eps)).mean()


class BoundaryRoIHeads(RoIHeads):
    """torchvision's :class:`RoIHeads` whose training losses include :data:`BOUNDARY_LOSS`, weighted by
    ``mask_boundary_weight`` (set by :func:`with_boundary_loss`)."""

    mask_boundary_weight: float = 0.0

    def forward(self, features, proposals, image_shapes, targets=None):  # noqa: D102 - RoIHeads' signature
        if not (self.training and self.mask_boundary_weight > 0 and self.has_mask() and targets):
            return super().forward(features, proposals, image_shapes, targets)
        seen: dict[str, object] = {}
        hooks = [
            self.mask_roi_pool.register_forward_hook(lambda _m, args, _out: seen.update(boxes=args[1])),
            self.mask_predictor.register_forward_hook(lambda _m, _args, out: seen.update(logits=out)),
        ]
        try:
            result, losses = super().forward(features, proposals, image_shapes, targets)
        finally:
            for h in hooks:
                h.remove()
        boxes: list[Tensor] = seen["boxes"]  # type: ignore[assignment]
        logits: Tensor = seen["logits"]  # type: ignore[assignment]
        losses[BOUNDARY_LOSS] = self.mask_boundary_weight * self._boundary_loss(boxes, logits, targets)
        return result, losses

    @staticmethod
    def _boundary_loss(boxes: list[Tensor], logits: Tensor, targets: list[dict[str, Tensor]]) -> Tensor:
        side = logits.shape[-1]
        chosen, projected = [], []
        start = 0
        for b, t in zip(boxes, targets, strict=True):
            if len(b) and len(t["boxes"]):
                matched = box_iou(b, t["boxes"]).argmax(dim=1)
                projected.append(project_masks_on_boxes(t["masks"], b, matched, side))
                rows = torch.arange(start, start + len(b), device=logits.device)
                chosen.append(logits[rows, t["labels"][matched]])
            start += len(b)
        if not chosen:
            return logits.sum() * 0  # no positive RoI: a zero that keeps the graph
        return boundary_dice_loss(torch.cat(chosen), torch.cat(projected))


def with_boundary_loss(heads: RoIHeads, weight: float) -> RoIHeads:
    """``heads`` (a torchvision :class:`RoIHeads`) adding the boundary term with ``weight`` while training;
    the same object, its class narrowed to :class:`BoundaryRoIHeads` (no weights change, none are added)."""
    heads.__class__ = BoundaryRoIHeads
    heads.mask_boundary_weight = float(weight)
    return heads


__all__ = ["BOUNDARY_LOSS", "BoundaryRoIHeads", "boundary_dice_loss", "outline_band", "with_boundary_loss"]
