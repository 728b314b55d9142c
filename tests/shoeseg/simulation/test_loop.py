"""The simulation's rounds: a fake model for the loop's bookkeeping (seeds, strategies, resume, refusals) and a
tiny real run stopped and resumed."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from shoeseg.simulation import loop
from shoeseg.simulation.config import SimulationConfig
from shoeseg.simulation.loop import run_simulation
from shoeseg.simulation.results import read_csv
from shoeseg.train import TrainConfig
from tests.synth import make_simulation_set

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
        return loop._Round(run_dir / "model.pt", {"segm_AP": ap, "segm_AP50": 2 * ap, "bbox_AP": ap}, 0.25), \
            FakePredictor(tag)


def _fake_model(monkeypatch, trainer):
    monkeypatch.setattr(loop, "_train_and_evaluate", trainer)
    monkeypatch.setattr(loop, "_load_predictor", lambda ckpt, cfg: FakePredictor(Path(ckpt).read_text()))


def _without_seconds(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


FAKE = dict(strategies=["random", "least_confidence", "diverse_least_confidence"], seeds=[0, 1], start=2, batch=2,
            rounds=3, test_frac=0.25, prescale=False)


def test_seeds_strategies_and_rounds_are_all_written(tmp_path, monkeypatch):
    trainer = FakeTrainer()
    _fake_model(monkeypatch, trainer)
    ds, images_dir = make_simulation_set(tmp_path, n=12)
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
    ds, images_dir = make_simulation_set(tmp_path, n=12)
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


def test_a_resume_with_fewer_strategies_keeps_the_first_version_the_others_still_need(tmp_path, monkeypatch):
    ds, images_dir = make_simulation_set(tmp_path, n=12)
    both = dict(FAKE, strategies=["random", "least_confidence"], seeds=[0])
    cfg = SimulationConfig(**both, train=TrainConfig.for_profile("cpu", iters=100))
    _fake_model(monkeypatch, FakeTrainer())
    expected = run_simulation(cfg, dataset=ds, images_dir=images_dir, out_dir=tmp_path / "whole", show_progress=False)
    # stopped in least_confidence's round 1 (calls: round 0, random's rounds 1 and 2, then this one)
    _fake_model(monkeypatch, FakeTrainer(crash_at=4))
    with pytest.raises(KeyboardInterrupt):
        run_simulation(cfg, dataset=ds, images_dir=images_dir, out_dir=tmp_path / "part", show_progress=False)
    first_version = tmp_path / "part" / "runs" / "seed0" / "round0" / "model.pt"
    # resumed with random alone, which is finished: least_confidence's chain still needs the first version
    _fake_model(monkeypatch, FakeTrainer())
    run_simulation(replace(cfg, strategies=["random"]), dataset=ds, images_dir=images_dir, out_dir=tmp_path / "part",
                   show_progress=False, resume=True)
    assert first_version.is_file()
    # a first version removed anyway (as runs before this rule did) is trained again, and the rows come out alike
    first_version.unlink()
    resumed = FakeTrainer()
    _fake_model(monkeypatch, resumed)
    res = run_simulation(cfg, dataset=ds, images_dir=images_dir, out_dir=tmp_path / "part", show_progress=False,
                         resume=True)
    assert [iters for _, iters in resumed.calls] == [100, 40, 40]  # the first version, then its two rounds
    assert _without_seconds(res.rows) == _without_seconds(expected.rows)
    assert not list((tmp_path / "part" / "runs").rglob("model.pt"))


def test_resume_adds_seeds_but_refuses_other_settings(tmp_path, monkeypatch):
    _fake_model(monkeypatch, FakeTrainer())
    ds, images_dir = make_simulation_set(tmp_path, n=12)
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
    ds, images_dir = make_simulation_set(tmp_path, n=12)
    cfg = SimulationConfig(**dict(FAKE, strategies=["random"], seeds=[0]), keep_checkpoints=True,
                           train=TrainConfig.for_profile("cpu", iters=100))
    full = run_simulation(cfg, dataset=ds, images_dir=images_dir, out_dir=tmp_path / "out", show_progress=False)
    text = full.csv_path.read_text()
    full.csv_path.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 5])  # half of the last row
    res = run_simulation(cfg, dataset=ds, images_dir=images_dir, out_dir=tmp_path / "out", show_progress=False,
                         resume=True)
    assert _without_seconds(res.rows) == _without_seconds(full.rows)


def test_a_pool_too_small_is_refused_before_training(tmp_path):
    ds, images_dir = make_simulation_set(tmp_path, n=6)
    cfg = SimulationConfig(strategies=["random"], start=2, batch=2, rounds=4, test_frac=0.3)
    with pytest.raises(ValueError, match=r"need 8 images, but the pool has 4"):
        run_simulation(cfg, dataset=ds, images_dir=images_dir, out_dir=tmp_path / "out", show_progress=False)


def test_a_missing_image_is_named(tmp_path):
    ds, images_dir = make_simulation_set(tmp_path, n=4)
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
    ds, images_dir = make_simulation_set(tmp_path, n=8)
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

    real = loop._train_and_evaluate
    calls = []

    def stop_in_round_1(*args, **kwargs):
        calls.append(kwargs["train_config"].init_from)
        if len(calls) == 2:
            raise KeyboardInterrupt("stopped")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "_train_and_evaluate", stop_in_round_1)
    with pytest.raises(KeyboardInterrupt):
        run_simulation(cfg, dataset=ds, images_dir=images_dir, out_dir=tmp_path / "part", show_progress=False)
    assert len(read_csv(tmp_path / "part" / "simulation.csv")) == 1
    monkeypatch.setattr(loop, "_train_and_evaluate", real)
    res = run_simulation(cfg, dataset=ds, images_dir=images_dir, out_dir=tmp_path / "part", show_progress=False,
                         resume=True)
    assert _without_seconds(res.rows) == _without_seconds(whole.rows)
    assert not list((tmp_path / "part" / "runs").rglob("model.pt"))


def test_a_run_from_before_the_mask_steps_and_the_nms_setting_resumes_as_it_started(tmp_path, monkeypatch):
    from shoeseg.simulation.config import OUTPUTS_BEFORE, TRAIN_BEFORE

    ds, images_dir = make_simulation_set(tmp_path, n=12)
    cfg = SimulationConfig(**FAKE, train=TrainConfig.for_profile("cpu", iters=100))
    _fake_model(monkeypatch, FakeTrainer(crash_at=3))
    with pytest.raises(KeyboardInterrupt):
        run_simulation(cfg, dataset=ds, images_dir=images_dir, out_dir=tmp_path / "out", show_progress=False)
    sel = tmp_path / "out" / "selections.json"
    state = json.loads(sel.read_text())
    assert state["config"]["outputs"] == cfg.outputs != OUTPUTS_BEFORE  # a new run records what is served
    assert state["config"]["train"]["box_nms_thresh"] == cfg.train.box_nms_thresh == 0.4
    del state["config"]["outputs"]  # as a run started before they were recorded wrote it
    del state["config"]["train"]["box_nms_thresh"]  # and before the box head's NMS was a setting (0.5 then)
    sel.write_text(json.dumps(state))

    seen: list[dict] = []
    nms: list[float] = []
    trainer = FakeTrainer()

    def train_and_record(run_cfg, **kw):
        seen.append(dict(run_cfg.outputs))
        nms.append(kw["train_config"].box_nms_thresh)
        return trainer(run_cfg, **kw)

    monkeypatch.setattr(loop, "_train_and_evaluate", train_and_record)
    run_simulation(cfg, dataset=ds, images_dir=images_dir, out_dir=tmp_path / "out", show_progress=False,
                   resume=True)
    assert seen and all(o == OUTPUTS_BEFORE for o in seen)
    assert nms and all(v == TRAIN_BEFORE["box_nms_thresh"] == 0.5 for v in nms)
