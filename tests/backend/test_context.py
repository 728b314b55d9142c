"""Rectangles an annotator drew, read from a ``/predict`` context."""

from __future__ import annotations

from backend.context import boxes_from_context


def test_boxes_from_context():
    context = {"result": [
        {"type": "rectanglelabels", "to_name": "image", "original_width": 100, "original_height": 80,
         "value": {"x": 10, "y": 20, "width": 30, "height": 40, "rotation": 0, "rectanglelabels": ["shoe"]}},
        {"type": "keypointlabels", "value": {"x": 1, "y": 2}},
        {"type": "rectangle", "value": {"x": 1, "y": 2, "width": 0, "height": 4}},
        {"type": "rectangle", "value": {"x": "a"}},
    ]}
    assert boxes_from_context(context) == [{"to_name": "image", "xywh_pct": (10.0, 20.0, 30.0, 40.0), "label": "shoe"}]
    assert boxes_from_context(None) == [] and boxes_from_context({"result": "x"}) == []
