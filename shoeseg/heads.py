"""Mask R-CNN's RoI heads that learn where a shoe's outline runs: a boundary term and a point head.

**The boundary term.** The mask head's per-pixel cross-entropy (``loss_mask``) weighs every pixel of the RoI
alike; the few pixels along the outline, which decide whether an annotator keeps a pre-label, are a small share
of them. With ``mask_boundary_weight > 0`` the heads add ``loss_mask_boundary``: one minus the Dice overlap
between the outline band of the predicted mask and that of the target, both taken as a morphological gradient
(3x3 dilation minus erosion) of the mask at the head's resolution, the prediction's on its probabilities so that
the term has a gradient. It is zero when the outlines coincide and grows with every pixel the predicted edge is
off, whatever the size of the shoe. Training only: inference and the weights are torchvision's.

**The point head** (``mask_point_steps > 0``), after PointRend (Kirillov et al., 2020): the 28x28 mask is
upsampled twice per step (28, 56, 112...), and at each step the points where it is least certain (logit nearest
0: the outline) are predicted again by a small per-point network (:class:`PointHead`) from the finest feature
map of the pyramid (stride 4) and the coarse logit at the point, so that the outline follows the image's detail
rather than a 28-pixel grid. The point head predicts a correction of the coarse logit (its last layer starts at
zero, so an untrained head gives the upsampled coarse mask). It is trained on points of each positive RoI drawn
as PointRend draws them: three times as many random points as used, the three quarters most uncertain under the
coarse mask kept, a quarter random (``loss_mask_point``: the cross-entropy at the points against the true mask
sampled there). Every inference path takes its masks from :func:`mask_probabilities`, with or without the head.

The extra terms are computed from what torchvision's heads already produce for the positive proposals (their
boxes and mask logits, read with forward hooks), each matched again to the target box it overlaps most, as
torchvision's matcher did for proposals at IoU >= 0.5.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference, project_masks_on_boxes
from torchvision.ops import box_iou

#: The losses' names in loss dicts, logs and metrics files (beside detectron2's names; PointRend's for the point).
BOUNDARY_LOSS = "loss_mask_boundary"
POINT_LOSS = "loss_mask_point"
#: The pyramid level the point head reads (stride 4 in every family), PointRend's ``IN_FEATURES`` ``p2``.
FINE_LEVEL = "0"
#: Points per positive RoI while training (PointRend's ``TRAIN_NUM_POINTS``), the random points drawn per
#: point used (``OVERSAMPLE_RATIO``) and the share of the used points chosen as the most uncertain
#: (``IMPORTANCE_SAMPLE_RATIO``).
TRAIN_POINTS = 14 * 14
OVERSAMPLE = 3
IMPORTANCE = 0.75
#: Points predicted again per detection at each subdivision step (``SUBDIVISION_NUM_POINTS``).
SUBDIVISION_POINTS = 28 * 28


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


def point_sample(maps: Tensor, uv: Tensor) -> Tensor:
    """``maps`` (N x C x H x W) read bilinearly at ``uv`` (N x K x 2, x then y, in [0, 1] of each map's extent):
    N x C x K. Past the outer cells' centres the border's value holds, as in a bilinear upsampling.

    Example:
        >>> m = torch.arange(4.0).view(1, 1, 2, 2)  # pixel centres at 0.25 and 0.75
        >>> point_sample(m, torch.tensor([[[0.25, 0.25], [0.75, 0.75], [0.5, 0.25]]])).tolist()
        [[[0.0, 3.0, 0.5]]]
    """
    grid = (2 * uv - 1)[:, :, None, :].to(maps.dtype)
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)[..., 0]


def level_scale(feature: Tensor, image_sizes: list[tuple[int, int]]) -> float:
    """The scale of a pyramid level against the input's pixels, as torchvision's ``MultiScaleRoIAlign`` infers
    it: the power of two nearest to the level's height over the largest input height."""
    tallest = max(int(h) for h, _ in image_sizes)
    return 2.0 ** round(math.log2(int(feature.shape[-2]) / tallest))


def boxes_points(boxes: Tensor, uv: Tensor) -> Tensor:
    """Points ``uv`` (P x K x 2, relative to each box) in the input's pixels, for ``boxes`` (P x 4, x1 y1 x2 y2)."""
    return boxes[:, None, :2] + uv * (boxes[:, None, 2:] - boxes[:, None, :2])


def fine_features(feature: Tensor, scale: float, boxes: list[Tensor], uv: Tensor) -> Tensor:
    """The pyramid level ``feature`` (B x C x Hf x Wf, ``scale`` of the input) at the points ``uv`` (P x K x 2)
    of the boxes (``boxes[i]``: image i's, P in all): P x C x K."""
    side = torch.tensor([feature.shape[-1], feature.shape[-2]], dtype=uv.dtype, device=uv.device)
    out, start = [], 0
    for i, b in enumerate(boxes):
        n = len(b)
        xy = boxes_points(b.to(uv.dtype), uv[start:start + n]) * scale / side  # in [0, 1] of the feature map
        read = point_sample(feature[i:i + 1], xy.reshape(1, -1, 2))  # 1 x C x (n K)
        out.append(read[0].reshape(feature.shape[1], n, uv.shape[1]).transpose(0, 1))
        start += n
    return torch.cat(out) if out else feature.new_zeros(0, feature.shape[1], uv.shape[1])


class PointHead(nn.Module):
    """PointRend's point head: per point, the fine features and the coarse logit through ``num_fc`` 1x1 layers
    of ``fc_dim`` channels (the coarse logit joined to each layer's input), a logit correction per class out.

    Args:
        in_channels: channels of the fine feature map.
        num_classes: output channels, one per class (background included, as torchvision's mask predictor).
    """

    def __init__(self, in_channels: int, num_classes: int, *, fc_dim: int = 256, num_fc: int = 3) -> None:
        super().__init__()
        self.fcs = nn.ModuleList()
        c = in_channels
        for _ in range(num_fc):
            self.fcs.append(nn.Conv1d(c + 1, fc_dim, 1))
            c = fc_dim
        self.predictor = nn.Conv1d(c + 1, num_classes, 1)
        for fc in self.fcs:
            nn.init.kaiming_normal_(fc.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(fc.bias)
        nn.init.zeros_(self.predictor.weight)  # no correction yet: an untrained head serves the coarse mask
        nn.init.zeros_(self.predictor.bias)

    def forward(self, fine: Tensor, coarse: Tensor) -> Tensor:
        """``fine`` P x C x K, ``coarse`` P x 1 x K (each RoI's class logit at its points): P x classes x K."""
        x = fine
        for fc in self.fcs:
            x = F.relu(fc(torch.cat([x, coarse.to(x.dtype)], dim=1)))
        return self.predictor(torch.cat([x, coarse.to(x.dtype)], dim=1))


def _point_logits(heads: RoIHeads, features: dict[str, Tensor], boxes: list[Tensor], labels: Tensor,
                  coarse: Tensor, uv: Tensor, image_sizes: list[tuple[int, int]]) -> Tensor:
    """The point head's logits of each RoI's class at its points ``uv``: the coarse logit plus the correction
    (P x K)."""
    fine_map = features[FINE_LEVEL]
    fine = fine_features(fine_map, level_scale(fine_map, image_sizes), boxes, uv)
    at_points = point_sample(coarse, uv)  # P x 1 x K
    correction = heads.point_head(fine, at_points)
    rows = torch.arange(len(labels), device=labels.device)
    return at_points[:, 0].to(correction.dtype) + correction[rows, labels]


def refine_mask_logits(heads: RoIHeads, features: dict[str, Tensor], boxes: list[Tensor], labels: Tensor,
                       coarse: Tensor, image_sizes: list[tuple[int, int]]) -> Tensor:
    """PointRend's subdivision: ``coarse`` (P x 1 x M x M, each box's class logit) upsampled twice per step of
    ``heads.mask_point_steps``, its :data:`SUBDIVISION_POINTS` least certain cells predicted again by the point
    head at each step: P x 1 x (M 2^steps) x (M 2^steps)."""
    logits = coarse
    for _ in range(int(heads.mask_point_steps)):
        logits = F.interpolate(logits, scale_factor=2, mode="bilinear", align_corners=False)
        side = logits.shape[-1]
        flat = logits.flatten(1)
        idx = (-flat.abs()).topk(min(SUBDIVISION_POINTS, side * side), dim=1).indices  # the least certain cells
        uv = torch.stack([idx % side, torch.div(idx, side, rounding_mode="floor")], dim=-1).float()
        uv = (uv + 0.5) / side  # cell centres, in float32 also under autocast (pixel coordinates to come)
        new = _point_logits(heads, features, boxes, labels, coarse, uv, image_sizes)
        logits = flat.scatter(1, idx, new.to(flat.dtype)).view_as(logits)
    return logits


def mask_probabilities(heads: RoIHeads, features: dict[str, Tensor], boxes: list[Tensor], labels: list[Tensor],
                       image_sizes: list[tuple[int, int]]) -> list[Tensor]:
    """The mask head's probabilities for ``boxes`` (one tensor per image, in the resized input's pixels) of the
    classes ``labels``: one ``N x 1 x M x M`` tensor per image, as torchvision's ``maskrcnn_inference`` gives
    them, refined by the point head when the heads have one (M is then 28 x 2^steps). Every inference path
    (:func:`shoeseg.inference.detect`, flip TTA, a mask in a given box) takes its masks from here."""
    logits = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(features, boxes, image_sizes)))
    if getattr(heads, "point_head", None) is None or int(getattr(heads, "mask_point_steps", 0)) < 1:
        return list(maskrcnn_inference(logits, labels))
    flat_labels = torch.cat(labels)
    chosen = logits[torch.arange(len(flat_labels), device=logits.device), flat_labels][:, None]
    probs = refine_mask_logits(heads, features, boxes, flat_labels, chosen, image_sizes).sigmoid()
    return list(probs.split([len(b) for b in boxes], dim=0))


