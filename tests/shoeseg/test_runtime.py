"""Serving runtimes: SHOESEG_RUNTIME, the ONNX file kept beside a version's checkpoint, and the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from shoeseg import runtime
from shoeseg.export import read_export_meta
from shoeseg.predict import Predictor
from shoeseg.runtime import ExportedPredictor, load_predictor, resolve_runtime
from shoeseg_app.cli import app
from shoeseg_services.settings import Settings, SettingsError
from tests.synth import make_image, make_shoe_dataset, tiny_checkpoint
from via_tools.io import save

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed (the onnx extra)")


def test_the_runtime_setting_is_read_and_checked(monkeypatch):
    assert Settings.from_env({}).runtime == "auto"
    assert Settings.from_env({"SHOESEG_RUNTIME": "onnx"}).runtime == "onnx"
    with pytest.raises(SettingsError, match="SHOESEG_RUNTIME='tensorrt'"):
        Settings.from_env({"SHOESEG_RUNTIME": "tensorrt"})
    assert resolve_runtime("torch", "cpu") == "torch" and resolve_runtime("onnx", "cpu") == "onnx"
    assert resolve_runtime("auto", "cpu") == "onnx"  # the faster on the benchmark's CPU (bench/bench_runtime.py)
    with pytest.raises(ValueError, match="unknown runtime"):
        resolve_runtime("tflite")
    monkeypatch.setattr(runtime, "onnxruntime_available", lambda: False)
    assert resolve_runtime("auto", "cpu") == "torch"
    with pytest.raises(ValueError, match=r"pip install 'shoeseg\[onnx\]'"):
        resolve_runtime("onnx", "cpu")


def test_a_version_gets_its_onnx_file_beside_its_checkpoint_once(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "versions" / "v1" / "model.pt")
    served = load_predictor(ckpt, runtime="onnx", device="cpu", score_thresh=0.3, batch_size=4)
    onnx_file = tmp_path / "versions" / "v1" / "model.onnx"
    assert isinstance(served, ExportedPredictor) and served.runtime == "onnx" and onnx_file.is_file()
    assert served.batch_size == 4 and served.input_fit == (64, 96)
    stamp = onnx_file.stat().st_mtime_ns
    again = load_predictor(ckpt, runtime="auto", device="cpu", score_thresh=0.3)
    assert isinstance(again, ExportedPredictor) and onnx_file.stat().st_mtime_ns == stamp  # reused
    plain = load_predictor(ckpt, runtime="torch", device="cpu", score_thresh=0.3)
    assert type(plain) is Predictor
    rng = np.random.default_rng(3)
    image = make_image(rng, 70, 100, 2)[0]
    a, b = plain.predict([image])[0], served.predict([image])[0]
    assert len(a) == len(b) and np.allclose([d.score for d in a], [d.score for d in b], atol=0.01)
    # what an exported file cannot do runs on the checkpoint it came from
    box = a[0].box_xyxy
    assert served.predict_in_box(image, box).score == pytest.approx(plain.predict_in_box(image, box).score, abs=1e-4)
    assert np.allclose(served.embed([image]), plain.embed([image]), atol=1e-5)
    alone = load_predictor(onnx_file)
    with pytest.raises(NotImplementedError, match="model.onnx"):
        alone.embed([image])


def test_two_processes_loading_one_new_version_export_it_once(tmp_path, monkeypatch):
    """The worker (before promoting) and the backend (on its next request) ask for the same version's file at
    once: the lock makes the second wait for the first's export instead of exporting it again."""
    import threading

    ckpt = tiny_checkpoint(tmp_path / "versions" / "v1" / "model.pt")
    exports, real = [], runtime.export_model

    def counted(*args, **kwargs):
        exports.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(runtime, "export_model", counted)
    paths: list = []
    callers = [threading.Thread(target=lambda: paths.append(runtime.serving_export(ckpt, runtime="onnx", device="cpu")))
               for _ in range(2)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert paths == [tmp_path / "versions" / "v1" / "model.onnx"] * 2 and len(exports) == 1
    from shoeseg.checkpoint import read_checkpoint_meta

    assert read_export_meta(paths[0])["version"] == read_checkpoint_meta(ckpt)["version"]
    assert runtime.serving_export(ckpt, runtime="torch", device="cpu") is None  # PyTorch serves the checkpoint


def test_an_int8_box_head_is_served_by_onnx_runtime_int8(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "model.pt", int8_box_head=True)
    served = load_predictor(ckpt, runtime="onnx", device="cpu")
    assert served.checkpoint_path == tmp_path / "model.int8.onnx"
    assert read_export_meta(served.checkpoint_path)["quantized"].startswith("int8")
    assert served.score_thresh == 0.3  # the checkpoint's serving threshold


def test_export_then_predict_and_eval_with_the_file(tmp_path):
    runner = CliRunner()
    ds = make_shoe_dataset(tmp_path / "images", n_images=3, size_px=(64, 80), seed=5)
    save(ds, tmp_path / "via_project.json", fmt="via2")
    ckpt = tiny_checkpoint(tmp_path / "run" / "model.pt")
    res = runner.invoke(app, ["export", ckpt, "--format", "onnx", "--out", str(tmp_path / "model.onnx")])
    assert res.exit_code == 0, res.output
    assert "exported" in res.output and "classes shoe" in res.output and "64-96 px" in res.output
    res = runner.invoke(app, ["export", ckpt, "--format", "torchscript", "--out", str(tmp_path / "model.onnx")])
    assert res.exit_code == 2 and "suffix .ts" in res.output
    res = runner.invoke(app, ["predict", str(tmp_path / "images"), "--model", str(tmp_path / "model.onnx"),
                              "--out", str(tmp_path / "preds"), "--score-thresh", "0.3"])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "preds" / "predictions.json").read_text())
    assert len(rows["images"]) == 3 and rows["version"] == read_export_meta(tmp_path / "model.onnx")["version"]
    res = runner.invoke(app, ["eval", "--model", str(tmp_path / "model.onnx"), "--data", str(tmp_path / "via_project.json"),
                              "--split", "all", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "eval-all.json").read_text())
    assert report["model"].endswith("model.onnx") and "segm_AP" in report["metrics"]
    (tmp_path / "corrupt.onnx").write_bytes(b"garbage" * 10)
    res = runner.invoke(app, ["predict", str(tmp_path / "images"), "--model", str(tmp_path / "corrupt.onnx"),
                              "--out", str(tmp_path / "p2")])
    assert res.exit_code == 2 and "corrupt.onnx" in res.output and "Traceback" not in res.output
