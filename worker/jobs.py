"""RQ jobs of the retraining loop: retrain a project's model, and push its predictions back to Label Studio.

Both are plain module-level functions with JSON-serialisable arguments, enqueued by import path
(``"worker.jobs.train_project"``, ``"worker.jobs.predict_project"``) by :mod:`worker.trigger`.

``train_project``
    pulls the accepted annotations (latest non-cancelled one per task) from Label Studio, fetches and caches
    the images, keeps a fixed validation subset (chosen by a hash of the task id, so a task never moves
    between subsets), fine-tunes from the current version (or from ``SHOESEG_INIT_WEIGHTS`` for the first
    model), evaluates the new model and the current one on the same validation subset, registers the new
    version with its metrics and the task and annotation ids it saw, and promotes it when its mask AP is not
    worse than the current version's by more than ``SHOESEG_PROMOTE_TOLERANCE``. A promotion enqueues
    ``predict_project``. Training writes into a temporary run directory; the registry adds a version all at
    once and the ``current`` pointer changes only on promotion, so a killed worker leaves the current
    version untouched and loadable.

``predict_project``
    predicts every task of the project in batches (tasks without annotations first), scores each task
    for active learning (lower = more informative, see :mod:`shoeseg.active_learning`), stores the
    predictions in Label Studio with the new ``model_version``, and sets the project's ``model_version``
    so that ordering by prediction score uses them. Tasks that already hold a prediction of that version are
    skipped, so a retried job does not duplicate them.

Progress (stage, iteration, losses, tasks done) is kept in ``job.meta`` for rq-dashboard; failures that a
retry may cure (Label Studio or an image host unreachable) are retried with back-off, others fail at once
with the reason in ``job.meta["error"]``.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from worker import trigger
from worker.ls import LabelStudioUnavailable, TaskImages, client_from_settings, is_transient
from worker.settings import PREDICT_JOB, PREDICT_QUEUE, LoopSettings

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------- job plumbing
class _Progress:
    """Writes progress into the current rq job's meta, at most every ``interval_s`` seconds."""

    def __init__(self, job, *, interval_s: float = 0.5):
        self.job = job
        self.interval_s = interval_s
        self._last = 0.0

    def update(self, *, force: bool = False, **values: Any) -> None:
        if self.job is None:
            return
        self.job.meta.update(values)
        now = time.monotonic()
        if force or now - self._last >= self.interval_s:
            self._last = now
            try:
                self.job.save_meta()
            except Exception:  # progress is best effort; Redis errors surface elsewhere
                log.debug("could not save job meta", exc_info=True)


class _Lease:
    """Renews the project's training lease from a thread while the job runs (stops with the process)."""

    def __init__(self, conn, project_id: int, job_id: str, *, ttl_s: int):
        self.conn, self.project_id, self.job_id, self.ttl_s = conn, project_id, job_id, ttl_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(max(self.ttl_s / 3.0, 0.5)):
            try:
                if not trigger.heartbeat(self.conn, self.project_id, self.job_id, lease_ttl_s=self.ttl_s):
                    log.warning("job %s no longer owns project %s", self.job_id, self.project_id)
                    return
            except Exception:
                log.warning("could not renew the lease of %s", self.job_id, exc_info=True)

    def __enter__(self) -> _Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _fail(job, exc: BaseException, *, stage: str) -> bool:
    """Records why the job failed; returns whether rq will retry it (only transient failures are retried)."""
    transient = is_transient(exc)
    if job is None:
        return False
    if not transient and job.retries_left:
        job.retries_left = 0  # a retry would fail the same way: fail now
    will_retry = bool(job.retries_left)
    job.meta.update(
        stage="failed" if not will_retry else "retrying",
        error=f"{stage}: {type(exc).__name__}: {exc}",
        transient=transient,
        will_retry=will_retry,
        failed_at=_now(),
    )
    try:
        job.save_meta()
    except Exception:
        log.debug("could not save job meta", exc_info=True)
    return will_retry


def _current_job():
    from rq import get_current_job

    return get_current_job()


# ------------------------------------------------------------------------------------------ data helpers
def _task_hash(task_id: Any) -> int:
    return int.from_bytes(hashlib.blake2b(str(task_id).encode(), digest_size=8).digest(), "big")


