"""The offline active-learning simulation: one training configuration, seeds, resume, the labels-share
answer, CSV and plot; a fake model for the loop's bookkeeping and a tiny real run."""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from shoeseg import al_simulate
from shoeseg.al_simulate import (
    CSV_COLUMNS,
    SimulationConfig,
    format_label_shares,
    labels_to_reach,
    plot_curves,
    prescale_dataset,
    read_csv,
    run_simulation,
    split_pool,
    start_set,
    summarise,
    write_csv,
)
from shoeseg.schedule import round_iters
from shoeseg.train import TrainConfig
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


def test_split_caps_drop_images_without_moving_any_between_test_and_pool(tmp_path):
    ds, _ = synthetic_shoes(tmp_path, n=20)
    pool, test = split_pool(ds, test_frac=0.25, seed=3)
    small_pool, small_test = split_pool(ds, test_frac=0.25, seed=3, test_size=3, pool_size=6)
    assert [im.file_name for im in small_test] == [im.file_name for im in test[:3]]
    assert [im.file_name for im in small_pool] == [im.file_name for im in pool[:6]]
    # caps larger than the split change nothing
    big_pool, big_test = split_pool(ds, test_frac=0.25, seed=3, test_size=100, pool_size=100)
    assert [im.file_name for im in big_pool] == [im.file_name for im in pool] and len(big_test) == 5


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
        {"strategy": s, "seed": seed, "round": r, "n_labelled": 4 + 2 * r,
         "segm_AP": 0.1 * r + (s == "entropy") * 0.05 + 0.01 * seed, "segm_AP50": 0.2 * r, "bbox_AP": 0.15 * r,
         "seconds": 1.5}
        for s in ("random", "entropy") for seed in (0, 1) for r in range(3)
    ]
    write_csv(rows, tmp_path / "sim.csv")
    with open(tmp_path / "sim.csv") as f:
        assert tuple(next(csv.reader(f))) == CSV_COLUMNS
    back = read_csv(tmp_path / "sim.csv")
    assert [(r["strategy"], r["seed"], r["round"], r["n_labelled"]) for r in back] == [
        (r["strategy"], r["seed"], r["round"], r["n_labelled"]) for r in rows]
    assert back[10]["segm_AP"] == pytest.approx(0.16)
    png = plot_curves(back, tmp_path / "sim.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(png).size[0] > 600
    # mean and spread over seeds
    (first, *_), = [summarise(back)["entropy"]]
    assert (first["n_labelled"], first["n"]) == (4, 2)
    assert (first["mean"], first["min"], first["max"]) == pytest.approx((0.055, 0.05, 0.06))


def test_a_csv_from_before_seeds_reads_as_seed_0(tmp_path):
    (tmp_path / "old.csv").write_text("strategy,round,n_labelled,segm_AP,segm_AP50,bbox_AP,seconds\n"
                                      "random,0,8,0.1000,0.2000,0.3000,12.0\n")
    (row,) = read_csv(tmp_path / "old.csv")
    assert row == {"strategy": "random", "seed": 0, "round": 0, "n_labelled": 8, "segm_AP": 0.1, "segm_AP50": 0.2,
                   "bbox_AP": 0.3, "seconds": 12.0}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(strategies=["nope"]), "unknown active-learning strategy 'nope'"),
        (dict(strategies=[]), "at least one strategy"),
        (dict(strategies=["random", "random"]), "listed twice"),
        (dict(batch=0), "batch must be at least 1"),
        (dict(test_frac=1.0), "test_frac"),
        (dict(seeds=[]), "at least one seed"),
        (dict(seeds=[1, 1]), "distinct"),
        (dict(round_iters=0), "round_iters"),
    ],
)
def test_bad_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SimulationConfig(**kwargs)


# ---------------------------------------------------------------- one training configuration


TRAINING_FIELDS = {"iters", "min_size", "max_size", "weights", "device", "ims_per_batch", "base_lr",
                   "roi_batch_size_per_image", "detections_per_img", "train_overrides"}


def test_the_simulation_holds_one_train_config_and_no_copy_of_its_fields():
    assert not TRAINING_FIELDS & {f.name for f in fields(SimulationConfig)}
    cfg = SimulationConfig()
    assert cfg.train == TrainConfig.for_profile("cpu")  # the default is the cpu profile, as the CLI's


