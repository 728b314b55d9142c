"""The offline active-learning simulation: split, resizing, CSV and plot, and a tiny real run."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from shoeseg.al_simulate import (
    CSV_COLUMNS,
    SimulationConfig,
    plot_curves,
    prescale_dataset,
    read_csv,
    run_simulation,
    split_pool,
    write_csv,
)
from via_tools.model import AnnotationSet, ImageRecord, Region


def synthetic_shoes(tmp_path, n=10, *, size=(96, 80)):
    """Images with one or two filled ellipses ("shoes") on noise, and their polygons."""
    rng = np.random.default_rng(0)
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    records = []
    w, h = size
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    for i in range(n):
        arr = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        regions = []
        for k in range(1 + i % 2):
            cx, cy, rx, ry = 24 + 44 * k, 40, 18, 10
            poly = np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)
            yy, xx = np.mgrid[0:h, 0:w]
            arr[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1] = (200, 60 + 40 * k, 40)
            regions.append(Region(label="shoe", polygons=(poly,), region_id=f"{i}-{k}"))
        name = f"img{i:02d}.jpg"
        Image.fromarray(arr).save(images_dir / name, quality=95)
        records.append(ImageRecord(file_name=name, width_px=w, height_px=h, regions=regions))
    records.append(ImageRecord(file_name="empty.jpg", width_px=w, height_px=h))  # no instance: left out
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(images_dir / "empty.jpg")
    return AnnotationSet(images=records, labels=["shoe"]), images_dir


def test_split_is_seeded_disjoint_and_skips_images_without_instances(tmp_path):
    ds, _ = synthetic_shoes(tmp_path, n=20)
    pool, test = split_pool(ds, test_frac=0.25, seed=3)
    assert len(test) == 5 and len(pool) == 15
    assert not {im.file_name for im in pool} & {im.file_name for im in test}
    assert "empty.jpg" not in {im.file_name for im in pool + test}
    again = split_pool(ds, test_frac=0.25, seed=3)
    assert [im.file_name for im in again[1]] == [im.file_name for im in test]
    assert [im.file_name for im in split_pool(ds, test_frac=0.25, seed=4)[1]] != [im.file_name for im in test]


def test_prescale_resizes_images_and_polygons_together(tmp_path):
    ds, images_dir = synthetic_shoes(tmp_path, n=2, size=(200, 100))
    small, small_dir = prescale_dataset(ds, images_dir=images_dir, out_dir=tmp_path / "small", min_size=50, max_size=80)
    rec = small.images[0]
    # shorter side 100 -> 50 would make the longer 100, over max 80: the longer side decides (scale 0.4)
    assert (rec.width_px, rec.height_px) == (80, 40)
    assert Image.open(small_dir / rec.file_name).size == (80, 40)
    np.testing.assert_allclose(rec.regions[0].polygons[0], ds.images[0].regions[0].polygons[0] * 0.4)
    # a smaller image is never enlarged
    tiny, _ = prescale_dataset(ds, images_dir=images_dir, out_dir=tmp_path / "big", min_size=800, max_size=1333)
    assert (tiny.images[0].width_px, tiny.images[0].height_px) == (200, 100)


def test_csv_round_trip_and_plot(tmp_path):
    rows = [
        {"strategy": s, "round": r, "n_labelled": 4 + 2 * r, "segm_AP": 0.1 * r + (s == "entropy") * 0.05,
         "segm_AP50": 0.2 * r, "bbox_AP": 0.15 * r, "seconds": 1.5}
        for s in ("random", "entropy") for r in range(3)
    ]
    write_csv(rows, tmp_path / "sim.csv")
    with open(tmp_path / "sim.csv") as f:
        assert tuple(next(csv.reader(f))) == CSV_COLUMNS
    back = read_csv(tmp_path / "sim.csv")
    assert [(r["strategy"], r["round"], r["n_labelled"]) for r in back] == [
        (r["strategy"], r["round"], r["n_labelled"]) for r in rows]
    assert back[4]["segm_AP"] == pytest.approx(0.15)
    png = plot_curves(back, tmp_path / "sim.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(png).size[0] > 600


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(strategies=["nope"]), "unknown active-learning strategy 'nope'"),
        (dict(strategies=[]), "at least one strategy"),
        (dict(strategies=["random", "random"]), "listed twice"),
        (dict(batch=0), "batch must be at least 1"),
        (dict(test_frac=1.0), "test_frac"),
    ],
)
def test_bad_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SimulationConfig(**kwargs)


def test_a_pool_too_small_is_refused_before_training(tmp_path):
    ds, images_dir = synthetic_shoes(tmp_path, n=6)
    cfg = SimulationConfig(strategies=["random"], start=2, batch=2, rounds=4, test_frac=0.3, weights="none")
    with pytest.raises(ValueError, match=r"need 8 images, but the pool has 4"):
        run_simulation(cfg, dataset=ds, images_dir=images_dir, out_dir=tmp_path / "out", show_progress=False)


def test_a_missing_image_is_named(tmp_path):
    ds, images_dir = synthetic_shoes(tmp_path, n=4)
    (images_dir / "img01.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="img01.jpg"):
        run_simulation(SimulationConfig(strategies=["random"], weights="none"), dataset=ds, images_dir=images_dir,
                       out_dir=tmp_path / "out", show_progress=False)


@pytest.mark.slow
def test_tiny_simulation_end_to_end(tmp_path):
    """Two strategies, two rounds of one iteration each on 64 px images: every file written, numbers sane."""
    ds, images_dir = synthetic_shoes(tmp_path, n=8)
    cfg = SimulationConfig(
        strategies=["random", "least_confidence"], start=2, batch=2, rounds=2, iters=1, test_frac=0.25,
        min_size=64, max_size=96, weights="none", device="cpu", roi_batch_size_per_image=32, detections_per_img=5,
    )
    res = run_simulation(cfg, dataset=ds, images_dir=images_dir, out_dir=tmp_path / "out", show_progress=False)
    assert [(r["strategy"], r["round"], r["n_labelled"]) for r in res.rows] == [
        ("random", 0, 2), ("random", 1, 4), ("least_confidence", 0, 2), ("least_confidence", 1, 4)]
    # round 0 is shared: same model, same numbers
    assert res.rows[0]["segm_AP"] == res.rows[2]["segm_AP"]
    for r in res.rows:
        assert 0.0 <= r["segm_AP"] <= 1.0 and 0.0 <= r["bbox_AP"] <= 1.0 and r["seconds"] > 0
    assert len(read_csv(res.csv_path)) == 4
    assert res.plot_path.read_bytes()[:4] == b"\x89PNG"
    sel = json.loads(res.selections_path.read_text())
    test_names = set(sel["test"])
    for strategy in ("random", "least_confidence"):
        (added,) = sel["rounds"][strategy]
        assert len(added["added"]) == 2
        assert not set(added["added"]) & (test_names | set(sel["start"]))
        assert added["scores"] == sorted(added["scores"])  # the lowest scores were picked
    # finished rounds' checkpoints (hundreds of MB on real models) are cleaned up
    assert not list((tmp_path / "out" / "runs" / "random").rglob("model.pt"))
