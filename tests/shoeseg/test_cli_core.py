"""`shoeseg train | eval | predict | models` through the real command line (typer's runner)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from shoeseg.checkpoint import load_checkpoint, save_checkpoint
from shoeseg.model import coco_weights_reachable
from shoeseg_app.cli import app
from tests.synth import make_shoe_dataset
from via_tools.io import load, save

runner = CliRunner()


@pytest.fixture(scope="module")
def via_dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    ds = make_shoe_dataset(d / "images", n_images=4, size_px=(64, 80), seed=31)
    save(ds, d / "via_project.json", fmt="via2")
    return d


def test_train_with_coco_weights_offline_stops_at_once(via_dataset, tmp_path, monkeypatch):
    if coco_weights_reachable(timeout_s=2):
        pytest.skip("the network is reachable here, so the offline failure cannot be shown")
    import torch

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    t0 = time.perf_counter()
    res = runner.invoke(app, ["train", "--data", str(via_dataset / "via_project.json"), "--out", str(tmp_path / "run"),
                              "--weights", "coco"])  # the default, auto, takes the packaged lite2 weights offline
    assert res.exit_code == 2
    assert "--weights none" in res.output and "--weights PATH" in res.output
    assert time.perf_counter() - t0 < 30 and not (tmp_path / "run").exists()


def test_bad_input_is_one_clear_line(via_dataset, tmp_path):
    res = runner.invoke(app, ["train", "--data", str(tmp_path / "missing.json"), "--out", str(tmp_path / "r"),
                              "--weights", "none"])
    assert res.exit_code == 2 and "missing.json" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["predict", str(tmp_path / "nope.jpg"), "--model", str(tmp_path / "m.pt"),
                              "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "nope.jpg" in res.output


def test_train_with_the_outline_levers_keeps_them_in_the_checkpoint_and_logs_their_losses(via_dataset, tmp_path):
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", "--data", str(via_dataset / "via_project.json"), "--out", str(run),
                              "--weights", "none", "--arch", "lite0-fpn", "--iters", "2", "--min-size", "64",
                              "--max-size", "80", "--roi-batch", "16", "--log-period", "1", "--device", "cpu",
                              "--mask-resolution", "56", "--mask-boundary-weight", "0.5", "--mask-point-steps", "1"])
    assert res.exit_code == 0, res.output
    cfg = load_checkpoint(run / "model.pt").model_config
    assert (cfg.mask_resolution, cfg.mask_boundary_weight, cfg.mask_point_steps) == (56, 0.5, 1)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["loss_mask_boundary"] <= 0.5 for r in rows)
    assert all(r["loss_mask_point"] >= 0 for r in rows)
    assert all(r["total_loss"] >= r["loss_mask"] + r["loss_mask_boundary"] + r["loss_mask_point"] for r in rows)


def test_train_eval_predict_and_models_end_to_end(via_dataset, tmp_path, monkeypatch):
    d = via_dataset
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", "--data", str(d / "via_project.json"), "--out", str(run), "--weights", "none",
                              "--iters", "2", "--min-size", "64", "--max-size", "80", "--roi-batch", "16",
                              "--log-period", "1", "--base-lr", "0.005", "--device", "cpu", "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert {"model.pt", "metrics.jsonl", "split.json", "loss_curve.png", "eval.json"} <= {p.name for p in run.iterdir()}
    split = json.loads((run / "split.json").read_text())
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (3, 1, 0) and split["seed"] == 3
    assert "total_loss" in res.output and "segm" in res.output
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2

    res = runner.invoke(app, ["eval", "--model", str(run / "model.pt"), "--data", str(d / "via_project.json"),
                              "--split", "val", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    report = json.loads((run / "eval-val.json").read_text())
    assert report["split"] == "val" and report["n_images"] == 1
    assert [p["file_name"] for p in report["per_image"]] == split["val"]
    assert set(report["metrics"]) == {"bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", "segm_AP50", "segm_AP75"}
    assert "loss_mask" in report["losses"] and "AP50" in res.output

    out = tmp_path / "pred"
    res = runner.invoke(app, ["predict", str(d / "images"), "--model", str(run / "model.pt"), "--out", str(out),
                              "--score-thresh", "0", "--overlay", "--masks", "--dilate", "2", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    preds = json.loads((out / "predictions.json").read_text())
    assert len(preds["images"]) == 4 and preds["version"] == load_checkpoint(run / "model.pt").version
    n_dets = [len(i["detections"]) for i in preds["images"]]
    assert sum(n_dets) > 0  # a threshold of 0 keeps every detection with a non-empty mask
    via = load(out / "predictions_via.json")
    # VIA polygons have one part each: a detection split in two parts is written as two VIA regions of one
    # group, and read back as one region with both parts
    assert [len(r.regions) for r in via.images] == n_dets
    assert [[len(r.polygons) for r in im.regions] for im in via.images] == [
        [len(d["polygons"]) for d in i["detections"]] for i in preds["images"]]
    first = preds["images"][0]
    stem = first["file_name"].rsplit(".", 1)[0]
    assert Image.open(out / "overlays" / f"{stem}.jpg").size == (80, 64)
    union = np.asarray(Image.open(out / "masks" / f"{stem}_mask.png"))
    assert union.shape == (64, 80) and set(np.unique(union)) <= {0, 255}
    assert len(list((out / "masks").glob(f"{stem}_shoe*.png"))) == len(first["detections"])

    registry = tmp_path / "models"
    monkeypatch.setenv("SHOESEG_MODEL_DIR", str(registry))
    res = runner.invoke(app, ["models", "register", str(run / "model.pt"), "--promote"])
    assert res.exit_code == 0, res.output
    first_version = load_checkpoint(run / "model.pt").version
    ckpt = load_checkpoint(run / "model.pt")
    child = save_checkpoint(tmp_path / "child.pt", model=ckpt.model, class_names=ckpt.class_names,
                            parent_version=first_version)
    assert runner.invoke(app, ["models", "register", str(tmp_path / "child.pt")]).exit_code == 0
    assert runner.invoke(app, ["models", "promote", child]).exit_code == 0
    listing = runner.invoke(app, ["models", "list"])
    assert listing.exit_code == 0 and f"* {child}" in listing.output and first_version in listing.output
    res = runner.invoke(app, ["models", "rollback"])
    assert res.exit_code == 0 and first_version in res.output
    assert (registry / "current").read_text().strip() == first_version
    listed = json.loads(runner.invoke(app, ["models", "list", "--json"]).output)
    assert {v["version"]: v["status"] for v in listed} == {first_version: "promoted", child: "candidate"}
    res = runner.invoke(app, ["models", "promote", "no-such-version"])
    assert res.exit_code == 2 and "no-such-version" in res.output
    res = runner.invoke(app, ["eval", "--model", "current", "--data", str(d / "via_project.json"), "--split", "all",
                              "--out", str(tmp_path / "all.json"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "all.json").read_text())["n_images"] == 4
