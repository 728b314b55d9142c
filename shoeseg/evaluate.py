"""Evaluation: COCO box and mask AP (pycocotools), the study's loss table and the annotator's numbers
(:mod:`shoeseg.edits`, at the serving score threshold) on the same images.

AP values are fractions in ``[0, 1]`` as pycocotools computes them (detectron2 prints them times 100);
``None`` where there is nothing to measure (no ground truth). Losses are torchvision's training losses under
detectron2's names, averaged over the images, computed without updating the model (batch-norm statistics
kept, sampling seeded).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shoeseg.data import eval_transforms, load_image_and_target, to_tensor_image
from shoeseg.edits import (
    AnnotatorNumbers,
    ImageMeasure,
    ThresholdChoice,
    annotator_numbers,
    choose_score_thresh,
    measure_image,
)
from shoeseg.geometry import mask_iou_matrix
from via_tools.coco import rle_encode
from via_tools.model import AnnotationSet

log = logging.getLogger(__name__)

METRIC_KEYS = ("bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", "segm_AP50", "segm_AP75")
#: Score threshold for AP: keep nearly everything (detectron2's ``SCORE_THRESH_TEST`` for evaluation).
EVAL_SCORE_THRESH = 0.05


@dataclass
class EvalResult:
    """Evaluation numbers.

    Attributes:
        metrics: ``bbox_AP``, ``bbox_AP50``, ``bbox_AP75``, ``segm_AP``, ``segm_AP50``, ``segm_AP75``.
        losses: detectron2-named losses averaged over the images (empty when no model was available).
        per_image: per image: file name, truth and detection counts, best mask IoU per true instance, losses.
        n_images / n_instances: what was evaluated.
        annotator: the annotator's numbers at the serving score threshold (:mod:`shoeseg.edits`).
        score_choice: the serving threshold chosen on these images and its edit-cost curve, when asked for.
        measures: per image, the IoUs and vertices to drag of every detection down to 0.05
            (:func:`shoeseg.edits.measure_image`), from which the numbers at any threshold follow; not in
            :meth:`to_json`.
    """

    metrics: dict[str, float | None]
    losses: dict[str, float] = field(default_factory=dict)
    per_image: list[dict[str, Any]] = field(default_factory=list)
    n_images: int = 0
    n_instances: int = 0
    annotator: AnnotatorNumbers | None = None
    score_choice: ThresholdChoice | None = None
    measures: list[ImageMeasure] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (``json.dumps`` it to write a file)."""
        return {"metrics": self.metrics, "losses": self.losses, "n_images": self.n_images,
                "n_instances": self.n_instances,
                "annotator": self.annotator.to_json() if self.annotator is not None else None,
                "score_choice": self.score_choice.to_json() if self.score_choice is not None else None,
                "per_image": self.per_image}

    def table(self) -> str:
        """The AP table and the loss table as text."""
        def fmt(v: float | None) -> str:
            return "   n/a" if v is None else f"{v:6.3f}"

        lines = [f"{self.n_images} images, {self.n_instances} instances",
                 "         AP   AP50   AP75",
                 f"bbox {fmt(self.metrics.get('bbox_AP'))} {fmt(self.metrics.get('bbox_AP50'))} "
                 f"{fmt(self.metrics.get('bbox_AP75'))}",
                 f"segm {fmt(self.metrics.get('segm_AP'))} {fmt(self.metrics.get('segm_AP50'))} "
                 f"{fmt(self.metrics.get('segm_AP75'))}"]
        if self.losses:
            lines.append("")
            lines.append("  ".join(f"{k:>12}" for k in self.losses))
            lines.append("  ".join(f"{v:12.4f}" for v in self.losses.values()))
        if self.annotator is not None:
            lines += ["", self.annotator.table()]
        if self.score_choice is not None:
            lines.append(f"  (score threshold {self.score_choice.score_thresh:g} chosen on these images)")
        return "\n".join(lines)


def _coco_stats(gt: dict[str, Any], dets: list[dict[str, Any]], iou_type: str) -> tuple[float | None, float | None, float | None]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not gt["annotations"]:
        return None, None, None
    if not dets:
        return 0.0, 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()

    def clean(v: float) -> float | None:
        return None if v < 0 else float(v)

    return clean(ev.stats[0]), clean(ev.stats[1]), clean(ev.stats[2])