def validation_task_ids(task_ids: list[Any], *, modulo: int) -> set[str]:
    """The fixed validation subset: tasks whose id hash is divisible by ``modulo``.

    A task's membership depends only on its id, so it never moves between training and validation as the
    project grows. With two tasks or more, at least one is kept for validation and at least one for training
    (the tasks with the smallest / largest hash), so a tiny project can still compare versions.

    Example:
        >>> sorted(validation_task_ids(["1", "2"], modulo=5)) in (["1"], ["2"])
        True
    """
    ids = [str(t) for t in task_ids]
    val = {t for t in ids if _task_hash(t) % modulo == 0}
    if len(ids) >= 2:
        if not val:
            val = {min(ids, key=_task_hash)}
        if len(val) == len(ids):
            val.discard(max(ids, key=_task_hash))
    return val


def _subset(ds, keep):
    from via_tools.model import AnnotationSet

    return AnnotationSet(images=[im for im in ds.images if keep(im)], labels=list(ds.labels),
                         source_format=ds.source_format, meta=dict(ds.meta))


def _localise_images(ds, images: TaskImages, progress: _Progress) -> None:
    """Downloads (or finds in the cache) every image and points ``file_name`` at the cached file."""
    from via_tools.images import image_size_wh

    total = len(ds.images)
    for k, im in enumerate(ds.images):
        url = im.extra.get("ls_image") or im.file_name
        path = images.path(task_id=im.image_id, url=url)
        im.file_name = path.name
        if im.width_px is None or im.height_px is None:
            im.width_px, im.height_px = image_size_wh(path)
        progress.update(stage="fetching images", images_done=k + 1, images_total=total)


