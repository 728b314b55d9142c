"""The predict queue's jobs: a version's pre-labels pushed to a project, each annotation's live acceptance.

* :func:`request_push` queues ``worker.jobs.predict_project`` after a promotion or a rollback, so that the tasks
  show the served version's pre-labels (one job per project and version: :func:`push_job_id`);
* :func:`request_acceptance` queues the comparison of an annotation with the pre-label it started from
  (``worker.acceptance``), or the removal of deleted annotations' records.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import redis
from rq import Callback, Queue
from rq.job import Job

from shoeseg_services.queues import (
    LIVE,
    ON_FAILURE,
    PREDICT_QUEUE,
    decoded,
    retry_policy,
    utc_now,
    valid_project,
)
from shoeseg_services.settings import Settings
from shoeseg_services.trigger import project_or_none

log = logging.getLogger(__name__)

#: The jobs' import paths: the web service enqueues by path and never imports job code.
PREDICT_JOB = "worker.jobs.predict_project"
ACCEPTANCE_JOB = "worker.acceptance.record_annotation"
FORGET_ACCEPTANCE_JOB = "worker.acceptance.forget_annotation"
ACCEPTANCE_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED"})
FORGET_ACTIONS = frozenset({"ANNOTATIONS_DELETED"})


#: How long an annotation's queued acceptance job is remembered (a job lost from the queue frees it then).
ACCEPTANCE_QUEUED_TTL_S = 3600


def acceptance_queued_key(annotation_id: int | str) -> str:
    """The Redis key that holds the id of an annotation's acceptance job while it waits in the queue."""
    return f"shoeseg:acceptance:queued:{annotation_id}"


def acceptance_started(conn: redis.Redis, annotation_id: int | str, job_id: str) -> None:
    """Called by the acceptance job as it starts: a later update of the annotation queues a job of its own (this
    one may have read the annotation before that update)."""
    key = acceptance_queued_key(annotation_id)
    if decoded(conn.get(key)) == job_id:
        conn.delete(key)


def _still_queued(conn: redis.Redis, job_id: str) -> bool:
    try:
        return Job.fetch(job_id, connection=conn).get_status(refresh=True) in ("queued", "deferred", "scheduled")
    except Exception:  # noqa: BLE001 - rq raises NoSuchJobError or a decode error for a vanished job
        return False


def push_job_id(project_id: int | str, version: str) -> str:
    """The id of the job that pushes ``version``'s predictions to a project: ``predict-<project>-<version>``."""
    return f"predict-{valid_project(project_id)}-{version}"


def request_push(conn: redis.Redis, project_id: int | str, version: str, *, settings: Settings,
                 reason: str | None = None, meta: dict | None = None) -> str:
    """Queues the push of ``version``'s predictions to every task of a project (``worker.jobs.predict_project``).

    Called after a promotion (the training job) and by ``shoeseg models promote|rollback``, so that the tasks
    show the served version's pre-labels. The job stores them, sets the project's model version and removes
    the predictions of the registry's other versions; annotations are never touched. When the project's push
    of this version is already waiting or running, that job is the answer and nothing is queued.

    Args:
        conn: Redis connection of the queues.
        project_id: Label Studio project id.
        version: the registry version whose predictions are pushed.
        settings: the job timeout and retry policy.
        reason: why (the job's description and ``meta["reason"]``).
        meta: more ``job.meta`` entries (e.g. ``{"trained_by": job.id}``).

    Returns:
        The job id, :func:`push_job_id`.

    Raises:
        redis.ConnectionError: Redis is unreachable.

    Example:
        >>> request_push(redis.Redis(), 3, "20250101-120000-3fa2c1", settings=Settings.from_env(),
        ...              reason="rollback")  # doctest: +SKIP
        'predict-3-20250101-120000-3fa2c1'
    """
    project_id = valid_project(project_id)
    job_id = push_job_id(project_id, version)
    status = decoded(conn.hget(Job.key_for(job_id), "status"))
    if status in LIVE:
        log.info("project %s: the push of %s is already %s (%s)", project_id, version, status, job_id)
        return job_id
    if status is not None:  # an earlier push of this version, ended: out of rq's registries before it runs again
        try:
            Job.fetch(job_id, connection=conn).delete()
        except Exception:  # noqa: BLE001 - expired meanwhile
            pass
    retry = retry_policy(settings)
    job_meta = {"project": project_id, "version": version, "requested_at": utc_now(), **(meta or {})}
    if reason:
        job_meta["reason"] = reason
    Queue(PREDICT_QUEUE, connection=conn).enqueue_call(
        PREDICT_JOB,
        args=(project_id,),
        kwargs={"version": version},
        job_id=job_id,
        timeout=settings.predict_timeout_s,
        result_ttl=7 * 86400,
        failure_ttl=30 * 86400,
        description=f"predict project {project_id} with {version}" + (f": {reason}" if reason else ""),
        meta=job_meta,
        retry=retry,
        on_failure=Callback(ON_FAILURE),
    )
    log.info("project %s: queued %s (%s)", project_id, job_id, reason or "push")
    return job_id


