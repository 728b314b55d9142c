"""Mask R-CNN's inference after the resize, with the mask head run only where a mask is needed.

torchvision's ``RoIHeads`` runs the mask head on every detection over the box score threshold and pastes each
mask into the image at full size. A caller that shows detections from 0.5 up but also wants the fainter
candidates' scores (an active-learning score over candidates down to 0.05) would pay the mask head and the
paste for every faint one. :func:`detect` runs the same parts in the same order (box head, class-wise NMS,
mask head, paste) with one more argument, ``masks_from``: boxes, labels and scores of every detection at or
above ``score_thresh``, masks only for those at or above ``masks_from``. Detections are sorted by score, so the
masks belong to the first ``len(masks)`` detections.

The one path of the PyTorch predictor (:class:`shoeseg.predict.Predictor`) and of the exported graph
(:class:`shoeseg.export.ServingGraph`, where both thresholds are inputs of the file); with ``masks_from`` at or
below ``score_thresh`` it gives what ``model(images)`` gives.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.transform import resize_boxes

from shoeseg.heads import mask_probabilities


def detect(model: torch.nn.Module, batch, original_sizes: Sequence[tuple[int, int]],
           masks_from: Tensor | float | None = None) -> list[dict[str, Tensor]]:
    """The detections of a resized, batched input (torchvision's ``ImageList``), in the original images' pixels.

    The box score threshold is the model's ``roi_heads.score_thresh`` (a caller sets it, as a float or, when
    tracing, a tensor); ``masks_from`` (``None``: every detection) limits the mask head to detections scoring
    at least that.

    Returns:
        One dict per image, as ``model(images)`` gives it: ``boxes`` ``(N, 4)``, ``labels`` ``(N,)``, ``scores``
        ``(N,)`` highest first, and ``masks`` ``(K, 1, H, W)`` probabilities of the first ``K <= N`` detections
        (those scoring at least ``masks_from``).
    """
    heads = model.roi_heads
    sizes = batch.image_sizes
    features = model.backbone(batch.tensors)
    proposals, _ = model.rpn(batch, features)
    box_features = heads.box_head(heads.box_roi_pool(features, proposals, sizes))
    class_logits, box_regression = heads.box_predictor(box_features)
    boxes, scores, labels = heads.postprocess_detections(class_logits, box_regression, proposals, sizes)
    if masks_from is None:
        mask_boxes, mask_labels = boxes, labels
    else:
        keep = [s >= masks_from for s in scores]
        mask_boxes = [b[k] for b, k in zip(boxes, keep, strict=True)]
        mask_labels = [lab[k] for lab, k in zip(labels, keep, strict=True)]
    probs = mask_probabilities(heads, features, mask_boxes, mask_labels, sizes)
    out = []
    for b, s, lab, mb, p, size, original in zip(boxes, scores, labels, mask_boxes, probs, sizes, original_sizes,
                                                 strict=True):
        out.append({"boxes": resize_boxes(b, size, original), "labels": lab, "scores": s,
                    "masks": paste_masks_in_image(p, resize_boxes(mb, size, original), original)})
    return out