def coco_metrics(
    truth: Sequence[dict[str, Any]],
    detections: Sequence[Sequence[Any]],
    *,
    class_names: Sequence[str],
) -> dict[str, float | None]:
    """COCO box and mask AP / AP50 / AP75 of detections against the truth.

    Args:
        truth: one dict per image: ``height_px``, ``width_px``, ``masks`` (bool ``(N, H, W)``),
            ``boxes_xyxy`` (``(N, 4)``), ``labels`` (class names).
        detections: one list per image of objects with ``label``, ``score``, ``box_xyxy``, ``mask``.
        class_names: the classes.

    Example:
        >>> coco_metrics([truth], [[det]], class_names=["shoe"])["segm_AP50"]  # doctest: +SKIP
        1.0
    """
    if len(truth) != len(detections):
        raise ValueError(f"{len(truth)} images of truth but {len(detections)} lists of detections")
    cat = {c: i + 1 for i, c in enumerate(class_names)}
    gt = {"images": [], "annotations": [], "categories": [{"id": i, "name": c} for c, i in cat.items()]}
    dets_box, dets_segm = [], []
    ann_id = 0
    for img_id, (t, dets) in enumerate(zip(truth, detections, strict=True), start=1):
        gt["images"].append({"id": img_id, "height": int(t["height_px"]), "width": int(t["width_px"])})
        for mask, box, label in zip(t["masks"], t["boxes_xyxy"], t["labels"], strict=True):
            ann_id += 1
            x1, y1, x2, y2 = (float(v) for v in box)
            gt["annotations"].append({
                "id": ann_id, "image_id": img_id, "category_id": cat[label], "iscrowd": 0,
                "area": float(np.count_nonzero(mask)), "bbox": [x1, y1, x2 - x1, y2 - y1],
                "segmentation": rle_encode(mask, compressed=True),
            })
        for d in dets:
            if d.label not in cat:
                continue
            x1, y1, x2, y2 = (float(v) for v in d.box_xyxy)
            common = {"image_id": img_id, "category_id": cat[d.label], "score": float(d.score)}
            dets_box.append({**common, "bbox": [x1, y1, x2 - x1, y2 - y1]})
            dets_segm.append({**common, "segmentation": rle_encode(d.mask, compressed=True)})
    b = _coco_stats(gt, dets_box, "bbox")
    s = _coco_stats(gt, dets_segm, "segm")
    return dict(zip(METRIC_KEYS, (*b, *s), strict=True))


def _as_predictor(model_or_predictor: Any, dataset: AnnotationSet, device: str):
    from shoeseg.predict import Predictor

    if isinstance(model_or_predictor, Predictor):
        return model_or_predictor
    if isinstance(model_or_predictor, str | Path):
        from shoeseg.runtime import load_predictor

        return load_predictor(model_or_predictor, runtime="torch", device=device, score_thresh=EVAL_SCORE_THRESH)
    if isinstance(model_or_predictor, nn.Module):
        return Predictor(model_or_predictor, class_names=list(dataset.labels), device=device,
                         score_thresh=EVAL_SCORE_THRESH)
    if hasattr(model_or_predictor, "model") and hasattr(model_or_predictor, "class_names") and hasattr(
            model_or_predictor, "version"):  # a loaded Checkpoint
        return Predictor(model_or_predictor.model, class_names=model_or_predictor.class_names,
                         model_version=model_or_predictor.version, device=device, score_thresh=EVAL_SCORE_THRESH)
    return model_or_predictor  # anything with predict(images, score_thresh=...) and class_names


@torch.no_grad()
def _losses_for(model: nn.Module, image: np.ndarray, target: dict[str, torch.Tensor], device: torch.device) -> dict[str, float]:
    from shoeseg.losses import detectron2_losses

    cfg_min = int(model.transform.min_size[-1])
    tensor, target = eval_transforms(min_size=cfg_min, max_size=int(model.transform.max_size))(
        to_tensor_image(image), target)
    target = {k: v.to(device) for k, v in target.items()}
    was_training = model.training
    bn_modes = []
    model.train()
    for m in model.modules():  # keep batch-norm statistics as they are
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            bn_modes.append(m)
            m.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            loss_dict = model([tensor.to(device)], [target])
    finally:
        model.train(was_training)
    return detectron2_losses(loss_dict)


