"""Quality per model family on real shoes: what each start reaches on a CPU, and what serving costs.

On `../shared/datasets/shoes` (76 photos, 150 polygons), the split of `shoeseg train` with seed 0 (70 % train,
20 % val, 10 % test): each configuration trains with the `cpu` profile (AdamW, 200 iterations of 2 images,
128 ROIs, 320-448 px), changed as its entry in CONFIGS says, in a child process of its own, and is evaluated
on the held-out images (val and test together: nothing of them is used for training or model selection).
Printed, side by side:

* mask AP / AP50 and box AP (pycocotools), train minutes, s/iteration, peak RSS of the training process;
* the annotator's numbers at the checkpoint's serving threshold (:mod:`shoeseg.edits`): the share of true
  shoes matched at IoU 0.5 / 0.75 / 0.85 / 0.9, shoes to draw and false positives to delete per image,
  vertices per served polygon (median) and vertices to drag per image;
* at the serving size: `Predictor.predict` (polygons included) and the bare `model(images)` forward, ms per
  image (median), and the overhead of ours over the bare forward;
* for one model (``BENCH_QUALITY_SERVING``, default lite0), the serving settings: proposals kept after NMS
  and detections per image, dynamic int8 on the box head's linear layers, test-time flip augmentation and a
  test size 25 % above the trained one, each with its AP and time.

Run: `python -m bench quality` (about 1 hour on 2 cores); `python -m bench.bench_quality --serving CKPT` prints
the serving table of an existing checkpoint; `python -m bench.bench_quality --thresholds DIR` the annotator's
numbers of DIR's checkpoints at the serving threshold the product would choose, cross-fitted on the held-out
images (:func:`threshold_rows`), beside fixed thresholds; `python -m bench.bench_quality --outlines DIR` DIR's
checkpoints with and without the steps on their soft masks (edge-guided refinement, mask-quality rescoring:
:func:`outline_rows`); `python -m bench.bench_quality --nms DIR` DIR's checkpoints at several box-NMS IoUs
(:func:`nms_rows`); `python -m bench.bench_quality --mask-thresh DIR` every `model.pt` under DIR with its masks
cut at several probabilities (:func:`mask_thresh_rows`); `python -m bench.bench_quality --point-steps DIR` every
`model.pt` under DIR that has a point head, served with its subdivision steps and without them
(:func:`point_step_rows`); `BENCH_QUALITY=lite0,lite0-cp` runs a subset,
`BENCH_QUALITY_ITERS=N` changes the iterations (the README's table uses the default). With
`BENCH_QUALITY_OUT=DIR` a stopped run continues: the configurations whose rows are in `DIR/quality.json` are
not trained again.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

SHOES = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "shoes"
CONFIGS = {
    "r50-random": {"arch": "r50-fpn", "weights": "none"},
    "lite0": {"arch": "lite0-fpn", "weights": "imagenet"},
    "lite0-cp": {"arch": "lite0-fpn", "weights": "imagenet", "copy_paste": 0.5},
    "lite2": {"arch": "lite2-fpn", "weights": "imagenet"},
    "lite2-cp": {"arch": "lite2-fpn", "weights": "imagenet", "copy_paste": 0.5},
    "lite2-448": {"arch": "lite2-fpn", "weights": "imagenet", "min_size": 448, "max_size": 768},
    "lite2-seed1": {"arch": "lite2-fpn", "weights": "imagenet", "seed": 1},
    "lite2-ema": {"arch": "lite2-fpn", "weights": "imagenet", "ema_decay": 0.99},
    # tight outlines: the mask head at 56x56 (RoI features pooled at 28)
    "lite2-mask56": {"arch": "lite2-fpn", "weights": "imagenet", "mask_resolution": 56},
    # tight outlines: a boundary term in the mask loss (shoeseg.heads)
    "lite2-boundary": {"arch": "lite2-fpn", "weights": "imagenet", "mask_boundary_weight": 1.0},
    "lite2-boundary-seed1": {"arch": "lite2-fpn", "weights": "imagenet", "mask_boundary_weight": 1.0, "seed": 1},
    # tight outlines: PointRend's point head, two subdivision steps (28 to 112 per shoe), on the cpu recipe
    "lite2-points": {"arch": "lite2-fpn", "weights": "imagenet", "mask_point_steps": 2},
    "lite2-points-seed1": {"arch": "lite2-fpn", "weights": "imagenet", "mask_point_steps": 2, "seed": 1},
    # the cpu profile's recipe before AdamW: SGD at 0.005 (0.01 diverged) for 250 iterations
    "lite2-sgd": {"arch": "lite2-fpn", "weights": "imagenet", "optimizer": "sgd", "base_lr": 0.005,
                  "weight_decay": 1e-4, "iters": 250},
}
SERVING = [  # (proposals after NMS, detections per image, int8 box head, flip TTA, test size / trained size)
    (1000, 100, False, False, 1.0), (300, 50, False, False, 1.0), (100, 20, False, False, 1.0),
    (300, 50, True, False, 1.0), (100, 20, True, False, 1.0),
    (100, 20, True, True, 1.0), (100, 20, True, False, 1.25), (100, 20, True, True, 1.25),
]
#: ``BENCH_QUALITY_SERVING_ROWS=flip``: only the rows that compare flip TTA and the test size (and the defaults).
SERVING_FLIP = [
    (1000, 100, False, False, 1.0), (100, 20, True, False, 1.0), (100, 20, True, True, 1.0),
    (100, 20, True, False, 1.25), (100, 20, True, True, 1.25),
]


def _held_out(ds, split):
    from shoeseg.data import subset

    return subset(ds, list(split["val"]) + list(split["test"]))


def _timed_predict(predictor, arrays) -> tuple[float, float]:
    import torch

    from shoeseg.predict import image_to_tensor

    ours, bare = [], []
    predictor.predict([arrays[0]])  # warm-up
    heads = predictor.model.roi_heads
    for arr in arrays:
        t0 = time.perf_counter()
        predictor.predict([arr])
        ours.append(time.perf_counter() - t0)
        saved, heads.score_thresh = heads.score_thresh, predictor.score_thresh  # the same detections both ways
        t0 = time.perf_counter()
        with torch.inference_mode():
            predictor.model([image_to_tensor(arr, predictor.device)])
        bare.append(time.perf_counter() - t0)
        heads.score_thresh = saved
    return statistics.median(ours) * 1000, statistics.median(bare) * 1000


def _serving_arrays(ds, images_dir: Path, fit: tuple[int, int], n: int = 8):
    from shoeseg.data import resolve_image_path
    from via_tools.images import decode_image_scaled

    out = []
    for rec in ds.images[:n]:
        data = resolve_image_path(images_dir, rec).read_bytes()
        out.append(decode_image_scaled(data, name=rec.file_name, fit_within=fit)[0])
    return out


def run_one(name: str, out_dir: Path) -> dict:
    """Trains and evaluates one configuration (in this process); returns its row."""
    import torch

    from shoeseg.data import split_dataset, subset
    from shoeseg.evaluate import evaluate
    from shoeseg.predict import Predictor
    from shoeseg.train import TrainConfig, train
    from via_tools.io import load
    from via_tools.options import ReadOptions

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    images_dir = SHOES / "images"
    ds = load(SHOES / "via_project.json", options=ReadOptions(images_dir=images_dir))
    split = split_dataset(ds, seed=0)
    settings = dict(CONFIGS[name])
    if os.environ.get("BENCH_QUALITY_ITERS"):
        settings["iters"] = int(os.environ["BENCH_QUALITY_ITERS"])
    cfg = TrainConfig.for_profile("cpu", device="cpu", progress_bar=False, **settings)
    result = train(cfg, dataset=subset(ds, split["train"]), images_dir=images_dir, out_dir=out_dir / name, split=split)
    held = _held_out(ds, split)
    predictor = Predictor.from_checkpoint(result.checkpoint, device="cpu", score_thresh=0.05)
    evaluated = evaluate(predictor, held, images_dir=images_dir)
    metrics = evaluated.metrics
    arrays = _serving_arrays(held, images_dir, predictor.input_fit)
    serve = Predictor.from_checkpoint(result.checkpoint, device="cpu", score_thresh=0.5)
    ours_ms, bare_ms = _timed_predict(serve, arrays)
    row = {
        "config": name, "arch": cfg.arch, "weights": cfg.weights, "copy_paste": cfg.copy_paste, "iters": cfg.iters,
        "optimizer": f"{cfg.optimizer} {cfg.base_lr:g}", "ema_decay": cfg.ema_decay, "seed": cfg.seed,
        "segm_AP": metrics.get("segm_AP"), "segm_AP50": metrics.get("segm_AP50"),
        "segm_AP75": metrics.get("segm_AP75"), "bbox_AP": metrics.get("bbox_AP"),
        "mask_resolution": cfg.mask_resolution, "mask_boundary_weight": cfg.mask_boundary_weight,
        "mask_point_steps": cfg.mask_point_steps, "train_min": result.final_metrics["train_s"] / 60, "s_per_iter": result.final_metrics["train_s"] / cfg.iters,
        "predict_ms": ours_ms, "forward_ms": bare_ms, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "held_out_images": len(held.images), "checkpoint": str(result.checkpoint),
        "annotator": evaluated.annotator.to_json(),
    }
    if name == os.environ.get("BENCH_QUALITY_SERVING", "lite0"):
        row["serving"] = serving_rows(result.checkpoint, held, images_dir, arrays)
    return row


def serving_rows(checkpoint: Path, held, images_dir: Path, arrays) -> list[dict]:
    import torch

    from shoeseg.checkpoint import load_checkpoint
    from shoeseg.evaluate import evaluate
    from shoeseg.predict import Predictor

    rows = []
    chosen = SERVING_FLIP if os.environ.get("BENCH_QUALITY_SERVING_ROWS") == "flip" else SERVING
    for proposals, detections, int8, flip_tta, size_scale in chosen:
        ckpt = load_checkpoint(checkpoint)  # float32 whatever the checkpoint's own serving choice
        predictor = Predictor(ckpt.model, class_names=ckpt.class_names, device="cpu", score_thresh=0.05,
                              flip_tta=flip_tta)
        m = predictor.model
        m.rpn._post_nms_top_n["testing"] = proposals
        m.roi_heads.detections_per_img = detections
        m.transform.min_size = (round(m.transform.min_size[-1] * size_scale),)
        m.transform.max_size = round(m.transform.max_size * size_scale)
        if int8:
            m.roi_heads.box_head = torch.ao.quantization.quantize_dynamic(
                m.roi_heads.box_head, {torch.nn.Linear}, dtype=torch.qint8)
        metrics = evaluate(predictor, held, images_dir=images_dir, with_losses=False).metrics
        predictor.score_thresh = 0.5
        # the serving path decodes images to fit the model's input size
        sized = arrays if size_scale == 1.0 else _serving_arrays(held, images_dir, predictor.input_fit)
        ours_ms, _ = _timed_predict(predictor, sized)
        rows.append({"proposals": proposals, "detections": detections, "int8_box_head": int8,
                     "flip_tta": flip_tta, "min_size": m.transform.min_size[-1], "segm_AP": metrics.get("segm_AP"),
                     "segm_AP50": metrics.get("segm_AP50"), "bbox_AP": metrics.get("bbox_AP"),
                     "predict_ms": ours_ms})
    return rows


def _print_serving(rows: list[dict]) -> None:
    print("| proposals after NMS | detections/img | int8 box head | flip TTA | test size | mask AP | mask AP50 "
          "| box AP | predict ms/img |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['proposals']} | {r['detections']} | {'yes' if r['int8_box_head'] else 'no'} | "
              f"{'yes' if r.get('flip_tta') else 'no'} | {r.get('min_size', '-')} | {_fmt(r['segm_AP'])} | "
              f"{_fmt(r.get('segm_AP50'))} | {_fmt(r.get('bbox_AP'))} | {r['predict_ms']:.0f} |")


def _fmt(v, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def _annotator_cells(a: dict | None) -> str:
    """The annotator's columns of a row (``-`` for rows written before they existed)."""
    if not a:
        return " | ".join(["-"] * 6)
    shares = "/".join(_fmt(v, ".2f") for v in a["matched_share"].values())
    return (f"{a['score_thresh']:g} | {shares} | {_fmt(a['missed_per_image'], '.2f')} | "
            f"{_fmt(a['false_positives_per_image'], '.2f')} | {_fmt(a['vertices_per_polygon']['median'], '.0f')} | "
            f"{_fmt(a['to_drag_per_image'], '.1f')}")


