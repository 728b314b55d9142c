"""The retraining loop, timed with real processes: Label Studio, Redis, `shoeseg serve` and `shoeseg worker`.

Two numbers, printed as tables:

1. seconds from the annotation that reaches ``SHOESEG_MIN_NEW_ANNOTATIONS`` to predictions of the new
   version stored in Label Studio for every task (tiny configuration, CPU unless ``SHOESEG_DEVICE``);
2. prediction push throughput (``worker.jobs.predict_project``: image fetch, batched forward, polygons,
   active-learning score, bulk store in Label Studio) against the bare batched model forward on the same
   images, as a ratio.

Run: ``python -m bench loop`` (``--tasks 32 --iters 4``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WIDTH_PX, HEIGHT_PX = 96, 80


def _images(out_dir: Path, n: int, *, seed: int = 0):
    """Generated photos: noise with one or two filled shoe-like shapes, and their polygons."""
    from PIL import Image

    from shoeseg.geometry import polygons_to_mask
    from via_tools.model import AnnotationSet, ImageRecord, Region

    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        pixels = rng.integers(80, 170, size=(HEIGHT_PX, WIDTH_PX, 3), dtype=np.uint8)
        regions = []
        for k in range(1 + i % 2):
            rx, ry = rng.uniform(12, 20), rng.uniform(8, 12)
            cx, cy = rng.uniform(rx + 2, WIDTH_PX - rx - 2), rng.uniform(ry + 2, HEIGHT_PX - ry - 2)
            t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
            poly = np.stack([cx + rx * np.cos(t), np.minimum(cy + ry * np.sin(t), cy + 0.6 * ry)], axis=1)
            pixels[polygons_to_mask((poly,), HEIGHT_PX, WIDTH_PX)] = (40 + 50 * k, 20, 190)
            regions.append(Region(label="shoe", polygons=(poly,), region_id=f"r{k}"))
        name = f"bench{i:03d}.png"
        Image.fromarray(pixels).save(out_dir / name)
        records.append(ImageRecord(file_name=name, width_px=WIDTH_PX, height_px=HEIGHT_PX, regions=regions))
    return AnnotationSet(images=records, labels=["shoe"])


def _wait(what: str, condition, timeout_s: float, every_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench_loop", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=32, help="tasks in the project")
    parser.add_argument("--iters", type=int, default=4, help="training iterations (tiny configuration)")
    parser.add_argument("--batch", type=int, default=8, help="images per prediction batch")
    args = parser.parse_args(argv if argv is not None else [])

    import httpx

    from shoeseg_app.stack.labelstudio import LabelStudioServer, free_port
    from shoeseg_app.stack.redis import RedisServer
    from via_tools.labelstudio import region_to_ls_results
    from via_tools.ls_api import import_dataset, list_tasks

    root = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    procs: list[subprocess.Popen] = []
    env_loop = {
        "SHOESEG_TRAIN_ITERS": str(args.iters), "SHOESEG_MIN_SIZE": "80", "SHOESEG_MAX_SIZE": "96",
        "SHOESEG_ROI_BATCH": "64", "SHOESEG_INIT_WEIGHTS": "none", "SHOESEG_DEVICE": os.environ.get("SHOESEG_DEVICE", "cpu"),
        "SHOESEG_PROMOTE_TOLERANCE": "1.0", "SHOESEG_MIN_NEW_ANNOTATIONS": "3",
        "SHOESEG_PREDICT_BATCH": str(args.batch), "SHOESEG_MODEL_DIR": str(root / "models"),
        "SHOESEG_CACHE_DIR": str(root / "cache"), "SHOESEG_AL_STRATEGY": "least_confidence",
    }
    try:
        with LabelStudioServer(data_dir=root / "ls", files_root=root / "files") as ls, \
                RedisServer(data_dir=root / "redis") as rs:
            client = ls.client()
            env = {**os.environ, **env_loop, "REDIS_URL": rs.url, "LABEL_STUDIO_URL": ls.url,
                   "LABEL_STUDIO_API_KEY": ls.token}
            port = free_port()
            log = open(root / "processes.log", "ab")
            for cmd in ([str(BIN / "shoeseg"), "serve", "--port", str(port)], [str(BIN / "shoeseg"), "worker"]):
                procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
            backend = f"http://127.0.0.1:{port}"

            def healthy():
                try:
                    return httpx.get(backend + "/health", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            _wait("the backend", healthy, 120)
            images_dir = root / "files" / "bench"
            ds = _images(images_dir, args.tasks)
            truth = {im.file_name: list(im.regions) for im in ds.images}
            for im in ds.images[2:]:
                im.regions = []
            res = import_dataset(client, ds, images_dir=images_dir, title="bench loop", files_root=root / "files")
            pid = res.project_id
            client.ml.create(project=pid, url=backend, title="shoeseg", is_interactive=False)
            names = sorted(res.task_ids)

            def annotate(name: str) -> None:
                result = []
                for r in truth[name]:
                    result += region_to_ls_results(r, WIDTH_PX, HEIGHT_PX, from_name="label", to_name="image")
                client.annotations.create(id=res.task_ids[name], result=result, project=pid)

            annotate(names[2])
            annotate(names[3])
            t0 = time.perf_counter()
            annotate(names[4])

            from shoeseg.registry import ModelRegistry

            registry = ModelRegistry(root / "models")

            def pushed():
                v = registry.current_version_id()
                if not v or client.projects.get(id=pid).model_version != v:
                    return None
                tasks = list_tasks(client, pid)
                done = sum(any(p.get("model_version") == v for p in t.get("predictions") or []) for t in tasks)
                return v if done == len(tasks) else None

            version = _wait("predictions pushed", pushed, 900, every_s=0.25)
            loop_s = time.perf_counter() - t0
            for p in procs:
                os.killpg(p.pid, signal.SIGINT)
            for p in procs:
                p.wait(timeout=30)
            procs.clear()

            _table("annotation -> predictions in Label Studio (real processes; tiny model on "
                   f"{env_loop['SHOESEG_DEVICE']}, {args.iters} iterations, {args.tasks} tasks)",
                   ["measure", "seconds"], [["third new annotation -> every task has a prediction of the new version",
                                              f"{loop_s:.1f}"]])

            # throughput: predict_project in this process against the bare batched forward
            os.environ.update({k: v for k, v in env.items() if k.startswith(("SHOESEG_", "LABEL_STUDIO_"))})
            from worker.jobs import predict_project

            def clear_predictions():
                for t in list_tasks(client, pid):
                    for p in t.get("predictions") or []:
                        if p.get("model_version") == version:
                            client.predictions.delete(id=p["id"])

            rows = []
            timings = {}
            for label, cold in (("predict_project, images fetched from Label Studio", True),
                                ("predict_project, images cached", False)):
                clear_predictions()
                if cold:
                    shutil.rmtree(root / "cache" / "images", ignore_errors=True)
                t = time.perf_counter()
                out = predict_project(pid, version=version)
                timings[label] = (time.perf_counter() - t, out["pushed"])

            import torch

            from shoeseg.predict import Predictor, image_to_tensor
            from via_tools.images import read_image

            predictor = Predictor.from_checkpoint(registry.get(version).checkpoint, device=env_loop["SHOESEG_DEVICE"])
            arrays = [read_image(images_dir / n) for n in names]
            tensors = [image_to_tensor(a, predictor.device) for a in arrays]
            model = predictor.model
            with torch.inference_mode():
                model(tensors[: args.batch])  # warm-up
                t = time.perf_counter()
                for s in range(0, len(tensors), args.batch):
                    model(tensors[s:s + args.batch])
                bare_s = time.perf_counter() - t
            bare_rate = len(tensors) / bare_s
            rows.append(["bare batched model forward (torchvision Mask R-CNN)", str(len(tensors)), f"{bare_s:.2f}",
                         f"{bare_rate:.1f}", "1.00"])
            for label, (secs, n) in timings.items():
                rate = n / secs
                rows.append([label, str(n), f"{secs:.2f}", f"{rate:.1f}", f"{rate / bare_rate:.2f}"])
            _table(f"prediction push throughput (batch {args.batch}, {WIDTH_PX}x{HEIGHT_PX} px, "
                   f"{env_loop['SHOESEG_DEVICE']}, least_confidence)",
                   ["path", "tasks", "seconds", "tasks/s", "ratio to bare forward"], rows)
            print(json.dumps({"loop_s": round(loop_s, 2), "bare_tasks_per_s": round(bare_rate, 2),
                              **{k: round(v[1] / v[0], 2) for k, v in timings.items()}}))
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
