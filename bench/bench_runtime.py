"""Serving runtimes side by side on real shoes: PyTorch, TorchScript and ONNX Runtime, float and int8.

On `../shared/datasets/shoes`, the held-out images of `shoeseg train`'s seed-0 split (val + test, nothing of
them trained on), each decoded to fit the model's input size as the backend and the worker do. One model:
``--checkpoint PATH``, else one trained here with the `cpu` profile on the split's train part (about 14
minutes on 2 cores). The parent exports it (``shoeseg.export``) once per file kind; each runtime then runs in a
child process of its own, so that its peak RSS is its own. Rows:

* ``PyTorch float``: the checkpoint's float model (:class:`shoeseg.predict.Predictor`);
* ``PyTorch channels-last``: the same with the body and pyramid in channels-last memory;
* ``PyTorch int8 box head``: dynamic int8 on the box head's linear layers (the `cpu` profile's serving choice);
* ``torch.compile``: the body and pyramid compiled (inductor, dynamic shapes; the RPN and RoI heads have
  data-dependent shapes and stay eager), when it compiles in time;
* ``TorchScript``: the exported ``.ts`` file (a trace of the same graph as the ONNX file);
* ``ONNX Runtime float`` / ``int8``: the exported ``.onnx`` file, and ONNX Runtime's dynamic int8 quantisation
  of its matrix products (the box head), and of its convolutions too (``int8 + conv``);
* ``ONNX Runtime int8 calibrated``: what serving uses for a checkpoint that keeps calibration images
  (``shoeseg.export.quantize_onnx``): the box head dynamic int8, the pyramid's and RPN's convolutions static
  int8 calibrated on the checkpoint's images, or, for a checkpoint from before they were kept, on the same
  number of the split's training images picked the same way (what training would have kept).

Columns: ms per image end to end (``predict([image])``: the model, masks at image size, polygons; median over
the images after two warm-up calls, one image per call, at the checkpoint's serving threshold), the forward
alone (``forward_raw``), mask and box AP (pycocotools, detections from 0.05), the change of mask AP against
PyTorch float, peak RSS of the child process (start-up, load and serving; before the AP pass), the load time.
Every runtime uses all cores (``torch.set_num_threads`` / ONNX Runtime's intra-op threads).

Run: ``python -m bench runtime [--checkpoint PATH] [--out DIR] [--rows ort-float,torch-float] [--shoes DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHOES = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "shoes"
ROWS = {
    "torch-float": "PyTorch float",
    "torch-channels-last": "PyTorch channels-last",
    "torch-int8": "PyTorch int8 box head",
    "torch-compile": "torch.compile (body + FPN)",
    "torchscript": "TorchScript",
    "ort-float": "ONNX Runtime float",
    "ort-int8": "ONNX Runtime int8 (box head)",
    "ort-int8-static": "ONNX Runtime int8 calibrated (box head; pyramid + RPN convolutions static)",
    "ort-int8-conv": "ONNX Runtime int8 + conv",
}
#: the file each exported row runs (made by the parent)
FILES = {"torchscript": "model.ts", "ort-float": "model.onnx", "ort-int8": "model.int8.onnx",
         "ort-int8-static": "model.int8static.onnx", "ort-int8-conv": "model.int8conv.onnx"}
CHILD_TIMEOUT_S = 1200


def _data(shoes: Path):
    from shoeseg.data import split_dataset, subset
    from via_tools.io import load
    from via_tools.options import ReadOptions

    images_dir = shoes / "images"
    ds = load(shoes / "via_project.json", options=ReadOptions(images_dir=images_dir))
    split = split_dataset(ds, seed=0)
    return ds, split, subset(ds, list(split["val"]) + list(split["test"])), images_dir


def _serving_arrays(held, images_dir: Path, fit: tuple[int, int]):
    from shoeseg.data import resolve_image_path
    from via_tools.images import decode_image_scaled

    return [decode_image_scaled(resolve_image_path(images_dir, rec).read_bytes(), name=rec.file_name,
                                fit_within=fit)[0] for rec in held.images]


def _predictor(row: str, checkpoint: Path, file: Path | None):
    import torch

    from shoeseg.checkpoint import load_checkpoint
    from shoeseg.predict import Predictor, _int8_linear
    from shoeseg.runtime import ExportedPredictor

    if file is not None:
        return ExportedPredictor(file, device="cpu", score_thresh=0.05)
    ckpt = load_checkpoint(checkpoint)
    p = Predictor(ckpt.model, class_names=ckpt.class_names, model_version=ckpt.version, device="cpu",
                  score_thresh=0.05, batch_size=1, flip_tta=False)
    p.checkpoint_score_thresh = ckpt.serve_score_thresh
    if row == "torch-channels-last":
        p.model.backbone.to(memory_format=torch.channels_last)
    elif row == "torch-int8":
        p.model.roi_heads.box_head = _int8_linear(p.model.roi_heads.box_head)
    elif row == "torch-compile":
        p.model.backbone = torch.compile(p.model.backbone, dynamic=True)
    return p


def run_row(row: str, checkpoint: Path, file: Path | None, shoes: Path) -> dict:
    """One runtime in this process: its timing, AP and peak RSS."""
    import torch

    from shoeseg.evaluate import evaluate

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    _, _, held, images_dir = _data(shoes)
    t0 = time.perf_counter()
    predictor = _predictor(row, checkpoint, file)
    load_s = time.perf_counter() - t0
    serve_thresh = predictor.checkpoint_score_thresh
    serve_thresh = 0.5 if serve_thresh is None else float(serve_thresh)
    arrays = _serving_arrays(held, images_dir, predictor.input_fit)
    t0 = time.perf_counter()
    for arr in arrays[:2]:  # warm-up (torch.compile compiles here)
        predictor.predict([arr], score_thresh=serve_thresh)
    warm_s = time.perf_counter() - t0
    end_to_end, forward = [], []
    for arr in arrays:
        t0 = time.perf_counter()
        predictor.predict([arr], score_thresh=serve_thresh)
        end_to_end.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        predictor.forward_raw([arr], score_thresh=serve_thresh)
        forward.append(time.perf_counter() - t0)
    peak_mb = _peak_rss_mb()
    metrics = evaluate(predictor, held, images_dir=images_dir, with_losses=False).metrics
    return {"row": row, "ms": statistics.median(end_to_end) * 1000, "ms_mean": statistics.mean(end_to_end) * 1000,
            "forward_ms": statistics.median(forward) * 1000, "segm_AP": metrics.get("segm_AP"),
            "bbox_AP": metrics.get("bbox_AP"), "peak_rss_mb": peak_mb, "load_s": load_s, "warm_up_s": warm_s,
            "images": len(arrays), "image_px": sorted({a.shape[:2] for a in arrays})[:3],
            "serve_thresh": serve_thresh, "threads": torch.get_num_threads()}


def _peak_rss_mb() -> float:
    """This process's peak resident memory: ``VmHWM`` (ru_maxrss keeps the parent's peak across fork and exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _train(out: Path, shoes: Path) -> Path:
    from shoeseg.data import subset
    from shoeseg.train import TrainConfig, train

    ds, split, _, images_dir = _data(shoes)
    cfg = TrainConfig.for_profile("cpu", device="cpu", progress_bar=False)
    print(f"no --checkpoint: training {cfg.arch} with the cpu profile ({cfg.iters} iterations) ...", flush=True)
    result = train(cfg, dataset=subset(ds, split["train"]), images_dir=images_dir, out_dir=out / "train", split=split)
    return result.checkpoint