def evaluate(
    model_or_predictor: Any,
    dataset: AnnotationSet,
    *,
    images_dir: str | Path,
    device: str = "auto",
    with_losses: bool = True,
    iou_report_thresh: float = 0.5,
    progress_bar: bool = False,
    per_image_ap: bool = False,
    serve_score_thresh: float | None = None,
    choose_serve_thresh: bool = False,
) -> EvalResult:
    """Evaluates a model on annotated images: COCO AP (boxes and masks) and the loss table.

    Args:
        model_or_predictor: a :class:`shoeseg.predict.Predictor`, a checkpoint path, a loaded checkpoint, or a
            model (classes then taken from ``dataset.labels``).
        dataset: the images and their truth (images at ``images_dir / file_name``).
        images_dir: the image folder.
        device: for a model or checkpoint path.
        with_losses: also compute the training losses on these images.
        iou_report_thresh: per-image detections at or above this score are counted in ``per_image``.
        progress_bar: show a tqdm bar.
        per_image_ap: also give each ``per_image`` row its own mask AP (``segm_AP``, ``None`` for an image
            without truth): the paired per-image comparison of two versions (:mod:`shoeseg.gate`) needs it.
        serve_score_thresh: the score threshold of the annotator's numbers (:mod:`shoeseg.edits`); by default
            the checkpoint's (``checkpoint_score_thresh`` of a predictor from
            :meth:`~shoeseg.predict.Predictor.from_checkpoint`), else 0.5. Detections come at 0.05, so
            thresholds below that see no more than those.
        choose_serve_thresh: choose the threshold with the least edit cost on these images
            (:func:`shoeseg.edits.choose_score_thresh`, in ``score_choice``) and give the numbers at it.

    Example:
        >>> res = evaluate("runs/shoes/model.pt", val_set, images_dir="images")  # doctest: +SKIP
        >>> print(res.table())  # doctest: +SKIP
    """
    predictor = _as_predictor(model_or_predictor, dataset, device)
    class_names = list(predictor.class_names)
    model = getattr(predictor, "model", None)
    torch_device = getattr(predictor, "device", torch.device("cpu"))
    truth, all_dets, per_image, measures = [], [], [], []
    loss_rows: list[dict[str, float]] = []
    records = list(dataset.images)
    if progress_bar:
        from tqdm import tqdm

        records = tqdm(records, desc="eval", unit="img")
    for index, record in enumerate(records):
        image, target = load_image_and_target(record, images_dir=images_dir, class_names=class_names, index=index)
        h, w = image.shape[:2]
        masks = target["masks"].numpy().astype(bool)
        labels = [class_names[int(i) - 1] for i in target["labels"]]
        truth.append({"height_px": h, "width_px": w, "masks": masks, "boxes_xyxy": target["boxes"].numpy(),
                      "labels": labels})
        dets = predictor.predict([image], score_thresh=EVAL_SCORE_THRESH)[0]
        all_dets.append(dets)
        measures.append(measure_image(masks, [d.mask for d in dets], [d.polygons for d in dets],
                                      [d.score for d in dets], true_labels=labels, pred_labels=[d.label for d in dets]))
        confident = [d for d in dets if d.score >= iou_report_thresh]
        ious = mask_iou_matrix(masks, [d.mask for d in confident]) if len(masks) and confident else None
        best = [float(v) for v in ious.max(axis=1)] if ious is not None else [0.0] * len(masks)
        row: dict[str, Any] = {"file_name": record.file_name, "n_truth": len(masks), "n_detections": len(confident),
                               "best_mask_iou": best, "mean_best_mask_iou": float(np.mean(best)) if best else None}
        if per_image_ap:
            row["segm_AP"] = coco_metrics([truth[-1]], [dets], class_names=class_names)["segm_AP"]
        if with_losses and model is not None and len(masks):
            losses = _losses_for(model, image, target, torch_device)
            loss_rows.append(losses)
            row["losses"] = losses
        per_image.append(row)
    metrics = coco_metrics(truth, all_dets, class_names=class_names)
    losses = {k: float(np.mean([r[k] for r in loss_rows])) for k in loss_rows[0]} if loss_rows else {}
    choice = choose_score_thresh(measures) if choose_serve_thresh else None
    if choice is not None:
        serve_score_thresh = choice.score_thresh
    elif serve_score_thresh is None:
        from shoeseg.predict import serving_score_thresh

        serve_score_thresh = serving_score_thresh(None, getattr(predictor, "checkpoint_score_thresh", None))
    return EvalResult(metrics=metrics, losses=losses, per_image=per_image, n_images=len(truth),
                      n_instances=sum(len(t["masks"]) for t in truth),
                      annotator=annotator_numbers(measures, serve_score_thresh), score_choice=choice,
                      measures=measures)