def _train_config(settings: LoopSettings, *, weights: str | None, init_from: str | None, seed: int):
    """The job's training settings: the profile (``SHOESEG_PROFILE``), then what the environment sets."""
    from shoeseg.train import TrainConfig

    explicit = {
        "iters": settings.train_iters,
        "ims_per_batch": settings.ims_per_batch,
        "base_lr": settings.base_lr,
        "roi_batch_size_per_image": settings.roi_batch_size_per_image,
        "min_size": settings.min_size,
        "max_size": settings.max_size,
        "weights": weights,
        "init_from": init_from,
        "seed": seed,
        "progress_bar": False,
    }
    config = TrainConfig.for_profile(settings.profile, device=settings.device, **explicit)
    config.log_period = max(1, min(20, config.iters // 10 or 1))
    return config


def _evaluate(checkpoint: Path, val_ds, images_dir: Path, settings: LoopSettings) -> dict:
    from shoeseg.evaluate import evaluate
    from shoeseg.predict import Predictor

    predictor = Predictor.from_checkpoint(checkpoint, device=settings.device, score_thresh=0.05)
    return dict(evaluate(predictor, val_ds, images_dir=images_dir, device=settings.device).metrics)


def decide_promotion(new_ap: float | None, current_ap: float | None, *, has_current: bool,
                     tolerance: float) -> tuple[bool, str]:
    """Whether a new version replaces the current one, and why (in words).

    Example:
        >>> decide_promotion(0.40, 0.42, has_current=True, tolerance=0.05)
        (True, 'segm_AP 0.4000 >= current 0.4200 - tolerance 0.0500')
    """
    if not has_current:
        return True, "no current version"
    if new_ap is None or current_ap is None:
        return False, "no validation images to compare the new version with the current one"
    if new_ap >= current_ap - tolerance:
        return True, f"segm_AP {new_ap:.4f} >= current {current_ap:.4f} - tolerance {tolerance:.4f}"
    return False, (f"segm_AP {new_ap:.4f} is worse than the current version's {current_ap:.4f} "
                   f"by more than the tolerance {tolerance:.4f}")


def _clean_old_runs(runs_dir: Path) -> None:
    # Only one training per project runs at a time (see worker.trigger): older run dirs are leftovers of
    # killed workers.
    if runs_dir.is_dir():
        for old in runs_dir.iterdir():
            if old.is_dir() and old.name.startswith("run-"):
                shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------- train_project
def train_project(project_id: int, *, reason: str = "manual") -> dict:
    """Retrains the model on a Label Studio project's accepted annotations and promotes it when good enough.

    Args:
        project_id: Label Studio project id.
        reason: why the training was asked for (kept in the version's metadata).

    Returns:
        A JSON-able summary: ``version``, ``promoted``, ``decision``, ``metrics`` (new model on the validation
        subset), ``current_metrics`` (current model on the same subset), ``train_tasks``, ``val_tasks``,
        ``predict_job_id`` and ``follow_up``; or ``{"skipped": ...}`` when the project has no accepted annotation.

    Raises:
        worker.ls.LabelStudioUnavailable: Label Studio or an image host unreachable (rq retries the job).
        ValueError / via_tools.errors.AnnotationError: bad settings or annotations, naming the task.

    Example:
        >>> from rq import Queue
        >>> Queue("shoeseg-train", connection=conn).enqueue_call(  # doctest: +SKIP
        ...     "worker.jobs.train_project", args=(3,), kwargs={"reason": "manual"})
    """
    project_id = int(project_id)
    settings = LoopSettings.from_env()
    job = _current_job()
    conn = job.connection if job is not None else None
    owned = job is not None and trigger.begin_training(conn, project_id, job.id,
                                                       lease_ttl_s=settings.lease_ttl_s)
    progress = _Progress(job)
    attempts = int(job.meta.get("attempts", 0)) + 1 if job is not None else 1
    progress.update(force=True, project=project_id, stage="starting", started_at=_now(), error=None,
                    attempts=attempts)
    outcome, will_retry = "error", False
    lease = _Lease(conn, project_id, job.id, ttl_s=settings.lease_ttl_s) if owned else None
    try:
        if lease:
            lease.__enter__()
        summary = _train_project(project_id, reason=reason, settings=settings, job=job, progress=progress)
        outcome = "promoted" if summary.get("promoted") else ("skipped" if summary.get("skipped") else "candidate")
        progress.update(force=True, stage="done", result=summary)
        return summary
    except Exception as e:
        will_retry = _fail(job, e, stage=str(progress.job.meta.get("stage")) if job else "train")
        raise
    finally:
        if lease:
            lease.__exit__()
        if owned:
            end = trigger.finish_training(conn, project_id, job.id, will_retry=will_retry, outcome=outcome,
                                          settings=settings)
            if end["action"] == "follow_up":
                progress.update(force=True, follow_up=end["job_id"])


def _train_project(project_id: int, *, reason: str, settings: LoopSettings, job, progress: _Progress) -> dict:
    from shoeseg.registry import ModelRegistry
    from shoeseg.train import train
    from via_tools.ls_api import LabelStudioError, accepted_annotations

    progress.update(force=True, stage="reading annotations")
    client = client_from_settings(settings)
    try:
        ds = accepted_annotations(client, project_id)
    except LabelStudioError as e:
        if is_transient(e):
            raise LabelStudioUnavailable(f"project {project_id}: {e}") from e
        raise
    if not ds.images:
        log.info("project %s has no accepted annotation: nothing to train", project_id)
        return {"project": project_id, "skipped": "no accepted annotation in the project", "promoted": False}
    images = TaskImages(settings, project_id=project_id)
    try:
        _localise_images(ds, images, progress)
    finally:
        images.close()
    task_ids = [im.image_id for im in ds.images]
    annotation_ids = {im.image_id: im.extra.get("ls_annotation_id") for im in ds.images}
    val_ids = validation_task_ids(task_ids, modulo=settings.val_modulo)
    train_ds = _subset(ds, lambda im: im.image_id not in val_ids)
    val_ds = _subset(ds, lambda im: im.image_id in val_ids)
    registry = ModelRegistry(settings.model_dir)
    current = registry.current()
    # The first model starts from SHOESEG_INIT_WEIGHTS; later ones fine-tune the current version, in its family.
    weights = None if current else settings.init_weights
    init_from = str(current.checkpoint) if current else None
    config = _train_config(settings, weights=weights, init_from=init_from,
                           seed=int(job.meta.get("seed", 0)) if job is not None else 0)
    progress.update(force=True, stage="training", train_tasks=len(train_ds), val_tasks=len(val_ds),
                    iteration=0, iters=config.iters)

    runs_dir = settings.cache_dir / "runs" / str(project_id)
    runs_dir.mkdir(parents=True, exist_ok=True)
    _clean_old_runs(runs_dir)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=runs_dir))
    try:
        def on_progress(values: dict) -> None:
            progress.update(stage="training", **values)

        result = train(config, dataset=train_ds, images_dir=images.dir, out_dir=run_dir,
                       val_dataset=val_ds if len(val_ds) else None, progress=on_progress)
        progress.update(force=True, stage="evaluating")
        new_metrics = dict(result.eval.metrics) if result.eval is not None else {}
        current_metrics = (_evaluate(current.checkpoint, val_ds, images.dir, settings)
                           if current is not None and len(val_ds) else {})
        promote, decision = decide_promotion(new_metrics.get("segm_AP"), current_metrics.get("segm_AP"),
                                             has_current=current is not None, tolerance=settings.promote_tolerance)
        progress.update(force=True, stage="registering", decision=decision)
        train_losses = result.metrics[-1] if getattr(result, "metrics", None) else {}
        version = registry.register(
            result.checkpoint,
            metrics={**new_metrics, "val_tasks": len(val_ds), "train_tasks": len(train_ds)},
            parent=current.version if current else None,
            meta={
                "project": project_id,
                "label_studio": settings.label_studio_url,
                "reason": reason,
                "job_id": job.id if job is not None else None,
                "task_ids": [int(t) if str(t).isdigit() else t for t in task_ids],
                "annotation_ids": annotation_ids,
                "val_task_ids": sorted(int(t) if str(t).isdigit() else t for t in val_ids),
                "current_version": current.version if current else None,
                "current_metrics_on_val": current_metrics,
                "decision": decision,
                "promoted": promote,
                "train_config": {f.name: getattr(config, f.name) for f in fields(config)},
                "final_losses": train_losses if isinstance(train_losses, dict) else {},
            },
        )
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)

    predict_job_id = None
    if promote:
        registry.promote(version.version)
        log.info("project %s: promoted %s (%s)", project_id, version.version, decision)
        predict_job_id = _enqueue_predict(job, project_id, version.version, settings)
    else:
        log.warning("project %s: %s kept as a candidate: %s", project_id, version.version, decision)
    return {
        "project": project_id,
        "version": version.version,
        "promoted": promote,
        "decision": decision,
        "metrics": new_metrics,
        "current_version": current.version if current else None,
        "current_metrics": current_metrics,
        "train_tasks": len(train_ds),
        "val_tasks": len(val_ds),
        "predict_job_id": predict_job_id,
    }


