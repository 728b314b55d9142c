"""Interactive pre-annotation: the rectangles an annotator drew, read from a ``/predict`` ``context``."""

from __future__ import annotations

import math


def boxes_from_context(context: dict | None) -> list[dict]:
    """Rectangles an annotator drew, from a ``/predict`` ``context`` (interactive pre-annotation).

    Returns:
        ``[{"to_name", "xywh_pct", "label"}]`` for every ``rectangle``/``rectanglelabels`` item in
        ``context["result"]`` with numeric ``x``, ``y``, ``width``, ``height`` (percent of the image).
    """
    if not isinstance(context, dict):
        return []
    items = context.get("result")
    if not isinstance(items, list):
        return []
    boxes = []
    for item in items:
        if not isinstance(item, dict) or item.get("type") not in ("rectangle", "rectanglelabels"):
            continue
        value = item.get("value")
        if not isinstance(value, dict):
            continue
        try:
            xywh = tuple(float(value[k]) for k in ("x", "y", "width", "height"))
        except (KeyError, TypeError, ValueError):
            continue
        if not all(math.isfinite(v) for v in xywh) or xywh[2] <= 0 or xywh[3] <= 0:
            continue
        labels = value.get("rectanglelabels")
        label = labels[0] if isinstance(labels, list) and labels and isinstance(labels[0], str) else None
        boxes.append({"to_name": item.get("to_name"), "xywh_pct": xywh, "label": label})
    return boxes
