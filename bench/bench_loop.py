"""One benchmark: the retraining loop timed with real Label Studio, Redis, serve and worker processes.

Two modes; both measure the prediction push throughput (``worker.jobs.predict_project``: image fetch, batched
forward, polygons, active-learning score, bulk store in Label Studio) against the bare batched model forward
on the same images at the model's serving size, as a ratio.

**Tiny** (the default; generated 96x80 px images, a random-weights model, ``--iters`` iterations, CPU unless
``SHOESEG_DEVICE``): seconds from the annotation that reaches ``SHOESEG_MIN_NEW_ANNOTATIONS`` to predictions
of the new version stored in Label Studio for every task, then the throughput; two tables.

**Real data** (``--shoes``; the 76 shared photos of ``../shared/datasets/shoes``, VIA 2 ``via_project.json`` +
``images/``; skipped with a message when absent). The images are copied to a temporary Label Studio files
root (never into the repository); the seed-0 split of :func:`shoeseg.data.split_dataset` (53 train / 15 val
/ 8 test) decides what is labelled. Processes run with ``SHOESEG_PROFILE=cpu``, ``SHOESEG_DEVICE=cpu`` and
``SHOESEG_MIN_NEW_ANNOTATIONS=10``:

a. ``shoeseg via import`` (``REDIS_URL`` set, as a user runs it) imports all 76 images as tasks, the train
   split's polygons as annotations except 10 images held back (so the first model sees 43 labelled images),
   the held-out val+test images unlabelled; the ML backend is connected to the project. Measured: minutes
   from the import's start to the first version's prediction on every task (target <= 20);
b. the 10 held-back annotations are created through the SDK (``client.annotations.create``); through the
   webhooks they reach ``SHOESEG_MIN_NEW_ANNOTATIONS``. Measured: minutes from the 10th annotation to every
   task holding the next version's prediction (target <= 5). A next version the worker does not promote
   (``SHOESEG_PROMOTE_TOLERANCE``) pushes nothing: the row then says so, with the worker's decision;
c. mask AP, AP50 and box AP of each version on the held-out split (val+test, 23 images), with
   ``Predictor.from_checkpoint(ckpt, device="cpu", score_thresh=0.05)`` and :func:`shoeseg.evaluate.evaluate`;
d. the push throughput of the last promoted version on the 76 tasks, images fetched from Label Studio and
   cached (target >= 0.9 of the bare forward, timed before and after the pushes and averaged), with the
   push's ``stage_seconds`` (setup, images, model, store, finish).

One markdown table with the targets is printed and written, with a JSON of every value, to ``--out``
(``loop-shoes.md`` / ``loop-shoes.json``; ``loop-shoes-tiny.*`` with ``--tiny``).

Run:

* ``python -m bench loop`` (or ``python -m bench.bench_loop --tasks 32 --iters 4``): the tiny mode;
* ``python -m bench.bench_loop --shoes --out bench/out/loop``: real data (about 30 minutes on 2 cores; run
  nothing else meanwhile), or ``BENCH_LOOP_ARGS="--shoes --out bench/out/loop" python -m bench loop``;
* ``python -m bench.bench_loop --shoes --tiny --out bench/out/loop``: the same flow end to end in a few
  minutes, a smoke test only: 9 shared photos (6 train, 3 of them held back; 3 held out),
  ``SHOESEG_MIN_NEW_ANNOTATIONS=3``, ``SHOESEG_TRAIN_ITERS=2``, 128-192 px, promotion tolerance 1.
  Its figures mean nothing.

``--promote-tolerance`` sets ``SHOESEG_PROMOTE_TOLERANCE`` for the real-data run (default: the setting's).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import re
import shlex
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
SHOES = REPO.parent / "shared" / "datasets" / "shoes"
TARGETS = {"first_model_min": 20.0, "next_version_min": 5.0, "push_ratio": 0.9}


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


def _wait(what: str, condition, timeout_s: float, every_s: float = 0.2, logs: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    tail = ""
    if logs is not None and logs.exists():
        tail = "\n--- processes.log (tail):\n" + logs.read_text(errors="replace")[-4000:]
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}{tail}")


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return "\n".join(lines)


def _table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n{title}")
    print(_markdown(header, rows))


def _start(cmds: list[list[str]], env: dict, log_path: Path) -> list[subprocess.Popen]:
    log = open(log_path, "ab")
    return [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            for cmd in cmds]


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGINT (rq: warm shutdown; uvicorn: graceful) to each process group, SIGKILL after 30 s."""
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
    procs.clear()


