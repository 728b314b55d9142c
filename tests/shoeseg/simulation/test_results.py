"""The simulation's files: its CSV written and read back, and selections.json's checks."""

from __future__ import annotations

import csv

import pytest

from shoeseg.simulation.results import (
    CSV_COLUMNS,
    new_selections,
    read_csv,
    read_selections,
    write_csv,
    write_selections,
)


def test_csv_round_trip(tmp_path, sim_rows):
    write_csv(sim_rows, tmp_path / "sim.csv")
    with open(tmp_path / "sim.csv") as f:
        assert tuple(next(csv.reader(f))) == CSV_COLUMNS
    back = read_csv(tmp_path / "sim.csv")
    assert [(r["strategy"], r["seed"], r["round"], r["n_labelled"]) for r in back] == [
        (r["strategy"], r["seed"], r["round"], r["n_labelled"]) for r in sim_rows]
    assert back[10]["segm_AP"] == pytest.approx(0.16)


def test_a_csv_from_before_seeds_reads_as_seed_0(tmp_path):
    (tmp_path / "old.csv").write_text("strategy,round,n_labelled,segm_AP,segm_AP50,bbox_AP,seconds\n"
                                      "random,0,8,0.1000,0.2000,0.3000,12.0\n")
    (row,) = read_csv(tmp_path / "old.csv")
    assert row == {"strategy": "random", "seed": 0, "round": 0, "n_labelled": 8, "segm_AP": 0.1, "segm_AP50": 0.2,
                   "bbox_AP": 0.3, "seconds": 12.0}


def test_selections_of_another_run_are_refused_and_the_difference_named(tmp_path):
    fingerprint = {"batch": 8, "start": 8, "train": {"base_lr": 0.02, "iters": 100}}
    path = tmp_path / "selections.json"
    write_selections(path, new_selections(fingerprint, ["a.jpg", "b.jpg"]))
    assert read_selections(path, fingerprint=fingerprint, test=["a.jpg", "b.jpg"])["rounds"] == {}
    other = {"batch": 4, "start": 8, "train": {"base_lr": 0.01, "iters": 100}}
    with pytest.raises(ValueError, match=r"other settings \(batch, train.base_lr\)"):
        read_selections(path, fingerprint=other, test=["a.jpg", "b.jpg"])
    with pytest.raises(ValueError, match="the test split differs"):
        read_selections(path, fingerprint=fingerprint, test=["a.jpg", "c.jpg"])


def test_a_run_from_before_a_new_training_setting_resumes_when_the_setting_is_at_its_default(tmp_path):
    stored = {"batch": 8, "train": {"base_lr": 0.02}}
    path = tmp_path / "selections.json"
    write_selections(path, new_selections(stored, ["a.jpg"]))
    now = {"batch": 8, "train": {"base_lr": 0.02, "mask_resolution": 28, "mask_boundary_weight": 0.0}}
    assert read_selections(path, fingerprint=now, test=["a.jpg"])["config"] == stored
    finer = {"batch": 8, "train": {"base_lr": 0.02, "mask_resolution": 56, "mask_boundary_weight": 0.0}}
    with pytest.raises(ValueError, match=r"other settings \(train.mask_resolution\)"):
        read_selections(path, fingerprint=finer, test=["a.jpg"])


def test_a_run_from_before_the_mask_steps_were_recorded_continues_without_them(tmp_path):
    from shoeseg.simulation.config import OUTPUTS_BEFORE, SimulationConfig

    stored = {"batch": 8, "train": {"base_lr": 0.02}}
    path = tmp_path / "selections.json"
    write_selections(path, new_selections(stored, ["a.jpg"]))
    assert read_selections(path, fingerprint={**stored, "outputs": dict(OUTPUTS_BEFORE)}, test=["a.jpg"])
    served = SimulationConfig().outputs  # a new run records what is served: refined masks
    assert served["mask_refine"] > 0 and served != OUTPUTS_BEFORE
    with pytest.raises(ValueError, match=r"other settings \(outputs\)"):
        read_selections(path, fingerprint={**stored, "outputs": served}, test=["a.jpg"])
