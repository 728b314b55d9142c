"""`shoeseg al` input errors (the real-server test of `al next` is tests/e2e/test_al_next.py)."""

from __future__ import annotations

from typer.testing import CliRunner

from shoeseg_app.cli import app

runner = CliRunner()


def test_simulate_refuses_an_unknown_strategy(tmp_path):
    data = tmp_path / "via.json"
    data.write_text("{}")
    res = runner.invoke(app, ["al", "simulate", "--data", str(data), "--strategy", "random,bogus"])
    assert res.exit_code != 0
    assert "unknown active-learning strategy 'bogus'" in res.output


def test_next_needs_a_server(monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    res = runner.invoke(app, ["al", "next", "--project", "1"])
    assert res.exit_code != 0
    assert "--url" in res.output


def test_plot_combines_simulation_csvs(tmp_path):
    from shoeseg.al_simulate import read_csv, write_csv

    def rows(strategy):
        return [{"strategy": strategy, "round": r, "n_labelled": 8 * (r + 1), "segm_AP": 0.01 * r, "segm_AP50": 0.02 * r,
                 "bbox_AP": 0.0, "seconds": 3.0} for r in range(3)]

    write_csv(rows("random"), tmp_path / "a.csv")
    write_csv(rows("entropy"), tmp_path / "b.csv")
    res = runner.invoke(app, ["al", "plot", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--out",
                              str(tmp_path / "all.png")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "all.png").read_bytes()[:4] == b"\x89PNG"
    assert [r["strategy"] for r in read_csv(tmp_path / "all.csv")] == ["random"] * 3 + ["entropy"] * 3
    again = runner.invoke(app, ["al", "plot", str(tmp_path / "a.csv"), str(tmp_path / "a.csv"), "--out",
                                str(tmp_path / "dup.png")])
    assert again.exit_code != 0 and "already in an earlier file" in again.output
