"""The prediction push against the bare batched forward, per serving runtime, for a trained checkpoint.

The push (``worker.jobs.predict_project``: image fetch, decode, forward, polygons, active-learning score, bulk
store in a real Label Studio) on the 76 shared shoe photos (``../shared/datasets/shoes``, imported unlabelled
by ``shoeseg via import``), against the bare batched forward of the same model in the same runtime on the same
images at its serving size (``forward_raw``, timed before and after the pushes, averaged). One row per
``SHOESEG_RUNTIME`` given (``--runtimes torch,onnx``): the two pushes (images fetched from Label Studio, then
from the cache) and their ratio to that runtime's bare forward (target >= 0.95). No training: ``--checkpoint``
is registered and promoted in a fresh registry. Run nothing else meanwhile (about 5 minutes on 2 cores)::

    python -m bench push --checkpoint PATH [--runtimes torch,onnx] [--batch 4] [--out bench/out/push]
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


def run(checkpoint: Path, runtimes: list[str], *, batch: int, shoes: Path) -> list[dict]:
    from shoeseg_app.stack.labelstudio import LabelStudioServer
    from shoeseg_app.stack.redis import RedisServer
    from shoeseg_services.registry import ModelRegistry
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
                os.environ.update({"SHOESEG_RUNTIME": runtime, "SHOESEG_DEVICE": "cpu", "SHOESEG_PROFILE": "cpu",
                                   "SHOESEG_PREDICT_BATCH": str(batch), "SHOESEG_MODEL_DIR": str(root / "models"),
                                   "SHOESEG_CACHE_DIR": str(root / "cache"), "LABEL_STUDIO_URL": ls.url,
                                   "LABEL_STUDIO_API_KEY": ls.token, "REDIS_URL": rs.url})
                rows, rates = push_throughput(client, pid, version, registry,
                                              [images_dir / im.file_name for im in ds.images],
                                              batch=batch, device="cpu", cache_dir=root / "cache")
                results.append({"runtime_setting": runtime, "rows": rows, **rates})
                print(_markdown(["path", "tasks", "seconds", "tasks/s", "ratio to bare forward"], rows), flush=True)
        return results
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench push", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, help="a trained checkpoint (model.pt)")
    p.add_argument("--runtimes", default="torch,onnx", help="SHOESEG_RUNTIME values, a comma list")
    p.add_argument("--batch", type=int, default=4, help="SHOESEG_PREDICT_BATCH")
    p.add_argument("--shoes", type=Path, default=SHOES)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "push")
    args = p.parse_args(argv or [])
    if args.checkpoint is None or not (args.shoes / "via_project.json").is_file():
        print("bench push: skipped: it needs --checkpoint and the shared shoes (../shared/datasets/shoes)")
        return
    results = run(args.checkpoint, [r.strip() for r in args.runtimes.split(",") if r.strip()], batch=args.batch,
                  shoes=args.shoes)
    lines = [f"Prediction push against the bare batched forward ({args.checkpoint}, batch {args.batch}, "
             f"target >= {TARGET_RATIO})", ""]
    for r in results:
        lines += [f"SHOESEG_RUNTIME={r['runtime_setting']} ({r['runtime']}):", "",
                  _markdown(["path", "tasks", "seconds", "tasks/s", "ratio to bare forward"], r["rows"]), ""]
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "push.md").write_text(text + "\n", encoding="utf-8")
    (args.out / "push.json").write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