def _id_of(value: Any) -> int | None:
    if isinstance(value, dict):
        value = value.get("id")
    try:
        return valid_project(value, "id")
    except ValueError:
        return None


def request_acceptance(conn: redis.Redis, payload: dict, *, settings: Settings) -> list[str]:
    """Queues the comparison of a webhook's annotation with the pre-label it started from
    (``worker.acceptance.record_annotation``), or the removal of deleted annotations' records.

    The job reads the annotation and the task's predictions from Label Studio when it runs, so a burst of
    updates of one annotation gives the same record (kept by annotation id: never counted twice), and one job
    waiting in the queue serves them all: while it waits, the annotation's next webhooks get its id back
    instead of a job of their own (:func:`acceptance_queued_key`; the job frees the key as it starts).

    Returns:
        The ids of the jobs queued (none for other events, or bodies without an annotation id).

    Example:
        >>> body = {"action": "ANNOTATION_CREATED", "annotation": {"id": 9, "task": 4}, "project": {"id": 3}}
        >>> request_acceptance(redis.Redis(), body, settings=Settings())  # doctest: +SKIP
        ['4f2c...']
    """
    action = str(payload.get("action") or "")
    queue = Queue(PREDICT_QUEUE, connection=conn)
    options = {"timeout": 600, "result_ttl": 86400, "failure_ttl": 7 * 86400, "on_failure": Callback(ON_FAILURE),
               "retry": retry_policy(settings)}
    jobs = []
    if action in ACCEPTANCE_ACTIONS:
        annotation = payload.get("annotation") if isinstance(payload.get("annotation"), dict) else {}
        annotation_id = _id_of(annotation)
        task_id = _id_of(annotation.get("task")) or _id_of(payload.get("task"))
        project_id = project_or_none(payload)
        if annotation_id is None or task_id is None:
            return []
        key, job_id = acceptance_queued_key(annotation_id), f"acceptance-{annotation_id}-{uuid.uuid4().hex[:12]}"
        if not conn.set(key, job_id, nx=True, ex=ACCEPTANCE_QUEUED_TTL_S):
            waiting = decoded(conn.get(key))
            if waiting and _still_queued(conn, waiting):
                return [waiting]
            conn.set(key, job_id, ex=ACCEPTANCE_QUEUED_TTL_S)  # the one recorded ran or was lost
        job = queue.enqueue_call(ACCEPTANCE_JOB, args=(project_id, task_id, annotation_id), job_id=job_id,
                                 description=f"live acceptance of annotation {annotation_id} (task {task_id})",
                                 meta={"project": project_id, "task": task_id, "annotation": annotation_id,
                                       "event": action, "requested_at": utc_now()}, **options)
        jobs.append(job.id)
    elif action in FORGET_ACTIONS:
        items = payload.get("annotations") if isinstance(payload.get("annotations"), list) else []
        ids = [i for i in (_id_of(a) for a in items) if i is not None]
        if ids:
            job = queue.enqueue_call(FORGET_ACCEPTANCE_JOB, args=(ids,),
                                     description=f"forget the live acceptance of {len(ids)} deleted annotation(s)",
                                     meta={"annotations": ids, "event": action, "requested_at": utc_now()}, **options)
            jobs.append(job.id)
    return jobs
