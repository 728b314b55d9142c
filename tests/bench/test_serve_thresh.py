"""The serving-threshold replay's rules on constructed images with known edit costs."""

from __future__ import annotations

import numpy as np

from bench.bench_serve_thresh import held_out_numbers, thresholds
from shoeseg.edits import measure_image
from shoeseg.geometry import mask_to_polygons


def _rect(x1, y1, x2, y2):
    m = np.zeros((80, 80), bool)
    m[y1:y2, x1:x2] = True
    return m


SHOE, ELSEWHERE = _rect(10, 10, 40, 50), _rect(50, 50, 70, 70)


def _image(shoe_score: float, junk_score: float):
    """One true shoe predicted exactly at ``shoe_score``, and a false positive at ``junk_score``."""
    preds = [SHOE, ELSEWHERE]
    return measure_image([SHOE], preds, [mask_to_polygons(p) for p in preds], [shoe_score, junk_score])


def test_each_rule_reads_the_held_out_cost_at_its_threshold():
    # validation: the junk scores 0.6, the shoes 0.9: any threshold above 0.6 saves one deletion per image
    version = {"val": [_image(0.9, 0.6) for _ in range(3)],
               "held_out": [_image(0.9, 0.3), _image(0.65, 0.3)]}  # held-out: a shoe at 0.65 that 0.7 would miss
    rules = thresholds(version, margins=[0.5, 2.0], fixed=[0.5])
    assert rules["chosen on validation"] == 0.65  # the least cost nearest 0.5
    assert rules["chosen, margin 0.5 per image"] == 0.65  # saves 1 per image: enough
    assert rules["chosen, margin 2 per image"] == 0.5  # not 2 per image: stays at 0.5
    assert rules["best on held-out"] == 0.5  # above the junk (0.3), below both shoes, nearest 0.5
    at_chosen, at_half = held_out_numbers(version, 0.65), held_out_numbers(version, 0.7)
    assert (at_chosen["cost"], at_chosen["missed"], at_chosen["fp"]) == (0.0, 0, 0.0)
    assert (at_half["missed"], at_half["cost"]) == (1, 15.0)  # a shoe to draw (30) over 2 images
