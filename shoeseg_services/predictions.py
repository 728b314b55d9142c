"""The one prediction pipeline, whoever predicts (the backend's ``/predict`` or the worker's push).

The steps both services run, in this order, each in one place:

1. :func:`task_images`: which images of a task are predicted (those a control is bound to), with their URLs;
2. the shared fetcher (:mod:`shoeseg_services.fetch`) reads and decodes each at the model's input size;
3. :meth:`PredictionWriter.candidates`: the model's candidates for a batch of images (and of their mirror
   images when the task score needs them);
4. :meth:`PredictionWriter.write_view`: one image's Label Studio result and task score, in the full image's
   coordinates; :func:`combine` and :func:`as_ls` make one task's prediction of its images.

What differs between the services stays with them, as their own arguments to these steps: the backend's
result cache, pixel budget and per-request errors; the worker's batches and bulk store.

A :class:`PredictionWriter` is made for one labeling config (``shoeseg_services.ls_config``), one model's class
names and one active-learning strategy. For each image it turns the model's candidates into

* the **result**: one region per detection at or above the score threshold, for every control bound to the
  image (``PolygonLabels``, ``RectangleLabels``, ``BrushLabels``), the model class mapped to the control's
  label by one rule (exact, case-insensitive, ``predicted_values``, or the only label of a one-class model);
  each region carries its own detection ``score``;
* the **task score**: the active-learning score of :func:`shoeseg.active_learning.detections_score`, computed
  from the candidates its strategy needs (lower = label first; the mask head runs on the faint candidates only
  for a strategy that compares masks, :func:`shoeseg.active_learning.candidates_needed`), which is what Label
  Studio's Data Manager sorts by.

Nothing here imports torch: detections are any objects with ``label``, ``score``, ``box_xyxy``, ``mask`` and
``polygons`` (``shoeseg.predict.Detection``), in the pixels of the image the model saw; ``scale_xy`` maps them to
the full-size image Label Studio shows.

Example:
    >>> writer = PredictionWriter(parse_label_config(xml), ["shoe"], strategy="least_confidence")  # doctest: +SKIP
    >>> p = writer.write(detections, image_name="image", width_px=640, height_px=480)  # doctest: +SKIP
    >>> p.as_ls(task_id=17, model_version="v3")  # doctest: +SKIP
    {'task': 17, 'result': [...], 'score': 0.93, 'model_version': 'v3'}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shoeseg.active_learning import (
    DEFAULT_STRATEGY,
    candidates_needed,
    check_strategy,
    detections_score,
    needs_flip,
)
from shoeseg_services.ls_config import ControlModel, LabelConfig, RegionSource


@dataclass(frozen=True)
class ImagePrediction:
    """What the model says of one image, as Label Studio stores it.

    Attributes:
        result: the Label Studio result regions.
        score: the active-learning task score, in ``[0, 1]`` (lower = more informative).
        region_scores: the detection score of each detection written (mapped to a label, over the threshold).
    """

    result: list[dict[str, Any]] = field(default_factory=list)
    score: float = 0.0
    region_scores: tuple[float, ...] = ()

    @property
    def mean_region_score(self) -> float | None:
        """How sure the model is of what it drew: the mean of :attr:`region_scores` (``None`` when it drew nothing)."""
        return float(np.mean(self.region_scores)) if self.region_scores else None


def combine(images: Sequence[ImagePrediction]) -> ImagePrediction:
    """One task's prediction from its images' (a task may show several): every region, the lowest score."""
    if len(images) == 1:
        return images[0]
    return ImagePrediction(
        result=[r for p in images for r in p.result],
        score=min((p.score for p in images), default=0.0),
        region_scores=tuple(s for p in images for s in p.region_scores),
    )


def task_images(config: LabelConfig, task: dict[str, Any]) -> list[tuple[Any, Any]]:
    """The images of a task that the model predicts into: ``(image, url)`` for every ``<Image>`` a control is
    bound to, by image name (the order both services write regions in); ``url`` is ``None`` when the task's data
    lacks the image's key (the fetcher then names the task)."""
    data = task.get("data") if isinstance(task, dict) else None
    data = data if isinstance(data, dict) else {}
    used = sorted({c.to_name for c in config.controls})
    return [(config.images[name], data.get(config.images[name].value_key)) for name in used]


def as_ls(prediction: ImagePrediction, *, task_id: Any, model_version: str) -> dict[str, Any]:
    """The prediction as Label Studio's import and ``/predict`` take it."""
    out: dict[str, Any] = {"result": prediction.result, "score": round(float(prediction.score), 4),
                           "model_version": model_version}
    if task_id is not None:
        out["task"] = int(task_id)
    return out