def _calibration(checkpoint: Path, shoes: Path) -> list:
    from shoeseg.checkpoint import read_calibration_images, read_checkpoint_meta
    from shoeseg.data import calibration_images, subset

    kept = read_calibration_images(checkpoint)
    if kept:
        return kept
    ds, split, _, images_dir = _data(shoes)
    mcfg = read_checkpoint_meta(checkpoint)["model_config"]
    print("the checkpoint keeps no calibration images: calibrating on the split's training images", flush=True)
    return calibration_images(subset(ds, split["train"]), images_dir=images_dir,
                              fit=(mcfg["min_size"], mcfg["max_size"]))


def _export(checkpoint: Path, out: Path, rows: list[str], shoes: Path) -> dict[str, dict]:
    from shoeseg.export import export_model, quantize_onnx

    made: dict[str, dict] = {}
    for row in rows:
        if row not in FILES:
            continue
        path = out / FILES[row]
        t0 = time.perf_counter()
        if row == "torchscript":
            export_model(checkpoint, path, fmt="torchscript")
        elif row == "ort-float":
            export_model(checkpoint, path, fmt="onnx")
        else:
            if not (out / FILES["ort-float"]).is_file():
                export_model(checkpoint, out / FILES["ort-float"], fmt="onnx")
            if row == "ort-int8-static":
                quantize_onnx(out / FILES["ort-float"], path, calibration=_calibration(checkpoint, shoes))
            else:
                ops = ("MatMul", "Gemm") if row == "ort-int8" else ("MatMul", "Gemm", "Conv")
                quantize_onnx(out / FILES["ort-float"], path, op_types=ops)
        made[row] = {"path": str(path), "export_s": time.perf_counter() - t0, "mb": path.stat().st_size / 2**20}
    return made


