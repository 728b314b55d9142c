"""The gate-rule replay on a constructed run: each decision paired with the version it was judged against."""

from __future__ import annotations

import json

from bench.bench_gate_rules import decisions, replay


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