def main() -> None:
    if not SHOES.is_dir():
        print(f"skipped: {SHOES} is not here (the shared shoe photos)")
        return
    chosen = [c for c in (os.environ.get("BENCH_QUALITY") or ",".join(CONFIGS)).split(",") if c]
    out_dir = Path(os.environ.get("BENCH_QUALITY_OUT") or tempfile.mkdtemp(prefix="bench-quality-"))
    # a stopped run continues: rows already in the output folder are kept, their configurations not retrained
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = out_dir / "quality.json"
    rows = [r for r in (json.loads(saved.read_text()) if saved.is_file() else []) if r["config"] in chosen]
    for name in chosen:
        if any(r["config"] == name for r in rows):
            print(f"{name}: kept from {saved}", flush=True)
            continue
        print(f"training {name} ...", flush=True)
        res = subprocess.run([sys.executable, "-m", "bench.bench_quality", "--one", name, str(out_dir)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            print(f"{name} failed:\n{res.stderr[-3000:]}")
            continue
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        saved.write_text(json.dumps(rows, indent=1))
    print(f"\nShoeSeg model families on {SHOES.name} (held-out: val + test of the seed-0 split, "
          f"{rows[0]['held_out_images'] if rows else '?'} images), cpu profile, CPU {os.cpu_count()} cores")
    print("| config | start | copy-paste | iterations | optimizer | EMA | mask AP | mask AP50 | mask AP75 | box AP | "
          "train min | s/it | "
          "predict ms/img | bare forward ms/img | overhead | peak RSS MB | score thr | matched IoU 0.5/0.75/0.85/0.9 | "
          "to draw/img | to delete/img | vertices/polygon | to drag/img |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        overhead = (r["predict_ms"] - r["forward_ms"]) / r["forward_ms"] * 100
        print(f"| {r['config']} | {r['arch']} {r['weights']} | {r['copy_paste']:g} | {r['iters']} | "
              f"{r.get('optimizer', 'sgd')} | {r.get('ema_decay') or '-'} | {_fmt(r['segm_AP'])} | "
              f"{_fmt(r['segm_AP50'])} | {_fmt(r.get('segm_AP75'))} | {_fmt(r['bbox_AP'])} | {r['train_min']:.1f} | {r['s_per_iter']:.2f} | "
              f"{r['predict_ms']:.0f} | {r['forward_ms']:.0f} | {overhead:+.1f} % | {r['peak_rss_mb']:.0f} | "
              f"{_annotator_cells(r.get('annotator'))} |")
    for r in rows:
        if r.get("serving"):
            print(f"\nServing settings, {r['config']} ({r['arch']}), on the held-out images:")
            _print_serving(r["serving"])
    print(f"\nruns and checkpoints in {out_dir}")


def _held_out_shoes():
    """The held-out photos of the shoes (val and test of ``split_dataset(seed=0)``) and their folder."""
    from shoeseg.data import split_dataset
    from via_tools.io import load
    from via_tools.options import ReadOptions

    images_dir = SHOES / "images"
    ds = load(SHOES / "via_project.json", options=ReadOptions(images_dir=images_dir))
    return _held_out(ds, split_dataset(ds, seed=0)), images_dir


def _checkpoints(out_dir: Path) -> list[dict]:
    """The rows of ``out_dir/quality.json`` that ``BENCH_QUALITY`` picks (all without it)."""
    chosen = [c for c in (os.environ.get("BENCH_QUALITY") or "").split(",") if c]
    return [r for r in json.loads((out_dir / "quality.json").read_text()) if not chosen or r["config"] in chosen]


def serving_only(checkpoint: Path) -> None:
    """The serving table (and the predict / bare-forward timing) of an existing checkpoint."""
    import torch

    from shoeseg.predict import Predictor

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    held, images_dir = _held_out_shoes()
    serve = Predictor.from_checkpoint(checkpoint, device="cpu", score_thresh=0.5)
    arrays = _serving_arrays(held, images_dir, serve.input_fit)
    ours_ms, bare_ms = _timed_predict(serve, arrays)
    print(f"{checkpoint}: predict {ours_ms:.0f} ms/img, bare forward {bare_ms:.0f} ms/img "
          f"({(ours_ms - bare_ms) / bare_ms * 100:+.1f} %)")
    _print_serving(serving_rows(checkpoint, held, images_dir, arrays))


#: The thresholds the cross-fitted rows compare with the one chosen: the serving default and two higher ones.
FIXED_THRESHOLDS = (0.5, 0.7, 0.8)


def _merged(numbers: list) -> dict:
    """The annotator's numbers of several disjoint image sets as one (counts summed, shares re-weighted)."""
    n_images = sum(a.n_images for a in numbers)
    n_truth = sum(a.n_truth for a in numbers)
    shares = {f"{level:g}": sum((a.matched_share[level] or 0) * a.n_truth for a in numbers) / n_truth
              for level in numbers[0].matched_share}
    return {"images": n_images, "shoes": n_truth, "matched_share": shares,
            "missed": sum(a.n_missed for a in numbers), "missed_share": sum(a.n_missed for a in numbers) / n_truth,
            "false_positives_per_image": sum(a.n_false_positives for a in numbers) / n_images,
            "to_drag_per_image": sum(a.n_to_drag for a in numbers) / n_images,
            "score_thresh": [a.score_thresh for a in numbers]}


def threshold_rows(out_dir: Path, *, folds: int = 2, seed: int = 0) -> list[dict]:
    """The serving threshold as the product chooses it (the least edit cost, :func:`shoeseg.edits.choose_score_thresh`),
    cross-fitted on the held-out images, for every checkpoint of ``out_dir/quality.json`` (``BENCH_QUALITY`` picks
    some): the images split in
    ``folds`` at random (``seed``), the threshold chosen on the others and the annotator's numbers counted on
    each fold, so that no image judges the threshold it was chosen on; beside the numbers at fixed thresholds.
    Rows go to ``out_dir/thresholds.json``."""
    from dataclasses import asdict

    import numpy as np

    from shoeseg.edits import EditCosts, annotator_numbers, choose_score_thresh
    from shoeseg.evaluate import evaluate
    from shoeseg.predict import Predictor

    held, images_dir = _held_out_shoes()
    rows = []
    for r in _checkpoints(out_dir):
        predictor = Predictor.from_checkpoint(r["checkpoint"], device="cpu", score_thresh=0.05)
        measures = evaluate(predictor, held, images_dir=images_dir, with_losses=False).measures
        fold_of = np.random.default_rng(seed).permutation(len(measures)) % folds
        crossed = []
        for k in range(folds):
            choose_on = [m for m, f in zip(measures, fold_of, strict=True) if f != k]
            judged = [m for m, f in zip(measures, fold_of, strict=True) if f == k]
            crossed.append(annotator_numbers(judged, choose_score_thresh(choose_on).score_thresh))
        row = {"config": r["config"], "seed": r.get("seed"), "folds": folds, "costs": asdict(EditCosts()),
               "cross_fitted": _merged(crossed)}
        for t in FIXED_THRESHOLDS:
            row[f"at {t:g}"] = _merged([annotator_numbers(measures, t)])
        rows.append(row)
        log.info("%s: %s", r["config"], row)
    (out_dir / "thresholds.json").write_text(json.dumps(rows, indent=1))
    return rows


#: The outline steps compared by :func:`outline_rows`: (name, ``mask_refine``, ``mask_rescore``).
OUTLINE_VARIANTS = (("neither", 0.0, False), ("refine (served)", None, False), ("rescore", 0.0, True),
                    ("both", None, True))


def _variant_row(r: dict, predictor, held, images_dir: Path, arrays, **fields) -> dict:
    """One checkpoint under one serving variant: mask AP / AP75 and the annotator's numbers at score 0.5 on the
    held-out photos, and ``Predictor.predict`` / bare forward ms per image on ``arrays``."""
    from shoeseg.evaluate import evaluate

    predictor.score_thresh = 0.05
    ev = evaluate(predictor, held, images_dir=images_dir, with_losses=False, serve_score_thresh=0.5)
    predictor.score_thresh = 0.5
    ours_ms, bare_ms = _timed_predict(predictor, arrays)
    row = {"config": r["config"], "seed": r.get("seed"), **fields, "segm_AP": ev.metrics.get("segm_AP"),
           "segm_AP50": ev.metrics.get("segm_AP50"), "segm_AP75": ev.metrics.get("segm_AP75"), "predict_ms": ours_ms, "forward_ms": bare_ms,
           "annotator": ev.annotator.to_json()}
    log.info("%s %s: mask AP %.3f, %.2f false positives per image, %d missed, predict %.0f ms", r["config"],
             fields.get("variant"), row["segm_AP"], row["annotator"]["false_positives_per_image"],
             row["annotator"]["missed"], ours_ms)
    return row


def outline_rows(out_dir: Path) -> list[dict]:
    """Each checkpoint of ``out_dir/quality.json`` (``BENCH_QUALITY`` picks some) with and without the steps on its
    soft masks (:mod:`shoeseg.outlines`): mask AP / AP75 and the annotator's numbers at score 0.5 on the held-out
    images, and ``Predictor.predict`` ms per image at the serving size (median of 8 images, one after the other
    in this process). ``None`` in a variant: the served default. Rows go to ``out_dir/outlines.json``."""
    import torch

    from shoeseg.predict import OutputSettings, Predictor

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    held, images_dir = _held_out_shoes()
    served = OutputSettings()
    rows = []
    for r in _checkpoints(out_dir):
        arrays = None
        for name, refine, rescore in OUTLINE_VARIANTS:
            refine = served.mask_refine if refine is None else refine
            predictor = Predictor.from_checkpoint(r["checkpoint"], device="cpu", score_thresh=0.05,
                                                  mask_refine=refine, mask_rescore=rescore)
            arrays = arrays or _serving_arrays(held, images_dir, predictor.input_fit)
            rows.append(_variant_row(r, predictor, held, images_dir, arrays, variant=name, mask_refine=refine,
                                     mask_rescore=rescore))
    (out_dir / "outlines.json").write_text(json.dumps(rows, indent=1))
    return rows


#: Box NMS thresholds of the box head tried by :func:`nms_rows` (torchvision's default, and so ours, is 0.5).
NMS_THRESHOLDS = (0.5, 0.4, 0.3, 0.2)


def nms_rows(out_dir: Path) -> list[dict]:
    """Each checkpoint of ``out_dir/quality.json`` (``BENCH_QUALITY`` picks some) served with the box head's NMS
    at each of :data:`NMS_THRESHOLDS` (boxes of one class overlapping a higher-scored one by more than it, in
    IoU, are dropped; ``BENCH_QUALITY_NMS=0.45,0.35`` tries others), everything else at the served settings:
    mask AP / AP75, the annotator's numbers at 0.5 and the time, as :func:`outline_rows`. Rows go to
    ``out_dir/nms.json``."""
    import torch

    from shoeseg.predict import Predictor

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    held, images_dir = _held_out_shoes()
    chosen = [float(t) for t in (os.environ.get("BENCH_QUALITY_NMS") or "").split(",") if t] or NMS_THRESHOLDS
    rows = []
    for r in _checkpoints(out_dir):
        predictor = Predictor.from_checkpoint(r["checkpoint"], device="cpu", score_thresh=0.05)
        arrays = _serving_arrays(held, images_dir, predictor.input_fit)
        for thresh in chosen:
            predictor.model.roi_heads.nms_thresh = thresh
            rows.append(_variant_row(r, predictor, held, images_dir, arrays, variant=f"box NMS {thresh:g}",
                                     nms_thresh=thresh))
    (out_dir / "nms.json").write_text(json.dumps(rows, indent=1))
    return rows


#: Mask probability thresholds tried by :func:`mask_thresh_rows` (torchvision's and detectron2's, and so ours,
#: is 0.5).
MASK_THRESHOLDS = [0.5, 0.45, 0.4, 0.35]


def mask_thresh_rows(root: Path) -> list[dict]:
    """Every checkpoint under ``root`` (its ``model.pt`` files: a registry's versions, a quality run) with its
    soft masks cut at each of :data:`MASK_THRESHOLDS` (``BENCH_QUALITY_MASK_THRESH=0.45,0.4`` tries others; the
    refinement along the image's edges uses the same threshold), everything else at the served settings: mask
    AP / AP75, the annotator's numbers at 0.5 and the time, as :func:`outline_rows`. Rows go to
    ``root/mask_thresh.json``."""
    import torch

    from shoeseg.predict import Predictor

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    held, images_dir = _held_out_shoes()
    chosen = [float(t) for t in (os.environ.get("BENCH_QUALITY_MASK_THRESH") or "").split(",") if t] or MASK_THRESHOLDS
    rows = []
    for checkpoint in sorted(root.rglob("model.pt")):
        predictor = Predictor.from_checkpoint(checkpoint, device="cpu", score_thresh=0.05)
        arrays = _serving_arrays(held, images_dir, predictor.input_fit)
        r = {"config": checkpoint.parent.name, "seed": None}
        for thresh in chosen:
            predictor.mask_thresh = thresh
            rows.append(_variant_row(r, predictor, held, images_dir, arrays, variant=f"mask threshold {thresh:g}",
                                     mask_thresh=thresh))
    (root / "mask_thresh.json").write_text(json.dumps(rows, indent=1))
    return rows


def point_step_rows(root: Path) -> list[dict]:
    """Every checkpoint under ``root`` with a point head (``mask_point_steps`` > 0), served with each of its steps
    down to 0 (0: the coarse 28x28 mask, as a model without the head serves it), everything else as served: what
    the subdivision at inference adds, apart from what training with the point loss changed. Mask AP / AP50 /
    AP75, the annotator's numbers at 0.5 and the time, as :func:`outline_rows`. Rows go to
    ``root/point_steps.json``."""
    import torch

    from shoeseg.predict import Predictor

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    held, images_dir = _held_out_shoes()
    rows = []
    for checkpoint in sorted(root.rglob("model.pt")):
        predictor = Predictor.from_checkpoint(checkpoint, device="cpu", score_thresh=0.05)
        heads = predictor.model.roi_heads
        trained_steps = int(getattr(heads, "mask_point_steps", 0))
        if getattr(heads, "point_head", None) is None or trained_steps < 1:
            continue
        arrays = _serving_arrays(held, images_dir, predictor.input_fit)
        r = {"config": checkpoint.parent.name, "seed": None}
        for steps in range(trained_steps, -1, -1):
            heads.mask_point_steps = steps
            rows.append(_variant_row(r, predictor, held, images_dir, arrays, variant=f"{steps} point steps"))
    (root / "point_steps.json").write_text(json.dumps(rows, indent=1))
    return rows


def _print_outlines(rows: list[dict]) -> None:
    print("| config | seed | masks | mask AP | AP50 | AP75 | score thr | matched IoU 0.5/0.75/0.85/0.9 | to draw/img | "
          "to delete/img | vertices/polygon | to drag/img | predict ms/img | bare forward ms/img |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['seed']} | {r['variant']} | {_fmt(r['segm_AP'])} | {_fmt(r.get('segm_AP50'))} | "
              f"{_fmt(r['segm_AP75'])} | "
              f"{_annotator_cells(r['annotator'])} | {r['predict_ms']:.0f} | {r['forward_ms']:.0f} |")


def _print_thresholds(rows: list[dict]) -> None:
    print("| config | seed | threshold | IoU >= 0.5 / 0.75 / 0.85 / 0.9 | shoes to draw | to delete / img | to drag / img |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        for key in ["cross_fitted", *[f"at {t:g}" for t in FIXED_THRESHOLDS]]:
            a = r[key]
            thr = ("chosen on the other fold: " + ", ".join(f"{t:g}" for t in a["score_thresh"])
                   if key == "cross_fitted" else key[3:])
            shares = " / ".join(f"{v:.0%}" for v in a["matched_share"].values())
            print(f"| {r['config']} | {r['seed']} | {thr} | {shares} | {a['missed']} of {a['shoes']} | "
                  f"{a['false_positives_per_image']:.2f} | {a['to_drag_per_image']:.1f} |")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serving":
        serving_only(Path(sys.argv[2]))
    elif len(sys.argv) == 3 and sys.argv[1] == "--outlines":
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        _print_outlines(outline_rows(Path(sys.argv[2])))
    elif len(sys.argv) == 3 and sys.argv[1] == "--nms":
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        _print_outlines(nms_rows(Path(sys.argv[2])))
    elif len(sys.argv) == 3 and sys.argv[1] == "--mask-thresh":
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        _print_outlines(mask_thresh_rows(Path(sys.argv[2])))
    elif len(sys.argv) == 3 and sys.argv[1] == "--point-steps":
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        _print_outlines(point_step_rows(Path(sys.argv[2])))
    elif len(sys.argv) == 3 and sys.argv[1] == "--thresholds":
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        _print_thresholds(threshold_rows(Path(sys.argv[2])))
    elif len(sys.argv) == 4 and sys.argv[1] == "--one":
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        print(json.dumps(run_one(sys.argv[2], Path(sys.argv[3]))))
    else:
        main()
