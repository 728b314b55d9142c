"""The simulation's settings: refused bad ones, one training configuration, each round's schedule."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from shoeseg.schedule import round_iters
from shoeseg.simulation.config import SimulationConfig
from shoeseg.train import TrainConfig


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
    assert r2.iters == round_iters(200, 8) == 96  # 12 per new image, at least 40
    assert r2.warmup_iters == 19 and r2.resolved_steps() == (72, 86)  # warm-up and decay follow the short schedule
    assert r2.base_lr == 0.005 and r2.min_size == train.min_size  # half the recipe's rate
    assert SimulationConfig(batch=3, train=train).train_config(seed=0, round=1, init_from="m.pt").iters == 40
    assert SimulationConfig(batch=10, train=train).train_config(seed=0, round=1, init_from="m.pt").iters == 120
    assert SimulationConfig(batch=100, train=train).train_config(seed=0, round=1, init_from="m.pt").iters == 200
    assert SimulationConfig(round_iters=7, train=train).train_config(seed=0, round=1, init_from="m.pt").iters == 7
    tiny = SimulationConfig(train=TrainConfig.for_profile("cpu", iters=2))
    assert tiny.train_config(seed=0, round=1, init_from="m.pt").iters == 2  # never more than round 0's
    with pytest.raises(ValueError, match="init_from is needed"):
        cfg.train_config(seed=0, round=1)
