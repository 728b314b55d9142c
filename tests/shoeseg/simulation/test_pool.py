"""The simulation's images: the seeded test split and its caps, each seed's start set, pre-scaled copies."""

from __future__ import annotations

import numpy as np
from PIL import Image

from shoeseg.simulation.pool import prescale_dataset, split_pool, start_set
from tests.synth import make_simulation_set


def test_split_is_seeded_disjoint_and_skips_images_without_instances(tmp_path):
    ds, _ = make_simulation_set(tmp_path, n=20)
    pool, test = split_pool(ds, test_frac=0.25, seed=3)
    assert len(test) == 5 and len(pool) == 15
    assert not {im.file_name for im in pool} & {im.file_name for im in test}
    assert "empty.jpg" not in {im.file_name for im in pool + test}
    again = split_pool(ds, test_frac=0.25, seed=3)
    assert [im.file_name for im in again[1]] == [im.file_name for im in test]
    assert [im.file_name for im in split_pool(ds, test_frac=0.25, seed=4)[1]] != [im.file_name for im in test]


def test_split_caps_drop_images_without_moving_any_between_test_and_pool(tmp_path):
    ds, _ = make_simulation_set(tmp_path, n=20)
    pool, test = split_pool(ds, test_frac=0.25, seed=3)
    small_pool, small_test = split_pool(ds, test_frac=0.25, seed=3, test_size=3, pool_size=6)
    assert [im.file_name for im in small_test] == [im.file_name for im in test[:3]]
    assert [im.file_name for im in small_pool] == [im.file_name for im in pool[:6]]
    # caps larger than the split change nothing
    big_pool, big_test = split_pool(ds, test_frac=0.25, seed=3, test_size=100, pool_size=100)
    assert [im.file_name for im in big_pool] == [im.file_name for im in pool] and len(big_test) == 5


def test_prescale_resizes_images_and_polygons_together(tmp_path):
    ds, images_dir = make_simulation_set(tmp_path, n=2, size=(200, 100))
    small, small_dir = prescale_dataset(ds, images_dir=images_dir, out_dir=tmp_path / "small", min_size=50, max_size=80)
    rec = small.images[0]
    # shorter side 100 -> 50 would make the longer 100, over max 80: the longer side decides (scale 0.4)
    assert (rec.width_px, rec.height_px) == (80, 40)
    assert Image.open(small_dir / rec.file_name).size == (80, 40)
    np.testing.assert_allclose(rec.regions[0].polygons[0], ds.images[0].regions[0].polygons[0] * 0.4)
    # a smaller image is never enlarged
    tiny, _ = prescale_dataset(ds, images_dir=images_dir, out_dir=tmp_path / "big", min_size=800, max_size=1333)
    assert (tiny.images[0].width_px, tiny.images[0].height_px) == (200, 100)


def test_seeds_draw_different_start_sets_from_one_fixed_pool(tmp_path):
    ds, _ = make_simulation_set(tmp_path, n=30)
    pool, test = split_pool(ds, test_frac=0.2, seed=0)
    starts = [{im.file_name for im in start_set(pool, start=4, seed=s)} for s in (0, 1, 2)]
    assert all(len(s) == 4 and s <= {im.file_name for im in pool} for s in starts)
    assert len({frozenset(s) for s in starts}) == 3
    assert {im.file_name for im in start_set(list(reversed(pool)), start=4, seed=1)} == starts[1]  # order-free