def test_round_0_trains_the_recipe_and_later_rounds_warm_start_with_a_short_schedule():
    train = TrainConfig.for_profile("cpu", device="cpu", iters=200, base_lr=0.01, seed=5)
    cfg = SimulationConfig(batch=8, train=train)
    r0 = cfg.train_config(seed=2, round=0)
    assert (r0.iters, r0.init_from, r0.seed, r0.progress_bar) == (200, None, 5 + 2000, False)
    assert (r0.base_lr, r0.roi_batch_size_per_image, r0.arch, r0.warmup_iters) == (0.01, 128, "lite2-fpn", 50)
    r2 = cfg.train_config(seed=2, round=2, init_from=Path("runs/r1/model.pt"))
    assert r2.init_from == "runs/r1/model.pt" and r2.seed == 5 + 2002
    assert r2.iters == round_iters(200, 8) == 40  # 4 per new image, at least 40
    assert r2.warmup_iters == 8 and r2.resolved_steps() == (30, 36)  # warm-up and decay follow the short schedule
    assert r2.base_lr == 0.01 and r2.min_size == train.min_size
    assert SimulationConfig(batch=30, train=train).train_config(seed=0, round=1, init_from="m.pt").iters == 120
    assert SimulationConfig(batch=100, train=train).train_config(seed=0, round=1, init_from="m.pt").iters == 200
    assert SimulationConfig(round_iters=7, train=train).train_config(seed=0, round=1, init_from="m.pt").iters == 7
    tiny = SimulationConfig(train=TrainConfig.for_profile("cpu", iters=2))
    assert tiny.train_config(seed=0, round=1, init_from="m.pt").iters == 2  # never more than round 0's
    with pytest.raises(ValueError, match="init_from is needed"):
        cfg.train_config(seed=0, round=1)


