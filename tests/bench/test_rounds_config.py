"""The learning-curve benchmark scores its trainings as the simulation it reads scored its rows."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench.bench_rounds import _config_from
from shoeseg.simulation.config import OUTPUTS_BEFORE, SimulationConfig
from shoeseg.train import TrainConfig


def _selections(outputs: dict | None) -> dict:
    fp = SimulationConfig(strategies=["random"], seeds=[0], train=replace(TrainConfig.for_profile("cpu"), device="cpu"),
                          outputs=outputs or dict(OUTPUTS_BEFORE)).fingerprint()
    if outputs is None:
        del fp["outputs"]  # a run from before the mask steps were recorded
    return {"config": fp}


def test_a_run_from_before_the_mask_steps_is_scored_without_them():
    assert _config_from(_selections(None), device="cpu").outputs == OUTPUTS_BEFORE


def test_a_run_that_recorded_its_mask_steps_is_scored_with_them():
    steps = {"mask_refine": 0.04, "mask_rescore": True}
    assert _config_from(_selections(steps), device="cpu").outputs == steps


def test_the_command_line_overrides_the_recorded_steps():
    cfg = _config_from(_selections(None), device="cpu", outputs={"mask_refine": 0.04})
    assert cfg.outputs == {"mask_refine": 0.04, "mask_rescore": False}


def test_a_changed_training_setting_is_refused():
    sel = _selections(None)
    sel["config"]["train"]["iters"] += 1
    sel["config"]["train"]["no_such_setting"] = 1
    with pytest.raises(ValueError, match="cannot be rebuilt"):
        _config_from(sel, device="cpu")