def training_points(coarse: Tensor, n: int = TRAIN_POINTS) -> Tensor:
    """PointRend's points for training (P x n x 2 in [0, 1]) given each RoI's coarse logits (P x 1 x M x M):
    :data:`OVERSAMPLE` times ``n`` uniform points, the :data:`IMPORTANCE` share of ``n`` that are least certain
    under the coarse mask, and the rest uniform."""
    p = coarse.shape[0]
    drawn = torch.rand(p, OVERSAMPLE * n, 2, device=coarse.device, dtype=coarse.dtype)
    uncertain = int(IMPORTANCE * n)
    idx = (-point_sample(coarse, drawn)[:, 0].abs()).topk(uncertain, dim=1).indices
    chosen = drawn.gather(1, idx[..., None].expand(-1, -1, 2))
    rest = torch.rand(p, n - uncertain, 2, device=coarse.device, dtype=coarse.dtype)
    return torch.cat([chosen, rest], dim=1)


class OutlineRoIHeads(RoIHeads):
    """torchvision's :class:`RoIHeads` whose training losses include :data:`BOUNDARY_LOSS` (weighted by
    ``mask_boundary_weight``) and, with a ``point_head``, :data:`POINT_LOSS`; whose masks at inference are
    refined by the point head for ``mask_point_steps`` steps (set by :func:`with_outline_heads`)."""

    mask_boundary_weight: float = 0.0
    mask_point_steps: int = 0

    def forward(self, features, proposals, image_shapes, targets=None):  # noqa: D102 - RoIHeads' signature
        has_points = getattr(self, "point_head", None) is not None and self.mask_point_steps > 0
        if not self.training and has_points and self.has_mask():
            pool, self.mask_roi_pool = self.mask_roi_pool, None  # boxes from torchvision's heads, masks from ours
            try:
                result, losses = super().forward(features, proposals, image_shapes, targets)
            finally:
                self.mask_roi_pool = pool
            probs = mask_probabilities(self, features, [r["boxes"] for r in result], [r["labels"] for r in result],
                                       image_shapes)
            for r, p in zip(result, probs, strict=True):
                r["masks"] = p
            return result, losses
        if not (self.training and (self.mask_boundary_weight > 0 or has_points) and self.has_mask() and targets):
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
        matched = self._matched(boxes, logits, targets)
        if self.mask_boundary_weight > 0:
            losses[BOUNDARY_LOSS] = self.mask_boundary_weight * self._boundary_loss(boxes, logits, matched, targets)
        if has_points:
            losses[POINT_LOSS] = self._point_loss(features, boxes, logits, matched, targets, image_shapes)
        return result, losses

    @staticmethod
    def _matched(boxes: list[Tensor], logits: Tensor, targets: list[dict[str, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        """Per image: the rows of ``logits`` of its positive RoIs and the target each overlaps most."""
        out, start = [], 0
        for b, t in zip(boxes, targets, strict=True):
            rows = torch.arange(start, start + len(b), device=logits.device)
            if len(b) and len(t["boxes"]):
                out.append((rows, box_iou(b, t["boxes"]).argmax(dim=1)))
            else:
                out.append((rows[:0], rows[:0]))
            start += len(b)
        return out

    @staticmethod
    def _boundary_loss(boxes: list[Tensor], logits: Tensor, matched: list[tuple[Tensor, Tensor]],
                       targets: list[dict[str, Tensor]]) -> Tensor:
        side = logits.shape[-1]
        chosen, projected = [], []
        for b, (rows, m), t in zip(boxes, matched, targets, strict=True):
            if len(rows):
                projected.append(project_masks_on_boxes(t["masks"], b, m, side))
                chosen.append(logits[rows, t["labels"][m]])
        if not chosen:
            return logits.sum() * 0  # no positive RoI: a zero that keeps the graph
        return boundary_dice_loss(torch.cat(chosen), torch.cat(projected))

    def _point_loss(self, features: dict[str, Tensor], boxes: list[Tensor], logits: Tensor,
                    matched: list[tuple[Tensor, Tensor]], targets: list[dict[str, Tensor]],
                    image_sizes: list[tuple[int, int]]) -> Tensor:
        kept_boxes, labels, coarse, truth = [], [], [], []
        for b, (rows, m), t in zip(boxes, matched, targets, strict=True):
            kept_boxes.append(b if len(rows) else b[:0])
            if not len(rows):
                continue
            lab = t["labels"][m]
            labels.append(lab)
            coarse.append(logits[rows, lab][:, None].detach())  # the coarse head learns from loss_mask alone
            truth.append((m, t["masks"]))
        if not labels:
            return sum(p.sum() for p in self.point_head.parameters()) * 0  # a zero that keeps the graph
        coarse_all = torch.cat(coarse).float()
        uv = training_points(coarse_all)
        predicted = _point_logits(self, features, kept_boxes, torch.cat(labels), coarse_all, uv, image_sizes)
        true, start = [], 0
        for b, (m, masks) in zip([b for b in kept_boxes if len(b)], truth, strict=True):
            n = len(m)
            h, w = masks.shape[-2:]
            xy = boxes_points(b.float(), uv[start:start + n]) / torch.tensor([w, h], dtype=uv.dtype, device=uv.device)
            true.append(point_sample(masks[m][:, None].to(uv.dtype), xy)[:, 0])
            start += n
        return F.binary_cross_entropy_with_logits(predicted.float(), torch.cat(true))


def with_outline_heads(heads: RoIHeads, *, boundary_weight: float = 0.0, point_steps: int = 0,
                       fine_channels: int = 256) -> RoIHeads:
    """``heads`` (a torchvision :class:`RoIHeads`) adding the boundary term with ``boundary_weight`` while
    training and, with ``point_steps > 0``, a fresh :class:`PointHead` on the ``fine_channels`` of the finest
    pyramid level; the same object, its class narrowed to :class:`OutlineRoIHeads`."""
    heads.__class__ = OutlineRoIHeads
    heads.mask_boundary_weight = float(boundary_weight)
    heads.mask_point_steps = int(point_steps)
    if point_steps > 0:
        classes = heads.mask_predictor.mask_fcn_logits.out_channels
        heads.point_head = PointHead(fine_channels, classes)
    return heads


__all__ = ["BOUNDARY_LOSS", "POINT_LOSS", "OutlineRoIHeads", "PointHead", "boundary_dice_loss", "mask_probabilities",
           "outline_band", "point_sample", "refine_mask_logits", "training_points", "with_outline_heads"]
