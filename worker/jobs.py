"""RQ jobs of the retraining loop: retrain a project's model, improve it in idle time, and push its predictions
back to Label Studio.

All are plain module-level functions with JSON-serialisable arguments, enqueued by import path
(``"worker.jobs.train_project"``, ``"worker.jobs.predict_project"``) by :mod:`shoeseg_services.trigger`.

``train_project``
    pulls the accepted annotations (latest non-cancelled one per task) from Label Studio, fetches and caches
    the images, and does nothing more when no label is new or changed since the current version. Otherwise
    it keeps a validation subset (:mod:`worker.promotion`: the first version's by a hash of the task id, capped
    at ``SHOESEG_VAL_MAX``; later ones the newest labels neither version trained on, as many, the older
    validation tasks moving into training; a task never moves from training into validation), fine-tunes from
    the current version (or from
    ``SHOESEG_INIT_WEIGHTS`` for the first model), scores the new model and the current one on the same
    validation images, registers the new version with its metrics, the task and annotation ids it saw and
    the gate's evidence, and promotes it when the gate (:mod:`shoeseg.gate`: a paired bootstrap interval of
    the per-image mask AP differences) says it is not worse. A promotion queues ``predict_project``; a run
    that ends with nothing pending queues ``improve_project``.

``improve_project``
    one chunk of training in idle time (:mod:`worker.improving`): continues the current version while the
    project has no other job, yields within an iteration to labelled work, and registers (and maybe
    promotes) a version through the same gate. Training writes into a temporary run directory; the registry adds a version all at
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

import logging

from shoeseg_services import idle_training, trigger
from shoeseg_services.settings import Settings
from worker.improving import run_improvement, undo_stale_idle_priority
from worker.plumbing import Lease, Progress, current_job, now, will_retry
from worker.predicting import run_prediction, task_order
from worker.promotion import validation_task_ids
from worker.training import run_training

__all__ = ["improve_project", "predict_project", "task_order", "train_project", "validation_task_ids"]

log = logging.getLogger(__name__)


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
    settings = Settings.from_env()
    undo_stale_idle_priority(settings)
    job = current_job()
    conn = job.connection if job is not None else None
    owned = job is not None and trigger.begin_training(conn, project_id, job.id,
                                                       lease_ttl_s=settings.lease_ttl_s)
    if job is not None and not owned:
        # Not the project's recorded job (rq re-running one the trigger has replaced): training it would run
        # two trainings of one project at once.
        recorded = trigger.training_state(conn, project_id).get("job_id")
        log.warning("project %s: job %s is not the project's training (%s is): skipped", project_id, job.id, recorded)
        return {"project": project_id, "skipped": f"job {job.id} was replaced by {recorded}", "promoted": False}
    progress = Progress(job)
    attempts = int(job.meta.get("attempts", 0)) + 1 if job is not None else 1
    progress.update(force=True, project=project_id, stage="starting", started_at=now(), error=None,
                    attempts=attempts)
    outcome, retrying = "error", False
    lease = Lease(conn, project_id, job.id, ttl_s=settings.lease_ttl_s) if owned else None
    try:
        if lease:
            lease.__enter__()
        summary = run_training(project_id, reason=reason, settings=settings, job=job, progress=progress)
        outcome = "promoted" if summary.get("promoted") else ("skipped" if summary.get("skipped") else "candidate")
        progress.update(force=True, stage="done", result=summary)
        return summary
    except Exception as e:
        retrying = will_retry(job, e)  # job.meta records the failure: worker.plumbing.on_failure
        raise
    finally:
        if lease:
            lease.__exit__()
        if owned:
            end = trigger.finish_training(conn, project_id, job.id, will_retry=retrying, outcome=outcome,
                                          settings=settings)
            if end["action"] == "follow_up":
                progress.update(force=True, follow_up=end["job_id"])
            elif end["action"] == "idle":
                # nothing pending: keep improving in idle time; a round on new labels starts a new budget
                idle = idle_training.request_idle(conn, project_id, settings=settings,
                                            reset=outcome in ("promoted", "candidate"))
                progress.update(force=True, idle=idle["action"], idle_job=idle["job_id"])


def improve_project(project_id: int) -> dict:
    """One chunk of idle-time training of a project (:mod:`worker.improving`), queued on ``shoeseg-idle``.

    Returns:
        A JSON-able summary whose ``outcome`` is ``promoted``, ``candidate``, ``yielded``, ``capped`` or
        ``skipped``; with a registered version, the same keys as :func:`train_project`'s summary.

    Example:
        >>> improve_project(3)["outcome"]  # doctest: +SKIP
        'promoted'
    """
    project_id = int(project_id)
    settings = Settings.from_env()
    job = current_job()
    progress = Progress(job)
    progress.update(force=True, project=project_id, stage="starting", started_at=now(), error=None)
    try:
        summary = run_improvement(project_id, settings=settings, job=job, progress=progress)
    except Exception:
        if job is not None:
            idle_training.set_idle_state(job.connection, project_id, job_id=None, state="failed", last_outcome="error")
        raise
    progress.update(force=True, stage="done", result=summary)
    return summary


def predict_project(project_id: int, *, version: str, strategy: str | None = None, force: bool = False) -> dict:
    """Predicts every task of a project with ``version`` and stores the predictions in Label Studio.

    Args:
        project_id: Label Studio project id.
        version: the registry version to predict with (the one just promoted).
        strategy: active-learning strategy of the task scores (default ``SHOESEG_AL_STRATEGY``).
        force: predict even when ``version`` is no longer the current one.

    Returns:
        ``{"project", "version", "strategy", "tasks", "pushed", "already_there", "seconds", "stage_seconds"}``
        (``worker.predicting.run_prediction``), or
        ``{"skipped": ...}`` when a newer version was promoted meanwhile (its own job pushes).

    Raises:
        worker.ls.LabelStudioUnavailable: Label Studio or an image host unreachable (rq retries the job).

    Example:
        >>> predict_project(3, version="20250101-120000-3fa2c1")  # doctest: +SKIP
        {'project': 3, 'version': '20250101-120000-3fa2c1', 'tasks': 40, 'pushed': 40, ...}
    """
    project_id = int(project_id)
    settings = Settings.from_env()
    undo_stale_idle_priority(settings)
    job = current_job()
    progress = Progress(job)
    attempts = int(job.meta.get("attempts", 0)) + 1 if job is not None else 1
    progress.update(force=True, project=project_id, version=version, stage="starting", started_at=now(),
                    error=None, attempts=attempts)
    # a failure is recorded in job.meta by rq's failure callback (worker.plumbing.on_failure)
    summary = run_prediction(project_id, version=version, strategy=strategy or settings.al_strategy,
                             force=force, settings=settings, progress=progress)
    progress.update(force=True, stage="done", result=summary)
    return summary