class PredictionWriter:
    """Writes predictions for one labeling config, one model's classes and one active-learning strategy.

    Args:
        config: the parsed labeling config.
        class_names: the model's class names (its label ids 1..N).
        strategy: the active-learning strategy of the task score (``shoeseg.active_learning.STRATEGIES``).
        score_thresh: detections below this score are not written as regions (they still count in the score).
    """

    def __init__(self, config: LabelConfig, class_names: Sequence[str], *, strategy: str = DEFAULT_STRATEGY,
                 score_thresh: float = 0.5):
        self.config = config
        self.class_names = list(class_names)
        self.strategy = check_strategy(strategy)
        self.score_thresh = float(score_thresh)

    @property
    def needs_flip(self) -> bool:
        """True when the task score needs the model's view of the mirror image too (``write(flipped=...)``)."""
        return needs_flip(self.strategy)

    def candidates(self, predictor: Any, arrays: Sequence[Any]) -> list[tuple[list, list | None]]:
        """The model's candidates for each image (what :func:`~shoeseg.active_learning.candidates_needed` asks),
        with those of its mirror image mapped back when the task score needs them (``None`` otherwise): one
        batched forward pass.

        The same as :meth:`forward`, then :meth:`candidates_from` (which a caller may run in another thread,
        beside the next batch's forward)."""
        return self.candidates_from(predictor, self.forward(predictor, arrays), arrays)

    def forward(self, predictor: Any, arrays: Sequence[Any]) -> list[Any]:
        """The model's half of :meth:`candidates`: its raw outputs for the images (and their mirror images when
        the task score needs them), ``predictor.batch_size`` at a time."""
        from shoeseg.predict import mirror_images

        images = list(arrays) + (mirror_images(arrays) if self.needs_flip else [])
        flip_tta = False if self.needs_flip else None  # flip TTA would make the two views agree by construction
        thresh, masks_from = candidates_needed(self.strategy, self.score_thresh,
                                               rescored=getattr(predictor, "mask_rescore", False))
        outputs: list[Any] = []
        for start in range(0, len(images), predictor.batch_size):
            outputs += predictor.forward_raw(images[start : start + predictor.batch_size], score_thresh=thresh,
                                             flip_tta=flip_tta, masks_from=masks_from)
        return outputs

    def candidates_from(self, predictor: Any, outputs: Sequence[Any], arrays: Sequence[Any]
                        ) -> list[tuple[list, list | None]]:
        """The rest of :meth:`candidates`: :meth:`forward`'s outputs as detections."""
        from shoeseg.predict import mirror_back, mirror_images

        thresh, _ = candidates_needed(self.strategy, self.score_thresh, rescored=getattr(predictor, "mask_rescore", False))
        # polygons only for what is shown (score >= score_thresh); the task score needs scores and masks only
        if self.needs_flip:
            dets = predictor.detections(outputs, list(arrays) + mirror_images(arrays), polygons_from=self.score_thresh,
                                        min_score=thresh)
            n = len(arrays)
            return list(zip(dets[:n], mirror_back(dets[n:], [a.shape[1] for a in arrays]), strict=True))
        return [(d, None) for d in predictor.detections(outputs, arrays, polygons_from=self.score_thresh,
                                                        min_score=thresh)]

    def write_view(self, detections: Sequence[Any], flipped: Sequence[Any] | None, *, image_name: str,
                   seen_hw: tuple[int, int], full_wh: tuple[int, int] | None, task_id: Any = None,
                   forced_label: str | None = None) -> ImagePrediction:
        """:meth:`write` for an image the model saw at ``seen_hw`` (height, width) and Label Studio shows at
        ``full_wh`` (width, height; ``None``: the same size)."""
        h, w = seen_hw
        full_w, full_h = full_wh or (w, h)
        return self.write(detections, image_name=image_name, width_px=full_w, height_px=full_h,
                          scale_xy=(full_w / w, full_h / h), flipped=flipped, task_id=task_id,
                          forced_label=forced_label)

    def label(self, control: ControlModel, class_name: str, forced: str | None = None) -> str | None:
        """The control's label for a model class (``forced``: the label of a rectangle the annotator drew)."""
        if forced is not None and forced in control.labels:
            return forced
        return control.label_for(class_name, self.class_names)

    def write(self, detections: Sequence[Any], *, image_name: str, width_px: int, height_px: int,
              scale_xy: tuple[float, float] = (1.0, 1.0), flipped: Sequence[Any] | None = None,
              task_id: Any = None, forced_label: str | None = None) -> ImagePrediction:
        """The prediction of one image.

        Args:
            detections: the model's candidates (as :meth:`candidates` gives them).
            image_name: the ``<Image name=...>`` the image fills.
            width_px / height_px: the full size of the image, as Label Studio shows it.
            scale_xy: full size over the size the model saw (detections are in the latter's pixels).
            flipped: the candidates on the mirror image, mapped back (for ``flip_consistency``).
            task_id: the task (seeds the ``random`` strategy).
            forced_label: the label of the rectangle the annotator drew, when predicting inside it.
        """
        sx, sy = scale_xy
        controls = self.config.controls_for(image_name)
        shown = [d for d in detections if float(d.score) >= self.score_thresh]
        result: list[dict[str, Any]] = []
        for control in controls:
            sources = []
            for d in shown:
                label = self.label(control, d.label, forced_label)
                if label is None:
                    continue
                x1, y1, x2, y2 = d.box_xyxy
                sources.append(RegionSource(
                    label=label, score=float(d.score), box_xyxy=(x1 * sx, y1 * sy, x2 * sx, y2 * sy),
                    mask=d.mask if control.needs_mask else None,
                    polygons=tuple(np.asarray(p, float) * (sx, sy) for p in d.polygons),
                ))
            result.extend(control.results(sources, width_px=width_px, height_px=height_px))
        for k, region in enumerate(result):  # stable ids: the same prediction reads the same from either writer
            region["id"] = f"{image_name}-{k + 1}"
        region_scores = tuple(float(d.score) for d in shown
                              if any(self.label(c, d.label, forced_label) for c in controls))
        score = detections_score(self.strategy, detections, flipped=flipped, task_id=task_id)
        return ImagePrediction(result=result, score=score, region_scores=region_scores)
