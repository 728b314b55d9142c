"""Live acceptance: what an annotator did to a version's pre-label of a task, in the annotator's numbers.

Every annotation submitted on a task that showed a pre-label is a test of the version that made it, on an
image that version did not train on. :func:`compare` matches the annotation's polygons with the pre-label's one
to one by mask IoU (:mod:`shoeseg.edits`: greedy, highest IoU first, a pair needs IoU >= 0.5) and counts:

* **kept**: pre-labelled shoes the annotator kept within IoU :data:`KEEP_IOU` (0.9) of the pre-label;
* **moved**: pre-labelled shoes kept but changed more than that (IoU from 0.5 to 0.9);
* **deleted**: pre-labelled shoes matched to no shoe of the annotation;
* **drawn**: shoes of the annotation matched to no pre-label;
* **vertices_changed**: vertices of kept or moved pre-labels farther from the annotated outline than the
  annotator's tolerance (2 % of the shoe's box diagonal, :func:`shoeseg.edits.tolerance_px`);
* **predicted** / **annotated**: the shoes of the pre-label and of the annotation.

Each Label Studio polygon result is one shoe. Polygons are rasterised at the image's size scaled down to at
most :data:`MAX_SIDE_PX` on the longer side (coordinates are percentages, so the counts do not depend on it).

:func:`summarize` adds the records of one version up: one record per annotation, so an annotation updated
again replaces its record and is never counted twice (the store, :meth:`shoeseg_services.registry.ModelRegistry.record_acceptance`,
keys them by annotation id). ``kept_share`` = kept / predicted is the version's live acceptance.

Only the standard library is imported at the top: the web service reads summaries without numpy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

log = logging.getLogger(__name__)

#: A pre-labelled shoe is kept as it was when the annotation's shoe overlaps it at least this much.
KEEP_IOU = 0.9
#: Polygons are rasterised with the longer image side at most this many pixels.
MAX_SIDE_PX = 1024
#: The counts of a record, summed by :func:`summarize`.
COUNTS = ("kept", "moved", "deleted", "drawn", "vertices_changed", "predicted", "annotated")


def _polygons(results: Iterable[dict[str, Any]]) -> tuple[list[tuple[list[tuple[float, float]], str]], tuple | None]:
    """``([(points_pct, label)], (width_px, height_px) or None)`` of the closed polygon results."""
    out, size = [], None
    for r in results or ():
        if not isinstance(r, dict) or r.get("type") != "polygonlabels":
            continue
        value = r.get("value") or {}
        points = value.get("points") or []
        try:
            pts = [(float(x), float(y)) for x, y in points]
        except (TypeError, ValueError):
            log.warning("polygon result %s has unreadable points: skipped", r.get("id"))
            continue
        if len(pts) < 3:
            continue
        labels = value.get("polygonlabels") or [""]
        out.append((pts, str(labels[0])))
        w, h = r.get("original_width"), r.get("original_height")
        if size is None and isinstance(w, int | float) and isinstance(h, int | float) and w > 0 and h > 0:
            size = (float(w), float(h))
    return out, size


def compare(annotation_results: Sequence[dict[str, Any]], prediction_results: Sequence[dict[str, Any]], *,
            keep_iou: float = KEEP_IOU) -> dict[str, int]:
    """The annotator's numbers of one annotation against the pre-label it started from.

    Args:
        annotation_results: the annotation's Label Studio ``result`` list.
        prediction_results: the prediction's ``result`` list (the version's pre-label of the same task).
        keep_iou: the IoU at which a kept shoe counts as unchanged.

    Returns:
        ``{"kept", "moved", "deleted", "drawn", "vertices_changed", "predicted", "annotated"}``.

    Example:
        >>> square = [{"type": "polygonlabels", "original_width": 100, "original_height": 100,
        ...            "value": {"points": [[10, 10], [50, 10], [50, 50], [10, 50]], "polygonlabels": ["shoe"]}}]
        >>> compare(square, square)["kept"], compare([], square)["deleted"], compare(square, [])["drawn"]
        (1, 1, 1)
    """
    import numpy as np

    from shoeseg.edits import measure_image
    from shoeseg.geometry import polygons_to_mask

    truth, size_a = _polygons(annotation_results)
    preds, size_p = _polygons(prediction_results)
    counts = dict.fromkeys(COUNTS, 0)
    counts["predicted"], counts["annotated"] = len(preds), len(truth)
    if not truth or not preds:
        counts["deleted"], counts["drawn"] = len(preds), len(truth)
        return counts
    w, h = size_a or size_p or (100.0, 100.0)
    scale = min(1.0, MAX_SIDE_PX / max(w, h))
    w_px, h_px = max(1, round(w * scale)), max(1, round(h * scale))

    def pixels(points_pct):
        return np.array([(x * w_px / 100.0, y * h_px / 100.0) for x, y in points_pct], dtype=np.float64)

    true_masks = [polygons_to_mask([pixels(p)], h_px, w_px) for p, _ in truth]
    pred_polys = [[pixels(p)] for p, _ in preds]
    pred_masks = [polygons_to_mask(polys, h_px, w_px) for polys in pred_polys]
    edits = measure_image(true_masks, pred_masks, pred_polys, true_labels=[lab for _, lab in truth],
                          pred_labels=[lab for _, lab in preds]).at(0.0)
    kept = sum(1 for iou in edits.matched_ious if iou >= keep_iou)
    counts.update(kept=kept, moved=len(edits.matched_ious) - kept, deleted=edits.n_false_positives,
                  drawn=edits.n_missed, vertices_changed=int(edits.n_to_drag))
    return counts


def summarize(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """One version's live acceptance: the counts of its records added up, the number of annotations they come
    from, ``kept_share`` (kept / predicted, ``None`` without pre-labelled shoes) and the last record's time.

    Example:
        >>> summarize([{"kept": 3, "predicted": 4, "at": "2025-01-02T00:00:00+00:00"}, {"deleted": 1, "predicted": 1}])
        ... # doctest: +NORMALIZE_WHITESPACE
        {'annotations': 2, 'kept': 3, 'moved': 0, 'deleted': 1, 'drawn': 0, 'vertices_changed': 0, 'predicted': 5,
         'annotated': 0, 'kept_share': 0.6, 'updated_at': '2025-01-02T00:00:00+00:00'}
    """
    out: dict[str, Any] = {"annotations": 0, **dict.fromkeys(COUNTS, 0)}
    last = None
    for r in records:
        out["annotations"] += 1
        for k in COUNTS:
            v = r.get(k)
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[k] += int(v)
        at = r.get("at")
        if isinstance(at, str) and (last is None or at > last):
            last = at
    out["kept_share"] = round(out["kept"] / out["predicted"], 4) if out["predicted"] else None
    out["updated_at"] = last
    return out