def _enqueue_predict(job, project_id: int, version: str, settings: LoopSettings) -> str | None:
    if job is None:
        return None
    from rq import Queue, Retry

    retry = Retry(max=settings.retry_max, interval=list(settings.retry_intervals_s)) if settings.retry_max else None
    pjob = Queue(PREDICT_QUEUE, connection=job.connection).enqueue_call(
        PREDICT_JOB,
        args=(project_id,),
        kwargs={"version": version},
        job_id=f"predict-{project_id}-{version}",
        timeout=settings.predict_timeout_s,
        result_ttl=7 * 86400,
        failure_ttl=30 * 86400,
        description=f"predict project {project_id} with {version}",
        meta={"project": project_id, "version": version, "requested_at": _now(), "trained_by": job.id},
        retry=retry,
    )
    return pjob.id


# --------------------------------------------------------------------------------------- predict_project
def predict_project(project_id: int, *, version: str, strategy: str | None = None, force: bool = False) -> dict:
    """Predicts every task of a project with ``version`` and stores the predictions in Label Studio.

    Args:
        project_id: Label Studio project id.
        version: the registry version to predict with (the one just promoted).
        strategy: active-learning strategy of the task scores (default ``SHOESEG_AL_STRATEGY``).
        force: predict even when ``version`` is no longer the current one.

    Returns:
        ``{"project", "version", "strategy", "tasks", "pushed", "already_there", "seconds"}``, or
        ``{"skipped": ...}`` when a newer version was promoted meanwhile (its own job pushes).

    Raises:
        worker.ls.LabelStudioUnavailable: Label Studio or an image host unreachable (rq retries the job).

    Example:
        >>> predict_project(3, version="20250101-120000-3fa2c1")  # doctest: +SKIP
        {'project': 3, 'version': '20250101-120000-3fa2c1', 'tasks': 40, 'pushed': 40, ...}
    """
    project_id = int(project_id)
    settings = LoopSettings.from_env()
    job = _current_job()
    progress = _Progress(job)
    attempts = int(job.meta.get("attempts", 0)) + 1 if job is not None else 1
    progress.update(force=True, project=project_id, version=version, stage="starting", started_at=_now(),
                    error=None, attempts=attempts)
    try:
        summary = _predict_project(project_id, version=version, strategy=strategy or settings.al_strategy,
                                   force=force, settings=settings, progress=progress)
        progress.update(force=True, stage="done", result=summary)
        return summary
    except Exception as e:
        _fail(job, e, stage=str(job.meta.get("stage")) if job else "predict")
        raise


