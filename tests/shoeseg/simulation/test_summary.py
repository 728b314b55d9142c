"""What the rows say over seeds: mean and spread, and the labels each strategy needs to reach random's final AP."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shoeseg.simulation.results import read_csv, write_csv
from shoeseg.simulation.summary import (
    format_label_shares,
    format_paired_differences,
    labels_to_reach,
    paired_differences,
    summarise,
)


def test_summarise_gives_mean_and_spread_over_seeds(sim_rows):
    (first, *_), = [summarise(sim_rows)["entropy"]]
    assert (first["n_labelled"], first["n"]) == (4, 2)
    assert (first["mean"], first["min"], first["max"]) == pytest.approx((0.055, 0.05, 0.06))


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


def _rows(curves):
    return [{"strategy": s, "seed": seed, "round": r, "n_labelled": 10 * (r + 1), "segm_AP": ap}
            for s, by_seed in curves.items() for seed, aps in by_seed.items() for r, ap in enumerate(aps)]


def test_interpolated_labels_are_read_off_the_line_between_the_rounds_around_the_target():
    rows = _rows({
        "random": {0: [0.50, 0.60, 0.70, 0.80], 1: [0.50, 0.60, 0.70, 0.80]},  # final mean 0.80
        "lc": {0: [0.50, 0.70, 0.90, 0.95],  # crosses 0.80 halfway from 20 to 30 labels: 25
               1: [0.50, 0.60, 0.75, 0.85],  # 0.75 at 30, 0.85 at 40: 35
               2: [0.85, 0.90, 0.95, 0.99],  # at or above from its first round: 10
               3: [0.50, 0.60, 0.70, 0.79]},  # never
    })
    measured = {x.strategy: x for x in labels_to_reach(rows)}
    line = {x.strategy: x for x in labels_to_reach(rows, interpolate=True)}
    assert measured["lc"].labels == {0: 30, 1: 40, 2: 10, 3: None}
    assert line["lc"].labels == pytest.approx({0: 25.0, 1: 35.0, 2: 10, 3: None})
    assert line["lc"].shares == pytest.approx({0: 0.625, 1: 0.875, 2: 0.25, 3: None})
    assert line["lc"].reached == 3 and line["lc"].mean == pytest.approx((0.625 + 0.875 + 0.25) / 3)
    assert line["random"].labels == {0: 40, 1: 40}  # the baseline reaches its own final mean at its last round
    text = format_label_shares(list(line.values()))
    assert "straight lines" in text and "0: 25.0" in text and "3: not reached" in text
    assert "steps of the batch" in format_label_shares(list(measured.values()))


def test_paired_differences_pair_each_seed_with_its_own_random_run():
    rows = _rows({
        "random": {0: [0.5, 0.6], 1: [0.4, 0.7]},
        "lc": {0: [0.5, 0.65], 1: [0.4, 0.68], 2: [0.9, 0.9]},  # seed 2 has no random run: left out
    })
    diffs = paired_differences(rows)
    assert list(diffs) == ["lc"]
    first, second = diffs["lc"]
    assert (first["n_labelled"], first["n"], first["mean"]) == (10, 2, pytest.approx(0.0))
    assert (second["n_labelled"], second["n"]) == (20, 2)
    assert (second["mean"], second["min"], second["max"]) == pytest.approx((0.015, -0.02, 0.05))
    text = format_paired_differences(diffs)
    assert "+0.015 [-0.020, +0.050] (2)" in text and "20 labelled" in text
