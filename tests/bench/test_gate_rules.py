"""The gate-rule replay on a constructed run: each decision paired with the version it was judged against."""

from __future__ import annotations

import json

import pytest

from bench.bench_gate_rules import coverage, decisions, replay
from shoeseg.gate import INTERVAL


def _version(minute: int, ap: float, promoted: bool, gate: dict | None, kind: str = "idle") -> dict:
    return {"created_at": f"2026-01-01T10:{minute:02d}:00+00:00", "kind": kind, "promoted": promoted,
            "segm_AP": ap, "gate": gate}


def test_each_decision_is_judged_against_the_promoted_version_before_it(tmp_path):
    run = tmp_path / "improving.json"
    run.write_text(json.dumps({"versions": [
        _version(30, 0.55, False, {"diff": -0.05, "ci_low": -0.10, "ci_high": 0.02}),  # the mean drops, interval 0
        _version(0, 0.40, True, {"diff": None}, kind="round"),  # the first version (listed out of order)
        _version(10, 0.50, True, {"diff": 0.04, "ci_low": -0.01, "ci_high": 0.09}),
        _version(20, 0.45, False, {"diff": -0.08, "ci_low": -0.12, "ci_high": -0.02}),  # the evidence says worse
    ]}))
    rows = decisions(run)
    assert [round(r["held_out"], 3) for r in rows] == [0.1, -0.05, 0.05]  # all after the first against 0.50
    assert [r["recorded"] for r in rows] == ["promoted", "refused", "refused"]
    summary = replay(rows, tolerance=0.01)
    interval, tolerance = summary["interval"], summary["interval + tolerance 0.01"]
    assert (interval["promoted"], interval["refused"], interval["refused_not_worse"]) == (2, 1, 0)
    assert (tolerance["promoted"], tolerance["refused"], tolerance["refused_not_worse"]) == (1, 2, 1)
    assert abs(tolerance["promoted_mean"] - 0.1) < 1e-9


def test_the_expanded_rule_widens_a_plain_recorded_interval_and_takes_an_expanded_one_as_recorded(tmp_path):
    run = tmp_path / "improving.json"
    plain = {"diff": -0.05, "ci_low": -0.095, "ci_high": -0.005, "compared_on": 9, "confidence": 0.9}
    run.write_text(json.dumps({"versions": [
        _version(0, 0.40, True, {"diff": None}, kind="round"),
        _version(10, 0.42, False, plain),  # widened about the mean by 1.973 / 1.645: top -0.05 + 1.2 * 0.045 > 0
        _version(20, 0.42, False, {**plain, "ci_high": -0.015}),  # top -0.05 + 1.2 * 0.035 < 0: still worse
        _version(30, 0.42, False, {**plain, "interval": INTERVAL}),  # recorded widened
    ]}))
    rows = decisions(run)
    assert [r["ci_high_expanded"] > 0 for r in rows] == [True, False, False]
    assert rows[2]["ci_high_plain"] == pytest.approx(-0.05 + 0.045 * 1.645 / 1.973, abs=1e-3)  # narrowed back
    assert rows[0]["ci_high_expanded"] == pytest.approx(-0.05 + 0.045 * 1.973 / 1.645, abs=1e-3)
    assert replay(rows, tolerance=0.01)["expanded interval"]["promoted"] == 1


def test_on_nine_images_the_expanded_interval_holds_a_known_mean_more_often_than_the_plain_one():
    plain_held, plain_worse = coverage(9, "normal", expanded=False, trials=300)
    held, worse = coverage(9, "normal", expanded=True, trials=300)
    assert held > plain_held and worse < plain_worse
    assert 0.85 <= held <= 0.95  # the stated 90 %, within what 300 draws can tell