def test_the_cli_maps_its_flags_onto_the_profiles_train_config(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from shoeseg_app.cli import app

    ds, images_dir = synthetic_shoes(tmp_path, n=2)
    data = tmp_path / "via.json"
    from via_tools.io import save

    save(ds, data, fmt="via2")
    seen = {}

    def fake_run(cfg, **kwargs):
        seen["cfg"], seen["kwargs"] = cfg, kwargs
        rows = [{"strategy": "random", "seed": s, "round": r, "n_labelled": 2 + r, "segm_AP": 0.1 * r,
                 "segm_AP50": 0.0, "bbox_AP": 0.0, "seconds": 1.0} for s in (0, 2) for r in range(2)]
        return al_simulate.SimulationResult(rows=rows, csv_path=tmp_path / "a.csv", plot_path=tmp_path / "a.png",
                                            selections_path=tmp_path / "s.json")

    monkeypatch.setattr(al_simulate, "run_simulation", fake_run)
    res = CliRunner().invoke(app, [
        "al", "simulate", "--data", str(data), "--images", str(images_dir), "-s", "random,diverse_least_confidence",
        "--seeds", "0,2", "--profile", "cpu", "--iters", "30", "--lr", "0.01", "--roi-batch", "64", "--min-size", "128",
        "--max-size", "192", "--detections", "7", "--weights", "none", "--device", "cpu", "--round-iters", "9",
        "--resume", "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    cfg = seen["cfg"]
    assert cfg.train == TrainConfig.for_profile("cpu", device="cpu", iters=30, base_lr=0.01, roi_batch_size_per_image=64,
                                                min_size=128, max_size=192, box_detections_per_img=7, weights="none")
    assert (cfg.strategies, cfg.seeds, cfg.round_iters) == (["random", "diverse_least_confidence"], [0, 2], 9)
    assert seen["kwargs"]["resume"] is True
    assert "labels needed to reach random's final mean segm_AP 0.1000" in res.output
    bad = CliRunner().invoke(app, ["al", "simulate", "--data", str(data), "--seeds", "0,x"])
    assert bad.exit_code != 0 and "comma list of integers" in bad.output


# ---------------------------------------------------------------- seeds


def test_seeds_draw_different_start_sets_from_one_fixed_pool(tmp_path):
    ds, _ = synthetic_shoes(tmp_path, n=30)
    pool, test = split_pool(ds, test_frac=0.2, seed=0)
    starts = [{im.file_name for im in start_set(pool, start=4, seed=s)} for s in (0, 1, 2)]
    assert all(len(s) == 4 and s <= {im.file_name for im in pool} for s in starts)
    assert len({frozenset(s) for s in starts}) == 3
    assert {im.file_name for im in start_set(list(reversed(pool)), start=4, seed=1)} == starts[1]  # order-free


# ---------------------------------------------------------------- labels to reach random's final AP


def test_labels_to_reach_randoms_final_mean_ap_from_a_hand_made_csv(tmp_path):
    curves = {  # strategy -> seed -> segm_AP at 8, 16, 24, 32 labelled images
        "random": {0: [0.10, 0.20, 0.25, 0.30], 1: [0.10, 0.18, 0.28, 0.34]},  # final mean 0.32
        "entropy": {0: [0.10, 0.33, 0.40, 0.41], 1: [0.10, 0.25, 0.32, 0.40]},  # 16 and 24
        "kcenter": {0: [0.10, 0.15, 0.20, 0.31], 1: [0.12, 0.20, 0.25, 0.30]},  # never, twice
    }
    write_csv([{"strategy": s, "seed": seed, "round": r, "n_labelled": 8 * (r + 1), "segm_AP": ap, "segm_AP50": 0.0,
                "bbox_AP": 0.0, "seconds": 1.0}
               for s, by_seed in curves.items() for seed, aps in by_seed.items() for r, ap in enumerate(aps)],
              tmp_path / "sim.csv")
    shares = {x.strategy: x for x in labels_to_reach(read_csv(tmp_path / "sim.csv"))}
    rnd, ent, kc = shares["random"], shares["entropy"], shares["kcenter"]
    assert rnd.target == pytest.approx(0.32) and rnd.baseline_labels == 32
    assert rnd.labels == {0: None, 1: 32} and rnd.reached == 1 and rnd.mean == 1.0
    assert ent.labels == {0: 16, 1: 24}
    assert ent.shares == {0: 0.5, 1: 0.75}
    assert (ent.mean, ent.min, ent.max) == pytest.approx((0.625, 0.5, 0.75))
    assert ent.std == pytest.approx(np.std([0.5, 0.75], ddof=1))
    assert kc.labels == {0: None, 1: None} and kc.reached == 0 and kc.mean is None
    text = format_label_shares(list(shares.values()))
    assert "0.3200" in text and "entropy" in text and "0/2" in text and "not reached" in text
    assert json.loads(json.dumps(ent.to_dict()))["labels"] == {"0": 16, "1": 24}
    with pytest.raises(ValueError, match="no rows of the baseline strategy 'random'"):
        labels_to_reach([r for r in read_csv(tmp_path / "sim.csv") if r["strategy"] != "random"])


# ---------------------------------------------------------------- the loop with a fake model


def _digest(*parts) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


class FakePredictor:
    """Scores and features that depend on the checkpoint and the image, nothing else."""

    def __init__(self, tag: str):
        self.tag = tag

    def predict(self, images, *, score_thresh=None):
        return [[SimpleNamespace(label="shoe", score=int(_digest(self.tag, im.tobytes())[:8], 16) / 2**32,
                                 mask=np.zeros(im.shape[:2], bool))] for im in images]

    def embed(self, images):
        return np.stack([im.reshape(-1, 3).mean(0) + np.arange(3) for im in images]).astype(np.float32)


class FakeTrainer:
    """Stands in for training and evaluation: a checkpoint whose content (and AP) follows from its parent,
    its images and its seed; raises on the ``crash_at``-th call, as a killed run would stop."""

    def __init__(self, crash_at: int | None = None):
        self.calls: list[tuple[int, int]] = []
        self.crash_at = crash_at

    def __call__(self, cfg, *, train_config, full, labelled, test, images_dir, run_dir, bar):
        self.calls.append((train_config.seed, train_config.iters))
        if self.crash_at is not None and len(self.calls) == self.crash_at:
            raise KeyboardInterrupt("stopped")
        parent = Path(train_config.init_from).read_text() if train_config.init_from else "init"
        tag = _digest(parent, sorted(im.file_name for im in labelled), train_config.seed, train_config.iters)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "model.pt").write_text(tag)
        ap = 0.05 * len(labelled) + int(tag[:4], 16) / 65535 / 100
        return al_simulate._Round(run_dir / "model.pt", {"segm_AP": ap, "segm_AP50": 2 * ap, "bbox_AP": ap}, 0.25), \
            FakePredictor(tag)


def _fake_model(monkeypatch, trainer):
    monkeypatch.setattr(al_simulate, "_train_and_evaluate", trainer)
    monkeypatch.setattr(al_simulate, "_load_predictor", lambda ckpt, cfg: FakePredictor(Path(ckpt).read_text()))


def _without_seconds(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


FAKE = dict(strategies=["random", "least_confidence", "diverse_least_confidence"], seeds=[0, 1], start=2, batch=2,
            rounds=3, test_frac=0.25, prescale=False)


def test_seeds_strategies_and_rounds_are_all_written(tmp_path, monkeypatch):
    trainer = FakeTrainer()
    _fake_model(monkeypatch, trainer)
    ds, images_dir = synthetic_shoes(tmp_path, n=12)
    cfg = SimulationConfig(**FAKE, train=TrainConfig.for_profile("cpu", iters=100))
    res = run_simulation(cfg, dataset=ds, images_dir=images_dir, out_dir=tmp_path / "out", show_progress=False)
    keys = [(r["seed"], r["strategy"], r["round"], r["n_labelled"]) for r in res.rows]
    assert keys == [(seed, s, r, 2 + 2 * r) for seed in (0, 1) for s in FAKE["strategies"] for r in range(3)]
    # round 0 is trained once per seed and shared; later rounds fine-tune for 40 iterations
    assert len(trainer.calls) == 2 * (1 + 3 * 2)
    assert [it for _, it in trainer.calls] == ([100] + [40] * 6) * 2
    by = {(r["seed"], r["strategy"], r["round"]): r for r in res.rows}
    assert by[(0, "random", 0)]["segm_AP"] == by[(0, "least_confidence", 0)]["segm_AP"]
    sel = json.loads(res.selections_path.read_text())
    assert sel["start"]["0"] != sel["start"]["1"]  # seeds start from different images ...
    test_names = set(sel["test"])  # ... and are tested on the same ones
    for s in FAKE["strategies"]:
        for seed in ("0", "1"):
            added = [n for rnd in sel["rounds"][s][seed] for n in rnd["added"]]
            assert len(added) == len(set(added)) == 4
            assert not set(added) & (test_names | set(sel["start"][seed]))
    assert sel["rounds"]["random"]["0"] != sel["rounds"]["random"]["1"]  # random's order follows the seed
    assert not list((tmp_path / "out" / "runs").rglob("model.pt"))  # nothing left to resume: no checkpoint
    with pytest.raises(FileExistsError, match="--resume"):  # a finished run is not overwritten by accident
        run_simulation(cfg, dataset=ds, images_dir=images_dir, out_dir=tmp_path / "out", show_progress=False)


@pytest.mark.parametrize("crash_at", [2, 5, 8, 13])
def test_a_stopped_run_resumed_gives_the_rows_of_an_uninterrupted_one(tmp_path, monkeypatch, crash_at):
    ds, images_dir = synthetic_shoes(tmp_path, n=12)
    cfg = SimulationConfig(**FAKE, train=TrainConfig.for_profile("cpu", iters=100))
    whole = FakeTrainer()
    _fake_model(monkeypatch, whole)
    expected = run_simulation(cfg, dataset=ds, images_dir=images_dir, out_dir=tmp_path / "whole", show_progress=False)

    stopped = FakeTrainer(crash_at=crash_at)
    _fake_model(monkeypatch, stopped)
    with pytest.raises(KeyboardInterrupt):
        run_simulation(cfg, dataset=ds, images_dir=images_dir, out_dir=tmp_path / "part", show_progress=False)
    partial = read_csv(tmp_path / "part" / "simulation.csv")
    assert 0 < len(partial) < len(expected.rows)
    resumed = FakeTrainer()
    _fake_model(monkeypatch, resumed)
    res = run_simulation(cfg, dataset=ds, images_dir=images_dir, out_dir=tmp_path / "part", show_progress=False,
                         resume=True)
    assert _without_seconds(res.rows) == _without_seconds(expected.rows)
    # nothing finished was trained again: only the interrupted training and those after it
    assert len(resumed.calls) == len(whole.calls) - (crash_at - 1)
    assert resumed.calls == whole.calls[crash_at - 1 :]
    assert read_csv(tmp_path / "part" / "simulation.csv")[: len(partial)] == partial  # appended, not rewritten
    assert json.loads(res.selections_path.read_text())["rounds"] == json.loads(
        expected.selections_path.read_text())["rounds"]


def test_resume_adds_seeds_but_refuses_other_settings(tmp_path, monkeypatch):
    _fake_model(monkeypatch, FakeTrainer())
    ds, images_dir = synthetic_shoes(tmp_path, n=12)
    base = dict(FAKE, strategies=["random"], seeds=[0])
    train = TrainConfig.for_profile("cpu", iters=100)
    run_simulation(SimulationConfig(**base, train=train), dataset=ds, images_dir=images_dir,
                   out_dir=tmp_path / "out", show_progress=False)
    more = run_simulation(SimulationConfig(**dict(base, seeds=[0, 3]), train=train), dataset=ds,
                          images_dir=images_dir, out_dir=tmp_path / "out", show_progress=False, resume=True)
    assert [(r["seed"], r["round"]) for r in more.rows] == [(0, 0), (0, 1), (0, 2), (3, 0), (3, 1), (3, 2)]
    with pytest.raises(ValueError, match=r"other settings \(batch, train.base_lr\)"):
        run_simulation(SimulationConfig(**dict(base, batch=3), train=TrainConfig.for_profile("cpu", iters=100,
                                                                                            base_lr=0.1)),
                       dataset=ds, images_dir=images_dir, out_dir=tmp_path / "out", show_progress=False, resume=True)


def test_a_line_cut_off_by_a_killed_process_is_redone(tmp_path, monkeypatch):
    _fake_model(monkeypatch, FakeTrainer())
    ds, images_dir = synthetic_shoes(tmp_path, n=12)
    cfg = SimulationConfig(**dict(FAKE, strategies=["random"], seeds=[0]), keep_checkpoints=True,
                           train=TrainConfig.for_profile("cpu", iters=100))
    full = run_simulation(cfg, dataset=ds, images_dir=images_dir, out_dir=tmp_path / "out", show_progress=False)
    text = full.csv_path.read_text()
    full.csv_path.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 5])  # half of the last row
    res = run_simulation(cfg, dataset=ds, images_dir=images_dir, out_dir=tmp_path / "out", show_progress=False,
                         resume=True)
    assert _without_seconds(res.rows) == _without_seconds(full.rows)


def test_a_pool_too_small_is_refused_before_training(tmp_path):
    ds, images_dir = synthetic_shoes(tmp_path, n=6)
    cfg = SimulationConfig(strategies=["random"], start=2, batch=2, rounds=4, test_frac=0.3)
    with pytest.raises(ValueError, match=r"need 8 images, but the pool has 4"):
        run_simulation(cfg, dataset=ds, images_dir=images_dir, out_dir=tmp_path / "out", show_progress=False)


def test_a_missing_image_is_named(tmp_path):
    ds, images_dir = synthetic_shoes(tmp_path, n=4)
    (images_dir / "img01.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="img01.jpg"):
        run_simulation(SimulationConfig(strategies=["random"]), dataset=ds, images_dir=images_dir,
                       out_dir=tmp_path / "out", show_progress=False)


# ---------------------------------------------------------------- a tiny real run


def _tiny_train() -> TrainConfig:
    return TrainConfig.for_profile("cpu", device="cpu", weights="none", arch="lite0-fpn", iters=2, min_size=64,
                                   max_size=96, roi_batch_size_per_image=32, box_detections_per_img=5)


@pytest.mark.slow
def test_tiny_real_run_stopped_after_one_round_and_resumed(tmp_path, monkeypatch):
    """One strategy that needs the model twice (detections and pooled features), two rounds of two iterations
    on 64 px images: stopped after round 0, resumed, the same rows as a run that was not stopped."""
    ds, images_dir = synthetic_shoes(tmp_path, n=8)
    cfg = SimulationConfig(strategies=["diverse_least_confidence"], start=2, batch=2, rounds=2, test_frac=0.25,
                           train=_tiny_train())
    whole = run_simulation(cfg, dataset=ds, images_dir=images_dir, out_dir=tmp_path / "whole", show_progress=False)
    assert [(r["strategy"], r["round"], r["n_labelled"]) for r in whole.rows] == [
        ("diverse_least_confidence", 0, 2), ("diverse_least_confidence", 1, 4)]
    for r in whole.rows:
        assert 0.0 <= r["segm_AP"] <= 1.0 and 0.0 <= r["bbox_AP"] <= 1.0 and r["seconds"] > 0
    assert whole.plot_path.read_bytes()[:4] == b"\x89PNG"
    (added,) = json.loads(whole.selections_path.read_text())["rounds"]["diverse_least_confidence"]["0"]
    assert len(added["added"]) == 2 and added["scores"] == [0.0, 0.25]  # positions over the 4 unlabelled

    real = al_simulate._train_and_evaluate
    calls = []

    def stop_in_round_1(*args, **kwargs):
        calls.append(kwargs["train_config"].init_from)
        if len(calls) == 2:
            raise KeyboardInterrupt("stopped")
        return real(*args, **kwargs)

    monkeypatch.setattr(al_simulate, "_train_and_evaluate", stop_in_round_1)
    with pytest.raises(KeyboardInterrupt):
        run_simulation(cfg, dataset=ds, images_dir=images_dir, out_dir=tmp_path / "part", show_progress=False)
    assert len(read_csv(tmp_path / "part" / "simulation.csv")) == 1
    monkeypatch.setattr(al_simulate, "_train_and_evaluate", real)
    res = run_simulation(cfg, dataset=ds, images_dir=images_dir, out_dir=tmp_path / "part", show_progress=False,
                         resume=True)
    assert _without_seconds(res.rows) == _without_seconds(whole.rows)
    assert not list((tmp_path / "part" / "runs").rglob("model.pt"))