def _ls_call(what: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as e:
        if is_transient(e):
            raise LabelStudioUnavailable(f"{what}: Label Studio is unreachable or failing: {e}") from e
        raise


def task_order(tasks: list[dict]) -> list[dict]:
    """Tasks without annotations first (by id), then the annotated ones (by id)."""
    def labelled(t: dict) -> bool:
        return bool(t.get("total_annotations") or t.get("annotations") or t.get("is_labeled"))

    return sorted(tasks, key=lambda t: (labelled(t), int(t["id"])))


def _scores_and_detections(strategy: str, predictor, images: list, task_ids: list) -> tuple[list, list[float]]:
    """Detections (all candidates) and active-learning scores of a batch, with as few forward passes as possible."""
    from shoeseg import active_learning as al

    thresh = getattr(al, "CANDIDATE_SCORE_THRESH", 0.05)
    if strategy == "flip_consistency":
        dets, back = predictor.predict_with_flip(images, score_thresh=thresh)
        return dets, [al.flip_consistency_score(o, f) for o, f in zip(dets, back, strict=True)]
    dets = predictor.predict(images, score_thresh=thresh)
    if strategy == "least_confidence":
        return dets, [al.least_confidence_score(d) for d in dets]
    if strategy == "entropy":
        return dets, [al.entropy_score(d) for d in dets]
    if strategy == "random":
        return dets, [al.random_score(t) for t in task_ids]
    return dets, al.score_images(strategy, predictor, images, task_ids=task_ids)


def _predict_project(project_id: int, *, version: str, strategy: str, force: bool, settings: LoopSettings,
                     progress: _Progress) -> dict:
    from shoeseg.active_learning import check_strategy
    from shoeseg.predict import Predictor
    from shoeseg.registry import ModelRegistry
    from via_tools.images import read_image
    from via_tools.labelstudio import region_to_ls_results, task_image_url
    from via_tools.ls_api import list_tasks
    from worker.ls import polygon_control, push_predictions, set_model_version

    check_strategy(strategy)
    t0 = time.perf_counter()
    registry = ModelRegistry(settings.model_dir)
    current = registry.current_version_id()
    if current != version and not force:
        log.info("project %s: %s is no longer current (%s): not predicting", project_id, version, current)
        return {"project": project_id, "version": version, "skipped": f"version {current} is current now"}
    model_version = registry.get(version)
    client = client_from_settings(settings)
    project = _ls_call(f"read project {project_id}", client.projects.get, id=project_id)
    from_name, to_name, labels = polygon_control(project)
    tasks = _ls_call(f"list the tasks of project {project_id}", list_tasks, client, project_id)
    todo = [t for t in task_order(tasks)
            if not any(p.get("model_version") == version for p in (t.get("predictions") or []))]
    already = len(tasks) - len(todo)
    progress.update(force=True, stage="predicting", tasks_total=len(tasks), tasks_done=already, strategy=strategy)

    predictor = Predictor.from_checkpoint(model_version.checkpoint, device=settings.device,
                                          score_thresh=settings.score_thresh, batch_size=settings.predict_batch)
    images = TaskImages(settings, project_id=project_id)
    pushed = 0
    try:
        for start in range(0, len(todo), settings.predict_batch):
            batch = todo[start:start + settings.predict_batch]
            arrays = []
            for t in batch:
                url = task_image_url(t, where=f"project {project_id}: task {t['id']}")
                arrays.append(read_image(images.path(task_id=t["id"], url=url)))
            dets, scores = _scores_and_detections(strategy, predictor, arrays, [t["id"] for t in batch])
            items = []
            for t, image, task_dets, score in zip(batch, arrays, dets, scores, strict=True):
                h, w = image.shape[:2]
                result: list[dict] = []
                for k, d in enumerate(x for x in task_dets if x.score >= settings.score_thresh):
                    if labels and d.label not in labels:
                        continue
                    region = d.to_region()
                    region.region_id = f"p{k + 1}"
                    result.extend(region_to_ls_results(region, w, h, from_name=from_name, to_name=to_name))
                items.append({"task": int(t["id"]), "result": result, "score": float(score)})
            pushed += _ls_call(f"store predictions in project {project_id}", push_predictions, client, project_id,
                               items, model_version=version)
            progress.update(tasks_done=already + pushed)
    finally:
        images.close()
    _ls_call(f"set the model version of project {project_id}", set_model_version, client, project_id, version)
    seconds = time.perf_counter() - t0
    log.info("project %s: %d predictions of %s stored (%d already there) in %.1f s", project_id, pushed, version,
             already, seconds)
    return {"project": project_id, "version": version, "strategy": strategy, "tasks": len(tasks),
            "pushed": pushed, "already_there": already, "seconds": round(seconds, 3)}
