"""Checkpoints shared by the registry's tests."""

from __future__ import annotations

import pytest

from shoeseg.checkpoint import save_checkpoint
from shoeseg.model import build_model


@pytest.fixture(scope="module")
def lineage(tmp_path_factory):
    """Three checkpoints: a, b fine-tuned from a, c fine-tuned from b."""
    d = tmp_path_factory.mktemp("ckpts")
    model = build_model(num_classes=1, weights=None, min_size=64, max_size=96)
    paths, parent = [], None
    for name in "abc":
        p = d / f"{name}.pt"
        parent = save_checkpoint(p, model=model, class_names=["shoe"], metrics={"segm_AP": 0.1 * (len(paths) + 1)},
                                 parent_version=parent, version=f"2024010{len(paths) + 1}-000000-{name * 6}")
        paths.append(p)
    return paths