def _kill(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _healthy(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _count_pushed(client, pid: int, version: str) -> tuple[int, int]:
    """(tasks holding a prediction of ``version``, tasks)."""
    from shoeseg_services.ls_api import list_tasks

    tasks = list_tasks(client, pid)
    done = sum(any(p.get("model_version") == version for p in t.get("predictions") or []) for t in tasks)
    return done, len(tasks)


def push_throughput(client, pid: int, version: str, registry, image_paths: list[Path], *, batch: int,
                    device: str, cache_dir: Path, one_image=None) -> tuple[list[list[str]], dict]:
    """``predict_project`` in this process (images fetched from Label Studio, then cached) against the bare
    batched forward of the same model, in the runtime the push serves it with, on the same images decoded at
    its serving size.

    ``SHOESEG_*`` / ``LABEL_STUDIO_*`` must already be in ``os.environ`` (``predict_project`` reads them).

    ``one_image(predictor, writer, arrays)``, when given, is timed on the same predictor and decoded images
    (after the pushes) and its result kept as ``"one_image"``.

    Returns:
        The table rows (path, tasks, seconds, tasks/s, ratio) and ``{"bare_tasks_per_s", <path>: tasks/s...}``.
    """
    from shoeseg.active_learning import CANDIDATE_SCORE_THRESH
    from shoeseg.runtime import load_predictor
    from shoeseg_services.ls_api import list_tasks
    from shoeseg_services.settings import Settings
    from via_tools.images import decode_image_scaled
    from worker.jobs import predict_project

    def clear_predictions():
        for t in list_tasks(client, pid):
            for p in t.get("predictions") or []:
                if p.get("model_version") == version:
                    client.predictions.delete(id=p["id"])

    settings = Settings.from_env()
    # the runtime the push serves with (SHOESEG_RUNTIME; ONNX Runtime on a CPU by default)
    predictor = load_predictor(registry.get(version).checkpoint, runtime=settings.runtime, device=device,
                               batch_size=batch)
    runtime = (f"ONNX Runtime, {Path(predictor.checkpoint_path).name}" if hasattr(predictor, "export_meta")
               else "PyTorch")
    fit = predictor.input_fit
    arrays = [decode_image_scaled(p.read_bytes(), name=p.name, fit_within=fit)[0] for p in image_paths]

    def bare() -> float:
        predictor.forward_raw(arrays[:batch], score_thresh=CANDIDATE_SCORE_THRESH)  # warm-up
        t = time.perf_counter()
        for s in range(0, len(arrays), batch):
            predictor.forward_raw(arrays[s:s + batch], score_thresh=CANDIDATE_SCORE_THRESH)
        return time.perf_counter() - t

    # the bare forward is timed before and after the two pushes and averaged: on a busy 2-core machine one
    # run of it alone varies by about 10 %, as much as the overhead measured
    bare_runs = [bare()]
    timings = {}
    for label, cold in (("predict_project, images fetched from Label Studio", True),
                        ("predict_project, images cached", False)):
        clear_predictions()
        if cold:
            shutil.rmtree(cache_dir / "images", ignore_errors=True)
        t = time.perf_counter()
        out = predict_project(pid, version=version)
        timings[label] = (time.perf_counter() - t, out["pushed"],
                          {**(out.get("stage_seconds") or {}), "regions (beside the forward)": out.get("regions_seconds")})
    bare_runs.append(bare())
    bare_s = sum(bare_runs) / len(bare_runs)
    bare_rate = len(arrays) / bare_s
    rows = [[f"bare batched model forward ({runtime}; mean of a run before and one after)",
             str(len(arrays)), f"{bare_s:.2f}", f"{bare_rate:.2f}", "1.00"]]
    rates = {"bare_tasks_per_s": round(bare_rate, 3), "bare_runs_s": [round(b, 2) for b in bare_runs],
             "runtime": runtime}
    for label, (secs, n, stages) in timings.items():
        rate = n / secs
        rows.append([label, str(n), f"{secs:.2f}", f"{rate:.2f}", f"{rate / bare_rate:.2f}"])
        rates[label] = round(rate, 3)
        rates[label + " (ratio)"] = round(rate / bare_rate, 3)
        rates[label + " (stages)"] = stages
    rates["serving_fit"] = list(fit)
    if one_image is not None:
        from shoeseg_services.ls_config import parse_label_config
        from shoeseg_services.predictions import PredictionWriter

        config = parse_label_config(client.projects.get(id=pid).label_config)
        writer = PredictionWriter(config, predictor.class_names, strategy=settings.al_strategy,
                                  score_thresh=predictor.score_thresh)
        rates["one_image"] = one_image(predictor, writer, arrays)
    return rows, rates


# -- tiny mode: generated images ----------------------------------------------------------------------------

def run_tiny(args) -> None:
    from shoeseg_app.stack.labelstudio import LabelStudioServer
    from shoeseg_app.stack.redis import RedisServer
    from shoeseg_app.stack.service import free_port
    from shoeseg_services.ls_api import import_dataset
    from via_tools.labelstudio import region_to_ls_results

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
            procs += _start([[str(BIN / "shoeseg"), "serve", "--port", str(port)], [str(BIN / "shoeseg"), "worker"]],
                            env, root / "processes.log")
            backend = f"http://127.0.0.1:{port}"
            _wait("the backend", lambda: _healthy(backend), 120)
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

            from shoeseg_services.registry import ModelRegistry

            registry = ModelRegistry(root / "models")

            def pushed():
                v = registry.current_version_id()
                if not v or client.projects.get(id=pid).model_version != v:
                    return None
                done, total = _count_pushed(client, pid, v)
                return v if done == total else None

            version = _wait("predictions pushed", pushed, 900, every_s=0.25, logs=root / "processes.log")
            loop_s = time.perf_counter() - t0
            _stop(procs)

            _table("annotation -> predictions in Label Studio (real processes; tiny model on "
                   f"{env_loop['SHOESEG_DEVICE']}, {args.iters} iterations, {args.tasks} tasks)",
                   ["measure", "seconds"], [["third new annotation -> every task has a prediction of the new version",
                                              f"{loop_s:.1f}"]])

            os.environ.update({k: v for k, v in env.items() if k.startswith(("SHOESEG_", "LABEL_STUDIO_"))})
            rows, rates = push_throughput(client, pid, version, registry, [images_dir / n for n in names],
                                          batch=args.batch, device=env_loop["SHOESEG_DEVICE"], cache_dir=root / "cache")
            _table(f"prediction push throughput (batch {args.batch}, {WIDTH_PX}x{HEIGHT_PX} px, "
                   f"{env_loop['SHOESEG_DEVICE']}, least_confidence)",
                   ["path", "tasks", "seconds", "tasks/s", "ratio to bare forward"], rows)
            print(json.dumps({"loop_s": round(loop_s, 2), **{k: v for k, v in rates.items()
                                                              if not k.endswith(("(ratio)", "(stages)")) and k != "serving_fit"}}))
    finally:
        _kill(procs)
        shutil.rmtree(root, ignore_errors=True)


# -- real data: the shared shoe photos ----------------------------------------------------------------------

def shoes_plan(ds, *, tiny: bool, hold_back: int | None = None) -> dict:
    """Which shared photos are tasks, which are labelled at import, held back, or held out (file names).

    The seed-0 split of :func:`shoeseg.data.split_dataset`; the held-back images are a seed-0 sample of its
    train part. ``tiny``: its first 6 train, 2 val and 1 test images, 3 held back.
    """
    from shoeseg.data import split_dataset

    split = split_dataset(ds, seed=0)
    train, held_out = list(split["train"]), list(split["val"]) + list(split["test"])
    if tiny:
        train, held_out = train[:6], list(split["val"][:2]) + list(split["test"][:1])
    n_back = hold_back if hold_back is not None else (3 if tiny else 10)
    if not 0 < n_back < len(train):
        raise ValueError(f"hold back 1 to {len(train) - 1} of the {len(train)} train images, not {n_back}")
    back = sorted(random.Random(0).sample(sorted(train), n_back))
    return {"train": train, "held_back": back, "labelled": [n for n in train if n not in back],
            "held_out": held_out, "tasks": train + held_out}


def _registered(registry) -> dict:
    return {v.version: v for v in registry.versions()}


def _evaluate_held_out(checkpoint: Path, held_ds, images_dir: Path) -> dict:
    from shoeseg.evaluate import evaluate
    from shoeseg.predict import Predictor

    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", score_thresh=0.05)
    metrics = evaluate(predictor, held_ds, images_dir=images_dir).metrics
    return {k: metrics.get(k) for k in ("segm_AP", "segm_AP50", "bbox_AP")}


def run_shoes(args) -> dict | None:
    data = Path(args.data)
    via_file, src_images = data / "via_project.json", data / "images"
    if not (via_file.is_file() and src_images.is_dir()):
        print(f"bench_loop --shoes: skipped: {via_file} and {src_images}/ are needed (the shared datasets, "
              "../shared beside the checkout, are absent here)")
        return None
    import httpx
    import redis

    from shoeseg.data import subset
    from shoeseg_app.stack.labelstudio import LabelStudioServer
    from shoeseg_app.stack.redis import RedisServer
    from shoeseg_app.stack.service import free_port
    from shoeseg_services import queues, trigger
    from shoeseg_services.ls_api import list_tasks
    from shoeseg_services.registry import ModelRegistry
    from via_tools.io import load, save
    from via_tools.labelstudio import region_to_ls_results
    from via_tools.options import ReadOptions

    tiny = args.tiny
    ds = load(via_file, options=ReadOptions(images_dir=src_images))
    plan = shoes_plan(ds, tiny=tiny, hold_back=args.hold_back)
    n_tasks, n_back = len(plan["tasks"]), len(plan["held_back"])
    truth = {im.file_name: im for im in ds.images}
    held_ds = subset(ds, plan["held_out"])
    poll_s = 0.5 if tiny else 2.0

    root = Path(tempfile.mkdtemp(prefix="bench-loop-shoes-"))
    log_path = root / "processes.log"
    procs: list[subprocess.Popen] = []
    env_loop = {
        "SHOESEG_PROFILE": "cpu", "SHOESEG_DEVICE": "cpu", "SHOESEG_MIN_NEW_ANNOTATIONS": str(n_back),
        "SHOESEG_PREDICT_BATCH": str(args.batch), "SHOESEG_MODEL_DIR": str(root / "models"),
        "SHOESEG_CACHE_DIR": str(root / "cache"), "PYTHONUNBUFFERED": "1",
    }
    if tiny:
        env_loop.update(SHOESEG_TRAIN_ITERS="2", SHOESEG_MIN_SIZE="128", SHOESEG_MAX_SIZE="192",
                        SHOESEG_ROI_BATCH="32", SHOESEG_PROMOTE_TOLERANCE="1.0")
    if args.promote_tolerance is not None:
        env_loop["SHOESEG_PROMOTE_TOLERANCE"] = str(args.promote_tolerance)
    result: dict = {"mode": "shoes-tiny" if tiny else "shoes", "data": str(data), "tasks": n_tasks,
                    "labelled_at_import": len(plan["labelled"]), "held_back": n_back,
                    "held_out": len(plan["held_out"]), "settings": dict(env_loop), "targets": TARGETS}
    for k in ("SHOESEG_MODEL_DIR", "SHOESEG_CACHE_DIR", "PYTHONUNBUFFERED"):
        result["settings"].pop(k)
    try:
        files_root = root / "files"
        images_dir = files_root / "shoes"
        images_dir.mkdir(parents=True)
        for name in plan["tasks"]:  # a temporary copy under Label Studio's files root (nothing in the repo)
            shutil.copyfile(src_images / name, images_dir / name)
        # the file a user imports: train polygons except the held-back images; held-out images unlabelled
        to_import = subset(copy.deepcopy(ds), plan["tasks"])
        for im in to_import.images:
            if im.file_name not in plan["labelled"]:
                im.regions = []
        via_import = root / "via_import.json"
        save(to_import, via_import, fmt="via2")

        with LabelStudioServer(data_dir=root / "ls", files_root=files_root) as ls, \
                RedisServer(data_dir=root / "redis") as rs:
            client = ls.client()
            base = {k: v for k, v in os.environ.items() if not k.startswith(("SHOESEG_", "LABEL_STUDIO_", "REDIS_URL"))}
            env = {**base, **env_loop, "REDIS_URL": rs.url, "LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.token}
            conn = redis.Redis.from_url(rs.url)
            port = free_port()
            backend = f"http://127.0.0.1:{port}"
            procs += _start([[str(BIN / "shoeseg"), "serve", "--port", str(port)],
                             [str(BIN / "shoeseg"), "worker"]], env, log_path)
            _wait("the backend", lambda: _healthy(backend), 180, logs=log_path)
            registry = ModelRegistry(root / "models")
            marks: dict[str, float] = {}

            def failed(pid: int) -> None:
                st = trigger.training_state(conn, pid)
                if st.get("state") == "failed":
                    raise RuntimeError(f"the training failed: {st}\n{log_path.read_text(errors='replace')[-4000:]}")

            def pushed_new(pid: int, before: set[str], mark: str):
                """The new version once every task holds its prediction; a registered version that was not
                promoted ends the wait too (it pushes nothing)."""
                failed(pid)
                v = registry.current_version_id()
                if v and v not in before:
                    marks.setdefault(mark, time.perf_counter())
                    if client.projects.get(id=pid).model_version == v:
                        done, total = _count_pushed(client, pid, v)
                        if done == total:
                            return v
                    return None
                for name, mv in _registered(registry).items():
                    if name not in before and not mv.meta.get("promoted", True):
                        return ("not promoted", name)
                return None

            # (a) the import, as a user runs it; the first training starts on its own
            t0 = time.perf_counter()
            out = subprocess.run(
                [str(BIN / "shoeseg"), "via", "import", str(via_import), "--images", str(images_dir),
                 "--url", ls.url, "--api-key", ls.token, "--title", "bench loop shoes",
                 "--files-root", str(files_root)],
                cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
            result["import_s"] = round(time.perf_counter() - t0, 2)
            if out.returncode != 0:
                raise RuntimeError(f"shoeseg via import failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
            found = re.search(r"/projects/(\d+)/", out.stdout)
            if not found:
                raise RuntimeError(f"no project in the import's output:\n{out.stdout}")
            pid = int(found.group(1))
            result["import_said"] = [ln for ln in out.stdout.splitlines() if ln.startswith("first model:")]
            client.ml.create(project=pid, url=backend, title="shoeseg", is_interactive=False)
            task_ids = {t["data"]["file_name"]: int(t["id"]) for t in list_tasks(client, pid)}
            assert len(task_ids) == n_tasks, f"{len(task_ids)} tasks for {n_tasks} images"

            first = _wait("the first version's prediction on every task",
                          lambda: pushed_new(pid, set(), "first_promoted"), 600 if tiny else 3600, poll_s, log_path)
            if isinstance(first, tuple):
                raise RuntimeError(f"the first version {first[1]} was not promoted")
            t_first = time.perf_counter()
            result["first_version"] = first
            result["first_model_min"] = round((t_first - t0) / 60, 3)
            result["first_promoted_min"] = round((marks["first_promoted"] - t0) / 60, 3)
            print(f"import -> first version's prediction on every task: {result['first_model_min']:.2f} min",
                  flush=True)

            def idle():
                from rq import Queue

                st = trigger.training_state(conn, pid)
                return st.get("state") in (None, "idle") and not any(
                    Queue(q, connection=conn).count for q in queues.QUEUES)

            _wait("the queues to drain", idle, 600, poll_s, log_path)
            result["versions_before_new_labels"] = sorted(_registered(registry))
            result["webhook_count_before_new_labels"] = trigger.training_state(conn, pid).get("count")
            before = set(result["versions_before_new_labels"])

            # (b) the held-back annotations through the SDK; the webhooks count them
            for name in plan["held_back"]:
                im = truth[name]
                res = []
                for r in im.regions:
                    res += region_to_ls_results(r, im.width_px, im.height_px, from_name="label", to_name="image")
                client.annotations.create(id=task_ids[name], result=res, project=pid)
            t1 = time.perf_counter()
            nxt = _wait("the next version's prediction on every task", lambda: pushed_new(pid, before, "next_promoted"),
                        600 if tiny else 1800, poll_s, log_path)
            t_next = time.perf_counter()
            if isinstance(nxt, tuple):
                result["next_version"], result["next_promoted"] = nxt[1], False
                result["next_decision"] = registry.get(nxt[1]).meta.get("decision")
                result["next_registered_min"] = round((t_next - t1) / 60, 3)
            else:
                result["next_version"], result["next_promoted"] = nxt, True
                result["next_version_min"] = round((t_next - t1) / 60, 3)
                result["next_promoted_min"] = round((marks["next_promoted"] - t1) / 60, 3)
                result["next_decision"] = registry.get(nxt).meta.get("decision")
            try:
                health = httpx.get(backend + "/health", timeout=5).json()
                result["health_training"] = health.get("training", {}).get(str(pid))
            except (httpx.HTTPError, ValueError):
                pass
            _wait("the queues to drain", idle, 600, poll_s, log_path)
            _stop(procs)

            # (c) each version on the held-out split
            result["versions"] = {}
            for name, mv in sorted(_registered(registry).items(), key=lambda kv: kv[1].created_at):
                cfg = mv.meta.get("train_config") or {}
                result["versions"][name] = {
                    "promoted": mv.meta.get("promoted"), "decision": mv.meta.get("decision"),
                    "iters": cfg.get("iters"), "arch": cfg.get("arch"), "weights": cfg.get("weights"),
                    "train_tasks": mv.metrics.get("train_tasks"),
                    "val_tasks": mv.metrics.get("val_tasks"), "worker_val_segm_AP": mv.metrics.get("segm_AP"),
                    "held_out": _evaluate_held_out(mv.checkpoint, held_ds, src_images),
                }

            # (d) the push throughput of the last promoted version
            os.environ.update({k: v for k, v in env.items() if k.startswith(("SHOESEG_", "LABEL_STUDIO_"))})
            version = registry.current_version_id()
            names = sorted(task_ids)
            rows, rates = push_throughput(client, pid, version, registry, [images_dir / n for n in names],
                                          batch=args.batch, device="cpu", cache_dir=root / "cache")
            result["throughput"] = {"version": version, "batch": args.batch, **rates}
            result["throughput_rows"] = rows
        return result
    finally:
        _kill(procs)
        shutil.rmtree(root, ignore_errors=True)


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def shoes_table(r: dict) -> str:
    """The real-data mode's one markdown table: measured values beside their targets."""
    first, nxt = r["first_version"], r["next_version"]
    rows = [
        ["(a) import start -> first version's prediction on every task", "min", _fmt(r["first_model_min"], 2),
         f"<= {TARGETS['first_model_min']:g}"],
        ["    of which: import (`shoeseg via import`)", "min", _fmt(r["import_s"] / 60, 2), ""],
        ["    of which: import start -> first version promoted", "min", _fmt(r["first_promoted_min"], 2), ""],
    ]
    if r.get("next_promoted"):
        rows += [[f"(b) last of {r['held_back']} new annotations -> next version's prediction on every task", "min",
                  _fmt(r["next_version_min"], 2), f"<= {TARGETS['next_version_min']:g}"],
                 ["    of which: -> next version promoted", "min", _fmt(r["next_promoted_min"], 2), ""]]
    else:
        rows.append([f"(b) last of {r['held_back']} new annotations -> next version's prediction on every task "
                     f"(not promoted: {r.get('next_decision')}; registered after {_fmt(r.get('next_registered_min'), 2)} min)",
                     "min", "n/a", f"<= {TARGETS['next_version_min']:g}"])
    for tag, name in (("first", first), ("next", nxt)):
        v = r["versions"].get(name) or {}
        h = v.get("held_out") or {}
        what = (f"(c) {tag} version {name} ({v.get('arch')}, {v.get('iters')} it, {v.get('train_tasks')} train / "
                f"{v.get('val_tasks')} val tasks{'' if v.get('promoted') else ', not promoted'}): held-out")
        rows.append([f"{what} mask AP / AP50 / box AP", f"{r['held_out']} images",
                     f"{_fmt(h.get('segm_AP'))} / {_fmt(h.get('segm_AP50'))} / {_fmt(h.get('bbox_AP'))}", ""])
    th = r["throughput"]
    for label, value in th.items():
        if label.endswith(" (ratio)"):
            rows.append([f"(d) {label[:-8]}: tasks/s over the bare forward's ({th['bare_tasks_per_s']:.2f} tasks/s)",
                         "ratio", _fmt(value, 2), f">= {TARGETS['push_ratio']:g}"])
            stages = th.get(label[:-8] + " (stages)") or {}
            if stages:
                rows.append(["    of which: " + ", ".join(stages), "s",
                             " / ".join(f"{v:.1f}" for v in stages.values()), ""])
    return _markdown(["measure", "unit", "measured", "target"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench_loop", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=32, help="tasks in the project (tiny mode)")
    parser.add_argument("--iters", type=int, default=4, help="training iterations (tiny mode)")
    parser.add_argument("--batch", type=int, default=8, help="images per prediction batch")
    parser.add_argument("--shoes", action="store_true", help="real data: the shared shoe photos, the cpu profile")
    parser.add_argument("--tiny", action="store_true", help="with --shoes: a smoke run (9 photos, 2 iterations)")
    parser.add_argument("--data", type=Path, default=SHOES, help="the shared shoes folder (via_project.json, images/)")
    parser.add_argument("--hold-back", type=int, default=None,
                        help="train images labelled later through the SDK (default 10; 3 with --tiny)")
    parser.add_argument("--promote-tolerance", type=float, default=None, help="SHOESEG_PROMOTE_TOLERANCE (--shoes)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "loop",
                        help="folder of the table and the JSON (--shoes)")
    if argv is None:  # `python -m bench loop` passes no arguments: BENCH_LOOP_ARGS holds them
        argv = shlex.split(os.environ.get("BENCH_LOOP_ARGS", ""))
    args = parser.parse_args(argv)
    if args.tiny and not args.shoes:
        parser.error("--tiny goes with --shoes (the default mode is tiny already)")
    if not args.shoes:
        run_tiny(args)
        return
    r = run_shoes(args)
    if r is None:
        return
    table = shoes_table(r)
    title = (f"The retraining loop on the shared shoes ({r['tasks']} tasks; real processes, cpu profile"
             f"{', SMOKE: 2 iterations, figures mean nothing' if args.tiny else ''})")
    print(f"\n{title}\n{table}")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "loop-shoes-tiny" if args.tiny else "loop-shoes"
    (args.out / f"{stem}.md").write_text(f"{title}\n\n{table}\n")
    (args.out / f"{stem}.json").write_text(json.dumps(r, indent=2, default=str) + "\n")
    print(f"wrote {args.out / (stem + '.md')} and {args.out / (stem + '.json')}")


if __name__ == "__main__":
    main(sys.argv[1:])
