"""Exported models (ONNX, TorchScript) against PyTorch: the same detections, their metadata, clear failures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from shoeseg.checkpoint import load_checkpoint
from shoeseg.export import (
    STATIC_INT8_PREFIXES,
    ExportError,
    check_exportable,
    export_model,
    quantize_onnx,
    read_export_meta,
)
from shoeseg.geometry import mask_iou
from shoeseg.predict import Predictor
from shoeseg.runtime import load_predictor
from tests.synth import make_image, tiny_checkpoint

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed (the onnx extra)")

SUFFIX = {"onnx": ".onnx", "torchscript": ".ts"}
#: sizes and aspect ratios other than the one traced (the resize and the Lite body's SAME padding must follow)
SIZES_PX = [(64, 96), (80, 60), (120, 90), (100, 230), (97, 131)]
THRESH = 0.3


@pytest.fixture(scope="module", params=["lite0-fpn", "r50-fpn"])
def exported(request, tmp_path_factory):
    """A checkpoint of a family and its ONNX and TorchScript files (box NMS at 0.5, not the default: the files
    keep the checkpoint's, and random weights give enough overlapping boxes to compare)."""
    d = tmp_path_factory.mktemp(request.param)
    ckpt = tiny_checkpoint(d / "model.pt", arch=request.param, serve_score_thresh=THRESH, box_nms_thresh=0.5)
    files = {fmt: d / f"model{SUFFIX[fmt]}" for fmt in SUFFIX}
    for fmt, path in files.items():
        export_model(ckpt, path, fmt=fmt)
    return ckpt, files


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(7)
    return [make_image(rng, h, w, 2)[0] for h, w in SIZES_PX]


def assert_same_detections(reference, exported_dets, thresh: float) -> None:
    """Each reference detection has an exported one of the same label with mask IoU >= 0.95 and a score within
    0.01; none is extra or missing, but for scores within 0.01 of the threshold."""
    unmatched = list(exported_dets)
    for ref in reference:
        ious = [mask_iou(ref.mask, d.mask) if d.label == ref.label else 0.0 for d in unmatched]
        best = int(np.argmax(ious)) if ious else -1
        if best < 0 or ious[best] < 0.95:
            assert ref.score < thresh + 0.01, f"missing: {ref.label} {ref.score:.4f} {ref.box_xyxy}"
            continue
        got = unmatched.pop(best)
        assert abs(got.score - ref.score) <= 0.01, (got.score, ref.score)
    assert all(d.score < thresh + 0.01 for d in unmatched), [d.score for d in unmatched]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_detections_match_pytorch(exported, images, fmt):
    ckpt, files = exported
    torch_predictor = Predictor.from_checkpoint(ckpt, device="cpu", score_thresh=THRESH, batch_size=1)
    runtime = load_predictor(files[fmt], device="cpu")
    assert runtime.runtime == fmt and runtime.score_thresh == THRESH  # the file's serving threshold
    reference, got = torch_predictor.predict(images), runtime.predict(images)
    assert sum(map(len, reference)) >= 2  # the comparison has detections to compare (thin strips give none)
    for ref, dets, image in zip(reference, got, images, strict=True):
        assert all(d.mask.shape == image.shape[:2] for d in dets)
        assert_same_detections(ref, dets, THRESH)
    # the threshold is an input of the file, not a constant of it
    low = runtime.predict(images[:1], score_thresh=0.0)[0]
    assert len(low) >= len(got[0])
    assert_same_detections(torch_predictor.predict(images[:1], score_thresh=0.0)[0], low, 0.0)
    # so is masks_from: every candidate's box and score, the mask head only from `cut` up, as in PyTorch
    every = runtime.forward_raw(images, score_thresh=0.0)
    cut = float(np.median(np.concatenate([o["scores"].numpy() for o in every])))
    lean = runtime.forward_raw(images, score_thresh=0.0, masks_from=cut)
    lean_torch = torch_predictor.forward_raw(images, score_thresh=0.0, masks_from=cut)
    for out, ref in zip(lean, lean_torch, strict=True):
        assert len(out["scores"]) == len(ref["scores"]) and len(out["masks"]) == int((out["scores"] >= cut).sum())
        assert len(ref["masks"]) == int((ref["scores"] >= cut).sum())
    assert 0 < sum(len(o["masks"]) for o in lean) < sum(len(o["scores"]) for o in lean)
    shown = runtime.predict(images, score_thresh=0.0, masks_from=cut)
    for dets, ref in zip(shown, torch_predictor.predict(images, score_thresh=cut), strict=True):
        with_mask = [d for d in dets if d.mask is not None]
        assert all(d.score >= cut for d in with_mask) and all(d.score < cut for d in dets if d.mask is None)
        assert_same_detections(ref, with_mask, cut)
    assert read_export_meta(files[fmt])["inputs"] == ["image", "score_thresh", "masks_from"]


def test_an_exported_file_reloads_with_its_metadata(exported):
    ckpt, files = exported
    source = load_checkpoint(ckpt)
    for fmt, path in files.items():
        meta = read_export_meta(path)
        assert meta["version"] == source.version and meta["class_names"] == ["shoe"]
        assert meta["export_format"] == fmt and meta["arch"] == source.model_config.arch
        assert meta["input"]["min_size"] == 64 and meta["input"]["max_size"] == 96 and meta["input"]["dynamic_size"]
        assert meta["serve_score_thresh"] == THRESH and meta["mask_thresh"] == 0.5
        assert meta["box_detections_per_img"] == 8 and meta["split"] == {"val": []}
        assert meta["box_nms_thresh"] == 0.5 and meta["model_config"]["box_nms_thresh"] == 0.5
        predictor = load_predictor(path, score_thresh=0.6)
        assert predictor.model_version == source.version and predictor.input_fit == (64, 96)
        assert predictor.score_thresh == 0.6 and predictor.checkpoint_score_thresh == THRESH


def test_unknown_or_corrupt_files_fail_naming_the_file(exported, tmp_path):
    import onnx

    _, files = exported
    garbage = b"\x00not a model\xff" * 40
    for name in ("broken.onnx", "broken.ts"):
        (tmp_path / name).write_bytes(garbage)
        for read in (read_export_meta, load_predictor):
            with pytest.raises(ValueError, match="broken"):
                read(tmp_path / name)
    (tmp_path / "model.xyz").write_bytes(garbage)
    with pytest.raises(ValueError, match=r"model\.xyz.*unknown model file type"):
        read_export_meta(tmp_path / "model.xyz")
    with pytest.raises(FileNotFoundError, match="absent.onnx"):
        load_predictor(tmp_path / "absent.onnx")
    bare = onnx.load(str(files["onnx"]))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(ValueError, match=r"bare\.onnx.*without ShoeSeg metadata"):
        load_predictor(tmp_path / "bare.onnx")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(files["onnx"].read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated.onnx"):
        load_predictor(truncated)


class _Cummax(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.cummax(dim=-1).values  # no ONNX form


def test_what_cannot_be_exported_is_named_by_its_layer(tmp_path):
    from shoeseg.predict import _int8_linear

    ckpt = load_checkpoint(tiny_checkpoint(tmp_path / "model.pt", arch="lite0-fpn", serve_score_thresh=THRESH))
    quantized = load_checkpoint(ckpt.path)
    quantized.model.roi_heads.box_head = _int8_linear(quantized.model.roi_heads.box_head)
    with pytest.raises(ExportError, match=r"layer roi_heads\.box_head\.fc6 .*float model"):
        check_exportable(quantized.model)
    with pytest.raises(ExportError, match=r"roi_heads\.box_head\.fc6"):
        export_model(quantized, tmp_path / "q.onnx")
    ckpt.model.roi_heads.mask_head = nn.Sequential(ckpt.model.roi_heads.mask_head, _Cummax())
    with pytest.raises(ExportError, match=r"layer roi_heads\.mask_head\.1 \(operator aten::cummax\)"):
        export_model(ckpt, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists() and not list(tmp_path.glob("*.tmp"))


def test_serving_choices_are_left_out_and_said(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "model.pt", arch="lite0-fpn", serve_score_thresh=THRESH, int8_box_head=True,
                           flip_tta=True)
    meta = export_model(ckpt, tmp_path / "model.ts", fmt="torchscript")
    assert [n.split(":")[0] for n in meta["left_out"]] == ["int8_box_head", "flip_tta"]
    predictor = load_predictor(tmp_path / "model.ts")
    assert predictor.flip_tta is False
    with pytest.raises(ValueError, match="flip TTA"):
        load_predictor(tmp_path / "model.ts", flip_tta=True)
    with pytest.raises(ValueError, match="int8.*ONNX"):
        export_model(ckpt, tmp_path / "model-int8.ts", fmt="torchscript", int8=True)


def test_onnx_runtime_int8_file_keeps_the_detections(exported, images, tmp_path):
    ckpt, files = exported
    meta = quantize_onnx(files["onnx"], tmp_path / "model.int8.onnx")
    assert meta["quantized"].startswith("int8") and read_export_meta(tmp_path / "model.int8.onnx") == meta
    assert (tmp_path / "model.int8.onnx").stat().st_size < files["onnx"].stat().st_size
    float_dets = load_predictor(files["onnx"]).predict(images)
    int8_dets = load_predictor(tmp_path / "model.int8.onnx").predict(images)
    assert sum(map(len, int8_dets)) == pytest.approx(sum(map(len, float_dets)), abs=2)
    for a, b in zip(float_dets, int8_dets, strict=True):
        for x, y in zip(a, b, strict=False):
            assert abs(x.score - y.score) < 0.05


def test_calibrated_int8_quantises_the_pyramid_and_rpn_convolutions_and_keeps_the_detections(exported, images,
                                                                                             tmp_path):
    from onnx import load as load_onnx

    ckpt, files = exported
    if load_checkpoint(ckpt).model_config.arch == "r50-fpn":
        pytest.skip("random R50 weights score many boxes within int8's error (mean score change 0.07); the "
                    "calibrated int8 file is the cpu profile's, a Lite family")
    rng = np.random.default_rng(3)
    calibration = [make_image(rng, 64, 90, 2)[0] for _ in range(4)]
    meta = quantize_onnx(files["onnx"], tmp_path / "model.static.onnx", calibration=calibration)
    assert meta["quantized"].startswith("int8 static (calibrated on 4 images)") and "MatMul" in meta["quantized"]
    graph = load_onnx(str(tmp_path / "model.static.onnx")).graph
    quantised = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    # the pyramid's and RPN's convolutions read int8 weights; the body's and the mask head's stay float
    assert all((n.input[1] in quantised) == n.name.startswith(STATIC_INT8_PREFIXES) for n in convs)
    assert any(n.name.startswith(STATIC_INT8_PREFIXES) for n in convs)
    float_dets = load_predictor(files["onnx"]).predict(images)
    int8_dets = load_predictor(tmp_path / "model.static.onnx").predict(images)
    assert sum(map(len, int8_dets)) == pytest.approx(sum(map(len, float_dets)), abs=2)
    # random weights score many boxes alike, so int8 may swap neighbours: scores compared in order, on average
    diffs = [abs(x - y) for a, b in zip(float_dets, int8_dets, strict=True)
             for x, y in zip(sorted(d.score for d in a), sorted(d.score for d in b), strict=False)]
    assert np.mean(diffs) < 0.05


def test_export_int8_calibrates_on_the_images_the_checkpoint_keeps(tmp_path):
    from shoeseg.checkpoint import save_checkpoint

    plain = load_checkpoint(tiny_checkpoint(tmp_path / "plain.pt"))
    rng = np.random.default_rng(4)
    save_checkpoint(tmp_path / "kept.pt", model=plain.model, class_names=["shoe"],
                    calibration_images=[make_image(rng, 64, 90, 1)[0] for _ in range(3)])
    assert export_model(tmp_path / "plain.pt", tmp_path / "plain.onnx", int8=True)["quantized"] == \
        "int8 dynamic: MatMul, Gemm"
    assert "static (calibrated on 3 images)" in export_model(tmp_path / "kept.pt", tmp_path / "kept.onnx",
                                                            int8=True)["quantized"]


def test_a_torchscript_file_loads_in_a_fresh_process(exported):
    """The file calls torchvision's operators, which only importing torchvision registers."""
    import subprocess
    import sys

    _, files = exported
    code = ("from shoeseg.runtime import ExportedPredictor; import numpy as np; "
            f"p = ExportedPredictor({str(files['torchscript'])!r}); "
            "print(len(p.predict([np.zeros((40, 50, 3), np.uint8)], score_thresh=0.0)[0]))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


def test_a_point_head_model_exports_with_its_refined_masks(images, tmp_path):
    """The point head's subdivision (top-k of the least certain cells, grid sampling, scatter) is part of the
    exported graph: ONNX Runtime gives PyTorch's refined masks."""
    source = load_checkpoint(tiny_checkpoint(tmp_path / "plain.pt", mask_point_steps=2, box_nms_thresh=0.5))
    with torch.no_grad():  # a head that corrects (an untrained one serves the upsampled coarse masks)
        nn.init.normal_(source.model.roi_heads.point_head.predictor.weight, std=0.5)
    from shoeseg.checkpoint import save_checkpoint

    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, model=source.model, class_names=["shoe"], serve_score_thresh=THRESH,
                    extra={"split": {"val": []}})
    export_model(ckpt, tmp_path / "model.onnx", fmt="onnx")
    assert load_checkpoint(ckpt).model_config.mask_point_steps == 2
    reference = Predictor.from_checkpoint(ckpt, device="cpu", score_thresh=THRESH, batch_size=1).predict(images)
    got = load_predictor(tmp_path / "model.onnx", device="cpu").predict(images)
    assert sum(map(len, reference)) >= 2
    for ref, dets in zip(reference, got, strict=True):
        assert_same_detections(ref, dets, THRESH)
