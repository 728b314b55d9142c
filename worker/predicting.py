"""The prediction job's work: every task of a project predicted by one version, written as the backend writes it."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

from shoeseg_services.settings import Settings
from worker.plumbing import Progress

log = logging.getLogger(__name__)


def task_order(tasks: list[dict]) -> list[dict]:
    """Tasks without annotations first (by id), then the annotated ones (by id)."""
    def labelled(t: dict) -> bool:
        return bool(t.get("total_annotations") or t.get("annotations") or t.get("is_labeled"))

    return sorted(tasks, key=lambda t: (labelled(t), int(t["id"])))


def run_prediction(project_id: int, *, version: str, strategy: str, force: bool, settings: Settings,
                   progress: Progress) -> dict:
    """Predicts the project's tasks that hold no prediction of ``version`` yet, and stores them in Label Studio.

    The summary's ``stage_seconds`` splits the time: ``setup`` (the project, its tasks, the model loaded),
    ``images`` (waiting for the batch's images, fetched and decoded while the previous batch ran), ``model``
    (the forward pass), ``store`` (waiting for the previous batch's outputs to be turned into regions and task
    scores and stored in Label Studio, which runs beside the next batch's forward), ``finish`` (the project's model
    version set, superseded predictions removed). ``regions_seconds`` is the time spent on regions beside the
    forward (not part of the stages).

    Images go through the backend's path: the shared fetcher and cache (:mod:`shoeseg_services.fetch`), decoded at the
    model's input size, and the one writer (:mod:`shoeseg_services.predictions`), so a task reads the same whichever
    service predicted it.
    """
    from shoeseg.runtime import load_predictor
    from shoeseg_services.fetch import ImageFetcher, ImageFetchError, configured_access
    from shoeseg_services.ls_api import (
        LabelStudioUnavailable,
        call,
        connect,
        delete_predictions,
        is_transient,
        label_config_of,
        list_tasks,
        push_predictions,
        set_model_version,
    )
    from shoeseg_services.ls_config import parse_label_config
    from shoeseg_services.predictions import PredictionWriter, as_ls, combine, task_images
    from shoeseg_services.registry import ModelRegistry

    t0 = time.perf_counter()
    registry = ModelRegistry(settings.model_dir, cache_dir=settings.cache_dir)
    current = registry.current_version_id()
    if current != version and not force:
        log.info("project %s: %s is no longer current (%s): not predicting", project_id, version, current)
        return {"project": project_id, "version": version, "skipped": f"version {current} is current now"}
    model_version = registry.get(version)
    # the model loads (an ONNX Runtime session, or the checkpoint) while Label Studio lists the tasks
    with ThreadPoolExecutor(1, thread_name_prefix="push-load") as load_pool:
        loading = load_pool.submit(load_predictor, model_version.checkpoint, runtime=settings.runtime,
                                   device=settings.device, score_thresh=settings.score_thresh,
                                   batch_size=settings.predict_batch, **settings.output_options())
        client = connect(settings.label_studio_url, settings.label_studio_api_key)
        config = parse_label_config(call(f"read project {project_id}", label_config_of, client, project_id))
        tasks = call(f"list the tasks of project {project_id}", list_tasks, client, project_id)
        todo = [t for t in task_order(tasks)
                if not any(p.get("model_version") == version for p in (t.get("predictions") or []))]
        already = len(tasks) - len(todo)
        progress.update(force=True, stage="predicting", tasks_total=len(tasks), tasks_done=already,
                        strategy=strategy)
        predictor = loading.result()
    writer = PredictionWriter(config, predictor.class_names, strategy=strategy, score_thresh=predictor.score_thresh)
    fetcher = ImageFetcher(settings)
    access = configured_access(settings)
    fit = predictor.input_fit
    pushed = failed = 0
    stage_s = {"setup": time.perf_counter() - t0, "images": 0.0, "model": 0.0, "store": 0.0}

    def fetch_views(batch: list[dict]) -> tuple[list[tuple], int]:
        """(task, image name, array, full size) of every image the tasks show, and how many were unreadable."""
        views, bad = [], 0
        for t in batch:
            for image, url in task_images(config, t):
                try:
                    fetched = fetcher.fetch(url, task_id=t["id"], access=access)
                    array, full_wh = fetcher.decode(fetched, task_id=t["id"], fit_within=fit)
                except ImageFetchError as e:
                    if is_transient(e.__cause__ or e):
                        raise LabelStudioUnavailable(str(e)) from e
                    log.error("%s: no prediction for it", e)
                    bad += 1
                    continue
                views.append((t, image.name, array, full_wh))
        return views, bad

    def regions_and_store(views: list[tuple], outputs: list) -> tuple[int, float]:
        """The model's outputs as regions and task scores, stored; returns (tasks stored, seconds on regions)."""
        t_regions = time.perf_counter()
        per_task: dict[int, list] = {}
        arrays = [v[2] for v in views]
        for (t, name, array, full_wh), (d, b) in zip(views, writer.candidates_from(predictor, outputs, arrays),
                                                      strict=True):
            per_task.setdefault(int(t["id"]), []).append(writer.write_view(
                d, b, image_name=name, seen_hw=array.shape[:2], full_wh=full_wh, task_id=t["id"]))
        items = [as_ls(combine(p), task_id=task_id, model_version=version) for task_id, p in per_task.items()]
        regions_s = time.perf_counter() - t_regions
        stored = call(f"store predictions in project {project_id}", push_predictions, client, project_id, items,
                      model_version=version)
        return stored, regions_s

    # a pipeline: the next batch's images are fetched, and the previous batch's outputs turned into regions and
    # stored, while the model runs, so that the push costs about the model's forward (the stages count the main
    # thread's time: its waits for images and for the previous batch's regions and store, and the forward)
    batches = [todo[s:s + settings.predict_batch] for s in range(0, len(todo), settings.predict_batch)]
    regions_s = 0.0
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="push-images") as images_pool, \
            ThreadPoolExecutor(1, thread_name_prefix="push-store") as store_pool:
            next_views = images_pool.submit(fetch_views, batches[0]) if batches else None
            storing = None
            for i in range(len(batches)):
                t_stage = time.perf_counter()
                views, bad = next_views.result()
                failed += bad
                if i + 1 < len(batches):
                    next_views = images_pool.submit(fetch_views, batches[i + 1])
                t_model = time.perf_counter()
                stage_s["images"] += t_model - t_stage
                outputs = writer.forward(predictor, [v[2] for v in views])
                t_store = time.perf_counter()
                stage_s["model"] += t_store - t_model
                if storing is not None:
                    stored, seconds_regions = storing.result()
                    pushed += stored
                    regions_s += seconds_regions
                    progress.update(tasks_done=already + pushed)
                storing = store_pool.submit(regions_and_store, views, outputs)
                stage_s["store"] += time.perf_counter() - t_store
            if storing is not None:
                t_store = time.perf_counter()
                stored, seconds_regions = storing.result()
                pushed += stored
                regions_s += seconds_regions
                stage_s["store"] += time.perf_counter() - t_store
                progress.update(tasks_done=already + pushed)
    finally:
        fetcher.close()
    call(f"set the model version of project {project_id}", set_model_version, client, project_id, version)
    removed = 0
    if not settings.keep_old_predictions:
        # superseded: predictions of our other registry versions; another backend's and annotations stay
        ours = {v.version for v in registry.versions()} - {version}
        old = [p["id"] for t in tasks for p in (t.get("predictions") or [])
               if p.get("model_version") in ours and p.get("id") is not None]
        removed = call(f"remove superseded predictions in project {project_id}", delete_predictions, client, old)
    seconds = time.perf_counter() - t0
    stage_s["finish"] = seconds - sum(stage_s.values())
    log.info("project %s: %d predictions of %s stored (%d already there, %d images unreadable, %d superseded "
             "removed) in %.1f s: %s", project_id, pushed, version, already, failed, removed, seconds,
             ", ".join(f"{k} {v:.1f} s" for k, v in stage_s.items()))
    return {"project": project_id, "version": version, "strategy": strategy, "tasks": len(tasks),
            "pushed": pushed, "already_there": already, "failed_images": failed, "removed": removed,
            "seconds": round(seconds, 3), "stage_seconds": {k: round(v, 3) for k, v in stage_s.items()},
            "regions_seconds": round(regions_s, 3)}
