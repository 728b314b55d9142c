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
    from shoeseg.simulation.results import read_csv, write_csv

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
    assert "straight lines between measured rounds" in res.output  # the interpolated shares
    assert "minus random's, paired by seed" in res.output and "+0.000 [+0.000, +0.000] (1)" in res.output
    again = runner.invoke(app, ["al", "plot", str(tmp_path / "a.csv"), str(tmp_path / "a.csv"), "--out",
                                str(tmp_path / "dup.png")])
    assert again.exit_code != 0 and "already in an earlier file" in again.output


def test_the_cli_maps_its_flags_onto_the_profiles_train_config(tmp_path, monkeypatch):
    from shoeseg.simulation import loop
    from shoeseg.train import TrainConfig
    from tests.synth import make_simulation_set
    from via_tools.io import save

    ds, images_dir = make_simulation_set(tmp_path, n=2)
    data = tmp_path / "via.json"
    save(ds, data, fmt="via2")
    seen = {}

    def fake_run(cfg, **kwargs):
        seen["cfg"], seen["kwargs"] = cfg, kwargs
        rows = [{"strategy": "random", "seed": s, "round": r, "n_labelled": 2 + r, "segm_AP": 0.1 * r,
                 "segm_AP50": 0.0, "bbox_AP": 0.0, "seconds": 1.0} for s in (0, 2) for r in range(2)]
        return loop.SimulationResult(rows=rows, csv_path=tmp_path / "a.csv", plot_path=tmp_path / "a.png",
                                     selections_path=tmp_path / "s.json")

    monkeypatch.setattr(loop, "run_simulation", fake_run)
    res = runner.invoke(app, [
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
    bad = runner.invoke(app, ["al", "simulate", "--data", str(data), "--seeds", "0,x"])
    assert bad.exit_code != 0 and "comma list of integers" in bad.output
