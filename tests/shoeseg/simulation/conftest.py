"""Rows of a small simulation for the results, summary and plot tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def sim_rows() -> list[dict]:
    """Two strategies, two seeds, three rounds; entropy 0.05 and seed 1 0.01 above the rest."""
    return [
        {"strategy": s, "seed": seed, "round": r, "n_labelled": 4 + 2 * r,
         "segm_AP": 0.1 * r + (s == "entropy") * 0.05 + 0.01 * seed, "segm_AP50": 0.2 * r, "bbox_AP": 0.15 * r,
         "seconds": 1.5}
        for s in ("random", "entropy") for seed in (0, 1) for r in range(3)
    ]