def _fmt(v, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench runtime")
    parser.add_argument("--checkpoint", type=Path, help="the model (default: train one with the cpu profile)")
    parser.add_argument("--out", type=Path, help="folder of the exported files and runtime.json")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"a subset of {', '.join(ROWS)}")
    parser.add_argument("--child-timeout", type=int, default=CHILD_TIMEOUT_S,
                        help="seconds one runtime may take (torch.compile compiles for minutes on 2 cores)")
    parser.add_argument("--shoes", type=Path, default=SHOES, help="the shoe photos (default: ../shared beside the "
                        "checkout)")
    args = parser.parse_args(argv or [])
    shoes = args.shoes.resolve()
    if not (shoes / "via_project.json").is_file():
        print(f"skipped: {shoes} is not here (the shared shoe photos)")
        return
    rows = [r for r in args.rows.split(",") if r]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-runtime-"))
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = (args.checkpoint or _train(out, shoes)).resolve()
    files = _export(checkpoint, out, rows, shoes)
    results = []
    for row in rows:
        print(f"running {ROWS[row]} ...", flush=True)
        cmd = [sys.executable, "-m", "bench.bench_runtime", "--row", row, str(checkpoint),
               files[row]["path"] if row in files else "-", str(shoes)]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.child_timeout)
        except subprocess.TimeoutExpired:
            results.append({"row": row, "error": f"did not finish in {args.child_timeout} s"})
            continue
        if res.returncode != 0:
            lines = res.stderr.strip().splitlines() or ["?"]
            last = next((x for x in reversed(lines) if re.match(r"^\w+(Error|Exception)\b", x)), lines[-1])
            results.append({"row": row, "error": last[:200]})
            continue
        results.append({**json.loads(res.stdout.strip().splitlines()[-1]), **files.get(row, {})})
    (out / "runtime.json").write_text(json.dumps({"checkpoint": str(checkpoint), "rows": results}, indent=1))
    _print(results, checkpoint, shoes)
    print(f"\nexported files and runtime.json in {out}")


def _print(results: list[dict], checkpoint: Path, shoes: Path) -> None:
    from shoeseg.checkpoint import read_checkpoint_meta

    mcfg = read_checkpoint_meta(checkpoint)["model_config"]
    ok = [r for r in results if "error" not in r]
    base = next((r for r in ok if r["row"] == "torch-float"), None)
    first = ok[0] if ok else {}
    print(f"\nServing runtimes on {shoes.name}, held-out images of the seed-0 split ({first.get('images', '?')}, "
          f"decoded to fit {mcfg['min_size']}-{mcfg['max_size']} px), {mcfg['arch']} ({checkpoint}), "
          f"{os.cpu_count()} CPU cores, serving threshold {first.get('serve_thresh', '?')}")
    print("| runtime | ms/img end to end (median) | forward ms/img | mask AP | mask AP vs PyTorch float | box AP | "
          "peak RSS MB | load s | file MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {ROWS[r['row']]} | did not run: {r['error']} | | | | | | | |")
            continue
        delta = "-" if base is None or r["segm_AP"] is None else f"{r['segm_AP'] - base['segm_AP']:+.3f}"
        print(f"| {ROWS[r['row']]} | {r['ms']:.0f} | {r['forward_ms']:.0f} | {_fmt(r['segm_AP'])} | {delta} | "
              f"{_fmt(r['bbox_AP'])} | {r['peak_rss_mb']:.0f} | {r['load_s']:.1f} | {_fmt(r.get('mb'), '.0f')} |")
    if base is not None:
        same = [r for r in ok if r["segm_AP"] is not None and r["segm_AP"] >= base["segm_AP"] - 0.01]
        best = min(same, key=lambda r: r["ms"])
        print(f"\nfastest at mask AP within 0.01 of PyTorch float: {ROWS[best['row']]} ({best['ms']:.0f} ms/img, "
              f"{base['ms'] / best['ms']:.2f}x PyTorch float)")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--row":
        import logging

        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        file_arg = None if sys.argv[4] == "-" else Path(sys.argv[4])
        print(json.dumps(run_row(sys.argv[2], Path(sys.argv[3]), file_arg, Path(sys.argv[5]))))
    else:
        main(sys.argv[1:])
