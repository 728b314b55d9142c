"""The annotator's numbers: what a person in Label Studio does to turn the pre-labels into the truth.

Mask AP ranks detections over all score thresholds; the annotator sees one threshold's polygons and edits them.
For a set of images, predictions against the truth at one score threshold:

* **Matching**, one to one, by mask IoU: a prediction is the pre-label a true shoe keeps when their IoU is at
  least ``match_iou`` (0.5); below that, the annotator would rather delete it and draw the shoe.
  The pairs are taken **greedily, highest IoU first** (ties: higher score first). At IoU >= 0.5 the greedy
  matching is the best one there is: a prediction cannot reach IoU > 0.5 with two true shoes that do not
  overlap (its overlap with each would exceed half its area), so the only contest is between several
  predictions of one shoe, and the greedy pass keeps the best of them, as the annotator would. The Hungarian
  matching would give the same pairs on non-overlapping truth, at more cost and one more dependency.
* **Shoes matched** and their share at IoU >= 0.5 / 0.75 / 0.85 / 0.9 (of all true shoes).
* **Missed** (to draw): true shoes with no matched prediction.
* **False positives** (to delete): predictions matched to no shoe: duplicates, the smaller half of a split,
  detections of something else.
* **Vertices per polygon**: of the served polygons (every part of every prediction), median and mean.
* **Vertices to drag**: vertices of a matched prediction's polygons farther from the true shoe's outline than
  the tolerance: ``drag_tolerance`` (2 %) of the true shoe's box diagonal, at least ``min_tolerance_px``
  (1 px, the grain of the masks). For a 300 x 200 px shoe that is 7.2 px. The outline is the true mask's
  outer boundary through its boundary pixels' centres, as :func:`shoeseg.geometry.mask_to_polygons` traces
  it, so a perfect prediction has nothing to drag. The distance is one-sided: a prediction cut short along a
  straight edge of the shoe has its corners on the outline and counts nothing to drag there (its IoU says it).
* **Edit cost**: a weighted sum of the actions, :class:`EditCosts`: a shoe to draw weighs 10 (drawing an
  outline is many clicks: the shared shoe photos' hand-drawn polygons have a median of 129 vertices), a
  prediction to delete 1, a vertex to drag 1.

:func:`choose_score_thresh` picks the score threshold with the least edit cost on validation images from
detections made at a low threshold; :func:`measure_image` does the costly part (IoUs, distances) once per
image so that any threshold's numbers then come cheaply (:meth:`ImageMeasure.at`).
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely

from shoeseg.geometry import mask_box_xyxy, mask_to_polygons

log = logging.getLogger(__name__)

#: Shares of true shoes matched at these IoUs are reported.
IOU_LEVELS = (0.5, 0.75, 0.85, 0.9)
#: A prediction is a shoe's pre-label at this IoU or more.
MATCH_IOU = 0.5
#: A vertex is off when farther than this fraction of the true box diagonal from the true outline.
DRAG_TOLERANCE = 0.02
#: ... and never closer than this many pixels.
MIN_TOLERANCE_PX = 1.0
#: The score thresholds :func:`choose_score_thresh` tries: 0.05, 0.10, ..., 0.95.
THRESH_CANDIDATES = tuple(round(0.05 * k, 2) for k in range(1, 20))
#: :func:`choose_score_thresh` leaves the usual threshold only for a saving of at least this many edit actions per
#: validation image. Chosen freely on a small project's 9 validation images, the threshold jumped between versions
#: (0.05 to 0.95) and cost more edits on unseen photos than a fixed 0.5 (27.1 against 26.2 per image over 10
#: versions); with this margin, 26.2 (docs/real-data.md, "The served threshold of the live loop's versions").
MIN_SAVING_PER_IMAGE = 2.0


@dataclass(frozen=True)
class EditCosts:
    """Weights of the edit actions in the edit cost.

    Args:
        draw: a missed shoe, drawn from scratch: about as many clicks as the product's polygon of it has
            vertices (measured on the shared shoes' 150 hand-drawn outlines, 153 vertices each on average: 31
            at the default vertex budget, median and mean, ``shoeseg.geometry.POLYGON_*``). It was 10, which
            made the threshold chooser drop found shoes whose outlines needed more than 10 drags, so that on
            held-out shoes it chose 0.95 and left 40 % of the shoes to draw (docs/real-data.md).
        delete: a false positive, deleted.
        drag: a vertex off the true outline, dragged onto it.
    """

    draw: float = 30.0
    delete: float = 1.0
    drag: float = 1.0


@dataclass
class ImageEdits:
    """The edits of one image at one score threshold.

    Attributes:
        n_truth / n_predictions: true shoes, and predictions at or above the threshold.
        matched_ious: the IoU of each matched pair, highest first.
        n_missed: true shoes without a match (to draw).
        n_false_positives: predictions without a match (to delete).
        polygon_vertices: vertices of each served polygon (every part of every prediction).
        n_to_drag: vertices of matched predictions off the true outline.
        n_matched_vertices: all vertices of matched predictions.
    """

    n_truth: int
    n_predictions: int
    matched_ious: list[float]
    n_missed: int
    n_false_positives: int
    polygon_vertices: list[int]
    n_to_drag: int
    n_matched_vertices: int

    def cost(self, costs: EditCosts = EditCosts()) -> float:
        """The weighted edit cost (see :class:`EditCosts`)."""
        return costs.draw * self.n_missed + costs.delete * self.n_false_positives + costs.drag * self.n_to_drag


@dataclass
class ImageMeasure:
    """What one image's edits at any score threshold need (from :func:`measure_image`).

    Attributes:
        scores: ``(P,)`` prediction scores.
        ious: ``(T, P)`` mask IoU of each true shoe with each prediction (0 between different labels).
        to_drag: ``(T, P)`` vertices of prediction ``p`` off true shoe ``t``'s outline (counted where the pair
            can match, 0 elsewhere).
        polygon_vertices: per prediction, the vertices of each of its polygons.
        match_iou: the IoU a match needs.
    """

    scores: np.ndarray
    ious: np.ndarray
    to_drag: np.ndarray
    polygon_vertices: list[list[int]]
    match_iou: float = MATCH_IOU

    def at(self, score_thresh: float = 0.0) -> ImageEdits:
        """The edits when only predictions scoring at least ``score_thresh`` are served."""
        kept = [p for p in range(len(self.scores)) if self.scores[p] >= score_thresh]
        n_truth = self.ious.shape[0]
        pairs = [(float(self.ious[t, p]), float(self.scores[p]), -p, t)
                 for t in range(n_truth) for p in kept if self.ious[t, p] >= self.match_iou]
        pairs.sort(reverse=True)
        free_truth, free_pred = set(range(n_truth)), set(kept)
        matched: list[tuple[int, int, float]] = []
        for iou, _, neg_p, t in pairs:
            if t in free_truth and -neg_p in free_pred:
                free_truth.discard(t)
                free_pred.discard(-neg_p)
                matched.append((t, -neg_p, iou))
        return ImageEdits(
            n_truth=n_truth,
            n_predictions=len(kept),
            matched_ious=[iou for _, _, iou in matched],
            n_missed=len(free_truth),
            n_false_positives=len(free_pred),
            polygon_vertices=[n for p in kept for n in self.polygon_vertices[p]],
            n_to_drag=int(sum(self.to_drag[t, p] for t, p, _ in matched)),
            n_matched_vertices=sum(sum(self.polygon_vertices[p]) for _, p, _ in matched),
        )


def _rles(masks: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    from pycocotools import mask as mask_utils

    return [mask_utils.encode(np.asfortranarray(np.asarray(m, dtype=np.uint8)[:, :, None]))[0] for m in masks]


def _iou_matrix(true_masks: Sequence[np.ndarray], pred_masks: Sequence[np.ndarray]) -> np.ndarray:
    # run-length encoded (pycocotools): no (P, H * W) float copy of low-threshold detections
    from pycocotools import mask as mask_utils

    if len(true_masks) == 0 or len(pred_masks) == 0:
        return np.zeros((len(true_masks), len(pred_masks)))
    ious = mask_utils.iou(_rles(pred_masks), _rles(true_masks), [0] * len(true_masks))
    return np.asarray(ious, dtype=np.float64).T


def _outline(mask: np.ndarray) -> shapely.Geometry | None:
    rings = [shapely.LinearRing(p) for p in mask_to_polygons(mask, tolerance_px=0.0, min_area_px=1.0)]
    return shapely.MultiLineString(rings) if rings else None


def tolerance_px(true_mask: np.ndarray, *, drag_tolerance: float = DRAG_TOLERANCE,
                 min_tolerance_px: float = MIN_TOLERANCE_PX) -> float:
    """How far a vertex may lie from this true shoe's outline: a share of its box diagonal, at least a floor.

    Example:
        >>> m = np.zeros((400, 400), bool); m[50:250, 50:350] = True
        >>> round(tolerance_px(m), 2)
        7.21
    """
    box = mask_box_xyxy(np.asarray(true_mask, bool))
    if box is None:
        return float(min_tolerance_px)
    diagonal = float(np.hypot(box[2] - box[0], box[3] - box[1]))
    return max(drag_tolerance * diagonal, float(min_tolerance_px))


def vertices_off_outline(polygons: Sequence[np.ndarray], true_mask: np.ndarray, *,
                         drag_tolerance: float = DRAG_TOLERANCE, min_tolerance_px: float = MIN_TOLERANCE_PX) -> int:
    """Vertices of ``polygons`` farther from ``true_mask``'s outline than :func:`tolerance_px` (to drag).

    Args:
        polygons: ``(N, 2)`` arrays of ``(x, y)`` pixels (a prediction's parts).
        true_mask: the true shoe, bool ``(H, W)``.
        drag_tolerance / min_tolerance_px: the tolerance (see :func:`tolerance_px`).
    """
    points = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polygons]
    points = [p for p in points if len(p)]
    if not points:
        return 0
    verts = np.concatenate(points)
    outline = _outline(np.asarray(true_mask, bool))
    if outline is None:
        return len(verts)
    distances = shapely.distance(shapely.points(verts), outline)
    tol = tolerance_px(true_mask, drag_tolerance=drag_tolerance, min_tolerance_px=min_tolerance_px)
    return int(np.count_nonzero(distances > tol))


def measure_image(
    true_masks: Sequence[np.ndarray] | np.ndarray,
    pred_masks: Sequence[np.ndarray] | np.ndarray,
    pred_polygons: Sequence[Sequence[np.ndarray]],
    scores: Sequence[float] | None = None,
    *,
    true_labels: Sequence[str] | None = None,
    pred_labels: Sequence[str] | None = None,
    match_iou: float = MATCH_IOU,
    drag_tolerance: float = DRAG_TOLERANCE,
    min_tolerance_px: float = MIN_TOLERANCE_PX,
) -> ImageMeasure:
    """The IoUs and the vertices to drag of one image's predictions (at a low threshold) against its truth.

    Args:
        true_masks: the true shoes, bool ``(H, W)`` each.
        pred_masks: the predicted masks, same size.
        pred_polygons: per prediction, the polygons served for it (``(N, 2)`` arrays of ``(x, y)`` pixels).
        scores: per prediction (default: all 1.0).
        true_labels / pred_labels: class names; a pair of different classes never matches (default: one class).
        match_iou: the IoU a match needs.
        drag_tolerance / min_tolerance_px: the vertex tolerance (see :func:`tolerance_px`).

    Example:
        >>> m = np.zeros((60, 60), bool); m[10:50, 20:40] = True
        >>> measure_image([m], [m], [mask_to_polygons(m)]).at(0.5).n_to_drag
        0
    """
    n_pred = len(pred_masks)
    if len(pred_polygons) != n_pred:
        raise ValueError(f"{n_pred} predicted masks but {len(pred_polygons)} lists of polygons")
    score_arr = np.ones(n_pred) if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(score_arr) != n_pred:
        raise ValueError(f"{n_pred} predicted masks but {len(score_arr)} scores")
    ious = _iou_matrix(true_masks, pred_masks)
    if true_labels is not None and pred_labels is not None:
        same = np.array([[a == b for b in pred_labels] for a in true_labels], dtype=bool).reshape(ious.shape)
        ious = np.where(same, ious, 0.0)
    to_drag = np.zeros(ious.shape, dtype=np.int64)
    for t, p in zip(*np.nonzero(ious >= match_iou), strict=True):
        to_drag[t, p] = vertices_off_outline(pred_polygons[p], true_masks[t], drag_tolerance=drag_tolerance,
                                             min_tolerance_px=min_tolerance_px)
    vertices = [[len(np.asarray(poly).reshape(-1, 2)) for poly in polys] for polys in pred_polygons]
    return ImageMeasure(scores=score_arr, ious=ious, to_drag=to_drag, polygon_vertices=vertices,
                        match_iou=match_iou)


def image_edits(
    true_masks: Sequence[np.ndarray] | np.ndarray,
    pred_masks: Sequence[np.ndarray] | np.ndarray,
    pred_polygons: Sequence[Sequence[np.ndarray]],
    scores: Sequence[float] | None = None,
    *,
    score_thresh: float = 0.0,
    **kwargs: Any,
) -> ImageEdits:
    """One image's edits at one score threshold (:func:`measure_image`, then :meth:`ImageMeasure.at`).

    Example:
        >>> m = np.zeros((60, 60), bool); m[10:50, 20:40] = True
        >>> e = image_edits([m], [m, m], [mask_to_polygons(m)] * 2, [0.9, 0.8])
        >>> e.matched_ious, e.n_missed, e.n_false_positives
        ([1.0], 0, 1)
    """
    return measure_image(true_masks, pred_masks, pred_polygons, scores, **kwargs).at(score_thresh)


@dataclass
class AnnotatorNumbers:
    """The annotator's numbers over a set of images at one score threshold (see the module's text).

    Attributes:
        score_thresh: predictions below it are not served.
        n_images / n_truth / n_predictions: what was measured.
        n_matched: true shoes with a pre-label to keep (IoU >= ``match_iou``).
        matched_share: share of true shoes matched at each IoU of :data:`IOU_LEVELS` (``None`` without truth).
        n_missed / n_false_positives / n_to_drag: shoes to draw, predictions to delete, vertices to drag.
        vertices_median / vertices_mean: vertices per served polygon (``None`` without polygons).
        n_polygons: served polygons.
        drag_share: vertices to drag among all vertices of matched predictions.
        edit_cost: the weighted sum of the actions (:class:`EditCosts`).
        match_iou / drag_tolerance / min_tolerance_px / costs: the settings.
    """

    score_thresh: float
    n_images: int = 0
    n_truth: int = 0
    n_predictions: int = 0
    n_matched: int = 0
    matched_share: dict[float, float | None] = field(default_factory=dict)
    n_missed: int = 0
    n_false_positives: int = 0
    n_to_drag: int = 0
    n_polygons: int = 0
    vertices_median: float | None = None
    vertices_mean: float | None = None
    drag_share: float | None = None
    edit_cost: float = 0.0
    match_iou: float = MATCH_IOU
    drag_tolerance: float = DRAG_TOLERANCE
    min_tolerance_px: float = MIN_TOLERANCE_PX
    costs: EditCosts = field(default_factory=EditCosts)

    def per_image(self, n: int | float) -> float | None:
        """``n`` per image (``None`` without images)."""
        return n / self.n_images if self.n_images else None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "score_thresh": self.score_thresh, "n_images": self.n_images, "n_truth": self.n_truth,
            "n_predictions": self.n_predictions, "n_matched": self.n_matched,
            "matched_share": {f"iou>={k:g}": v for k, v in self.matched_share.items()},
            "missed": self.n_missed, "missed_per_image": self.per_image(self.n_missed),
            "false_positives": self.n_false_positives,
            "false_positives_per_image": self.per_image(self.n_false_positives),
            "to_drag": self.n_to_drag, "to_drag_per_image": self.per_image(self.n_to_drag),
            "drag_share": self.drag_share, "n_polygons": self.n_polygons,
            "vertices_per_polygon": {"median": self.vertices_median, "mean": self.vertices_mean},
            "edit_cost": self.edit_cost, "edit_cost_per_image": self.per_image(self.edit_cost),
            "settings": {"match_iou": self.match_iou, "drag_tolerance": self.drag_tolerance,
                         "min_tolerance_px": self.min_tolerance_px,
                         "costs": {"draw": self.costs.draw, "delete": self.costs.delete, "drag": self.costs.drag}},
        }

    def table(self) -> str:
        """The numbers as text."""
        def fmt(v: float | None, spec: str = ".2f") -> str:
            return "n/a" if v is None else format(v, spec)

        shares = "  ".join(f"{k:g}: {fmt(v)}" for k, v in self.matched_share.items())
        return "\n".join([
            f"annotator at score >= {self.score_thresh:g}: {self.n_truth} shoes, {self.n_predictions} predictions",
            f"  matched (IoU >= {self.match_iou:g})  {self.n_matched} / {self.n_truth}",
            f"  share matched at IoU  {shares}",
            f"  missed (to draw)      {self.n_missed}  ({fmt(self.per_image(self.n_missed))} / image)",
            f"  false pos. (delete)   {self.n_false_positives}  "
            f"({fmt(self.per_image(self.n_false_positives))} / image)",
            f"  vertices / polygon    median {fmt(self.vertices_median, '.1f')}, mean {fmt(self.vertices_mean, '.1f')}"
            f" ({self.n_polygons} polygons)",
            f"  vertices to drag      {self.n_to_drag}  ({fmt(self.per_image(self.n_to_drag))} / image, "
            f"{fmt(None if self.drag_share is None else 100 * self.drag_share, '.0f')} % of matched vertices; "
            f"tolerance {self.drag_tolerance:.0%} of the shoe's diagonal)",
            f"  edit cost             {self.edit_cost:g}  ({fmt(self.per_image(self.edit_cost))} / image; draw "
            f"{self.costs.draw:g}, delete {self.costs.delete:g}, drag {self.costs.drag:g})",
        ])


def annotator_numbers(
    measures: Sequence[ImageMeasure],
    score_thresh: float,
    *,
    costs: EditCosts = EditCosts(),
    drag_tolerance: float = DRAG_TOLERANCE,
    min_tolerance_px: float = MIN_TOLERANCE_PX,
) -> AnnotatorNumbers:
    """The annotator's numbers over images at one score threshold.

    Args:
        measures: one :func:`measure_image` result per image.
        score_thresh: the serving threshold.
        costs: the weights of the edit cost.
        drag_tolerance / min_tolerance_px: recorded with the numbers (the measures were made with them).

    Example:
        >>> print(annotator_numbers([measure_image(truth, masks, polygons, scores)], 0.5).table())  # doctest: +SKIP
    """
    edits = [m.at(score_thresh) for m in measures]
    ious = [iou for e in edits for iou in e.matched_ious]
    n_truth = sum(e.n_truth for e in edits)
    vertices = [n for e in edits for n in e.polygon_vertices]
    matched_vertices = sum(e.n_matched_vertices for e in edits)
    n_to_drag = sum(e.n_to_drag for e in edits)
    return AnnotatorNumbers(
        score_thresh=float(score_thresh),
        n_images=len(edits),
        n_truth=n_truth,
        n_predictions=sum(e.n_predictions for e in edits),
        n_matched=len(ious),
        matched_share={level: (sum(iou >= level for iou in ious) / n_truth if n_truth else None)
                       for level in IOU_LEVELS},
        n_missed=sum(e.n_missed for e in edits),
        n_false_positives=sum(e.n_false_positives for e in edits),
        n_to_drag=n_to_drag,
        n_polygons=len(vertices),
        vertices_median=float(statistics.median(vertices)) if vertices else None,
        vertices_mean=float(np.mean(vertices)) if vertices else None,
        drag_share=n_to_drag / matched_vertices if matched_vertices else None,
        edit_cost=float(sum(e.cost(costs) for e in edits)),
        match_iou=measures[0].match_iou if measures else MATCH_IOU,
        drag_tolerance=drag_tolerance,
        min_tolerance_px=min_tolerance_px,
        costs=costs,
    )


def summary_text(numbers: Mapping[str, Any] | None) -> str | None:
    """Recorded annotator's numbers (:meth:`AnnotatorNumbers.to_json`, as a version's ``meta["annotator"]`` holds
    them) in one line, as ``shoeseg models list`` and the status page show them: the shoes kept within IoU 0.85,
    the shoes to draw and the boxes to delete per image, the images and shoes measured; ``None`` when nothing was measured.
    Plain text: a page escapes it.

    Example:
        >>> summary_text({"n_images": 9, "n_truth": 20, "matched_share": {"iou>=0.85": 0.45},
        ...               "missed_per_image": 0.222, "false_positives_per_image": 0.333})
        '45 % within IoU 0.85, 0.22 to draw, 0.33 to delete / image (9 images, 20 shoes)'
        >>> summary_text({"n_images": 0}) is None
        True
    """
    if not isinstance(numbers, Mapping) or not numbers.get("n_images"):
        return None

    def num(v: Any, spec: str) -> str:
        return format(v, spec) if isinstance(v, int | float) and not isinstance(v, bool) else "-"

    shares = numbers.get("matched_share") if isinstance(numbers.get("matched_share"), Mapping) else {}
    kept = shares.get("iou>=0.85")
    kept_text = f"{num(100 * kept if isinstance(kept, int | float) else None, '.0f')} %"
    return (f"{kept_text} within IoU 0.85, {num(numbers.get('missed_per_image'), '.2f')} to draw, "
            f"{num(numbers.get('false_positives_per_image'), '.2f')} to delete / image "
            f"({numbers['n_images']} images, {numbers.get('n_truth', '-')} shoes)")


@dataclass
class ThresholdChoice:
    """The score threshold with the least edit cost, and the cost at every threshold tried.

    Attributes:
        score_thresh: the chosen threshold.
        cost: the edit cost at each threshold tried.
    """

    score_thresh: float
    cost: dict[float, float]

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {"score_thresh": self.score_thresh, "cost": {f"{k:g}": v for k, v in self.cost.items()}}


def choose_score_thresh(
    measures: Sequence[ImageMeasure],
    *,
    candidates: Sequence[float] = THRESH_CANDIDATES,
    costs: EditCosts = EditCosts(),
    prefer: float = 0.5,
    min_saving_per_image: float = MIN_SAVING_PER_IMAGE,
) -> ThresholdChoice:
    """The score threshold that leaves the annotator the least to edit on these (validation) images.

    Every candidate threshold is tried on the same detections (made at a threshold no higher than the lowest
    candidate) and the one with the least weighted edit cost (:class:`EditCosts`) wins; among equal costs the
    one nearest ``prefer`` (the usual serving threshold), so that a flat curve leaves the usual setting. The
    winner replaces ``prefer`` (when it is a candidate) only if it saves at least ``min_saving_per_image`` edit
    actions per image there: on a handful of images a smaller saving is noise (:data:`MIN_SAVING_PER_IMAGE`).

    Args:
        measures: one :func:`measure_image` result per validation image.
        candidates: thresholds to try (default 0.05, 0.10, ..., 0.95).
        costs: the weights of the edit cost.
        prefer: the tie-break, and the threshold kept without a large enough saving.
        min_saving_per_image: the saving per image that a move away from ``prefer`` needs (0: any saving).

    Example:
        >>> choose_score_thresh([measure_image(truth, masks, polygons, scores)]).score_thresh  # doctest: +SKIP
        0.4
    """
    if not candidates:
        raise ValueError("no candidate thresholds")
    cost = {float(t): float(sum(m.at(t).cost(costs) for m in measures)) for t in sorted(candidates)}
    best = min(cost, key=lambda t: (cost[t], abs(t - prefer), t))
    if prefer in cost and cost[prefer] - cost[best] < min_saving_per_image * max(len(measures), 1):
        best = float(prefer)
    log.info("score threshold %g: edit cost %g on %d images (at %g: %g)", best, cost[best], len(measures), prefer,
             cost.get(prefer, float("nan")))
    return ThresholdChoice(score_thresh=best, cost=cost)
