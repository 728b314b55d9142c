"""The prediction push against the bare batched forward, per serving runtime, for a trained checkpoint.

The push (``worker.jobs.predict_project``: image fetch, decode, forward, polygons, active-learning score, bulk
store in a real Label Studio) on the 76 shared shoe photos (``../shared/datasets/shoes``, imported unlabelled
by ``shoeseg via import``), against the bare batched forward of the same model in the same runtime on the same
images at its serving size (``forward_raw``, timed before and after the pushes, averaged). One table per
``SHOESEG_RUNTIME`` and ``SHOESEG_AL_STRATEGY`` given (``--runtimes torch,onnx --strategies
least_confidence,flip_consistency``): the two pushes (images fetched from Label Studio, then from the cache)
and their ratio to that runtime's bare forward (target >= 0.95 for a strategy with one forward pass an image;
``flip_consistency`` runs each image and its mirror image), and the backend's path for one image at a time
(``PredictionWriter.candidates`` then ``write``, as ``/predict`` runs them for one uncached task: median and p95
over the images). No training: ``--checkpoint`` is registered and promoted in a fresh registry. Run nothing
else meanwhile (about 5 minutes per table on 2 cores)::

    python -m bench push --checkpoint PATH [--runtimes torch,onnx] [--strategies S1,S2] [--batch 4]
        [--out bench/out/push]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.bench_loop import BIN, REPO, SHOES, _markdown, push_throughput

TARGET_RATIO = 0.95
HEADER = ["path", "tasks", "seconds", "tasks/s", "ratio to bare forward"]


def one_image_ms(predictor, writer, arrays) -> dict:
    """The backend's path for one uncached task, image by image: candidates (one forward, two with a mirror
    view) and the written prediction. Median and p95 in milliseconds, after one warm-up image."""
    import time

    from bench.bench_improving import _percentiles

    name = next(iter(writer.config.images))  # the project's <Image name=...>

    def once(a):
        (dets, flipped), = writer.candidates(predictor, [a])
        writer.write(dets, image_name=name, width_px=a.shape[1], height_px=a.shape[0], flipped=flipped)

    once(arrays[0])
    times = []
    for a in arrays:
        t = time.perf_counter()
        once(a)
        times.append((time.perf_counter() - t) * 1000)
    pct = _percentiles(times)
    return {"p50_ms": round(pct["p50"], 1), "p95_ms": round(pct["p95"], 1), "images": pct["n"]}


def run(checkpoint: Path, runtimes: list[str], *, batch: int, shoes: Path,
        strategies: list[str] | None = None) -> list[dict]:
    from shoeseg_app.stack.labelstudio import LabelStudioServer
    from shoeseg_app.stack.redis import RedisServer
    from shoeseg_services.registry import ModelRegistry
    from shoeseg_services.settings import Settings
    from via_tools.io import load, save
    from via_tools.options import ReadOptions

    ds = load(shoes / "via_project.json", options=ReadOptions(images_dir=shoes / "images"))
    root = Path(tempfile.mkdtemp(prefix="bench-push-"))
    saved_env = dict(os.environ)
    try:
        files_root = root / "files"
        images_dir = files_root / "shoes"
        images_dir.mkdir(parents=True)
        unlabelled = copy.deepcopy(ds)
        for im in unlabelled.images:  # a temporary copy under Label Studio's files root (nothing in the repo)
            shutil.copyfile(shoes / "images" / im.file_name, images_dir / im.file_name)
            im.regions = []
        save(unlabelled, root / "tasks.json", fmt="via2")
        registry = ModelRegistry(root / "models")
        version = registry.register(checkpoint, meta={"kind": "bench"}).version
        registry.promote(version)
        with LabelStudioServer(data_dir=root / "ls", files_root=files_root) as ls, \
                RedisServer(data_dir=root / "redis") as rs:
            out = subprocess.run(
                [str(BIN / "shoeseg"), "via", "import", str(root / "tasks.json"), "--images", str(images_dir),
                 "--url", ls.url, "--api-key", ls.token, "--title", "bench push", "--files-root", str(files_root)],
                cwd=REPO, capture_output=True, text=True, timeout=900,
                env={k: v for k, v in os.environ.items() if k != "REDIS_URL"})
            found = re.search(r"/projects/(\d+)/", out.stdout)
            if out.returncode != 0 or not found:
                raise RuntimeError(f"shoeseg via import failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
            pid = int(found.group(1))
            client = ls.client()
            results = []
            for runtime in runtimes:
                for strategy in strategies or [Settings().al_strategy]:
                    os.environ.update({
                        "SHOESEG_RUNTIME": runtime, "SHOESEG_DEVICE": "cpu", "SHOESEG_PROFILE": "cpu",
                        "SHOESEG_PREDICT_BATCH": str(batch), "SHOESEG_MODEL_DIR": str(root / "models"),
                        "SHOESEG_CACHE_DIR": str(root / "cache"), "LABEL_STUDIO_URL": ls.url,
                        "LABEL_STUDIO_API_KEY": ls.token, "REDIS_URL": rs.url, "SHOESEG_AL_STRATEGY": strategy})
                    rows, rates = push_throughput(client, pid, version, registry,
                                                  [images_dir / im.file_name for im in ds.images],
                                                  batch=batch, device="cpu", cache_dir=root / "cache",
                                                  one_image=one_image_ms)
                    results.append({"runtime_setting": runtime, "strategy": strategy, "rows": rows, **rates})
                    print(_markdown(HEADER, rows), flush=True)
        return results
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench push", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, help="a trained checkpoint (model.pt)")
    p.add_argument("--runtimes", default="torch,onnx", help="SHOESEG_RUNTIME values, a comma list")
    p.add_argument("--strategies", default=None,
                   help="SHOESEG_AL_STRATEGY values, a comma list (default: the live default)")
    p.add_argument("--batch", type=int, default=4, help="SHOESEG_PREDICT_BATCH")
    p.add_argument("--shoes", type=Path, default=SHOES)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "push")
    args = p.parse_args(argv or [])
    if args.checkpoint is None or not (args.shoes / "via_project.json").is_file():
        print("bench push: skipped: it needs --checkpoint and the shared shoes (../shared/datasets/shoes)")
        return
    results = run(args.checkpoint, [r.strip() for r in args.runtimes.split(",") if r.strip()], batch=args.batch,
                  shoes=args.shoes,
                  strategies=[s.strip() for s in args.strategies.split(",") if s.strip()] if args.strategies else None)
    lines = [f"Prediction push against the bare batched forward ({args.checkpoint}, batch {args.batch}, "
             f"target >= {TARGET_RATIO})", ""]
    for r in results:
        one = r["one_image"]
        lines += [f"SHOESEG_RUNTIME={r['runtime_setting']} ({r['runtime']}), SHOESEG_AL_STRATEGY={r['strategy']}:", "",
                  _markdown(HEADER, r["rows"]), "",
                  f"One image at a time, the backend's path (candidates + write, {one['images']} images): "
                  f"p50 {one['p50_ms']} ms, p95 {one['p95_ms']} ms", ""]
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "push.md").write_text(text + "\n", encoding="utf-8")
    (args.out / "push.json").write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
