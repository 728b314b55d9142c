"""Training in idle time: at most one queued chunk per project, and when a chunk should give the worker back.

A chunk (``worker.jobs.improve_project``) trains a project's model further while nobody needs the worker; it is
queued when a round of the project ends with nothing pending, and by a chunk that finished within the budget
(``SHOESEG_IDLE_MAX_ITERS`` iterations per round). It yields to labelled work: a training round of the project
(:mod:`shoeseg_services.trigger`) or any push or round waiting on the queues.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from rq import Callback, Queue
from rq.job import Job

from shoeseg_services.queues import (
    IDLE_QUEUE,
    KEY_PREFIX,
    LIVE,
    ON_FAILURE,
    PREDICT_QUEUE,
    PROJECTS_KEY,
    TRAIN_QUEUE,
    decoded,
    utc_now,
    valid_project,
)
from shoeseg_services.settings import Settings
from shoeseg_services.trigger import lease_key, liveness, read_state, state_key

log = logging.getLogger(__name__)

#: The chunk's import path: the web service enqueues by path and never imports job code.
IDLE_JOB = "worker.jobs.improve_project"


def idle_key(project_id: int | str) -> str:
    """The project's idle-time state: ``job_id``, ``seq``, ``state``, ``iters_done``, ``labels``, ``reason``."""
    return f"{KEY_PREFIX}:{project_id}:idle"


def idle_state(conn: redis.Redis, project_id: int | str) -> dict[str, str]:
    """The project's idle-time training as stored (see :func:`idle_key`), ``{}`` when it never ran."""
    return {decoded(k): decoded(v) for k, v in conn.hgetall(idle_key(project_id)).items()}


def request_idle(conn: redis.Redis, project_id: int | str, *, settings: Settings, reset: bool = False) -> dict:
    """Queues one idle-time chunk of a project (``worker.jobs.improve_project``) unless something else should run.

    Called when a project's training ends with nothing pending, and by a chunk that finished within the
    budget. Nothing is queued when idle training is off (``SHOESEG_IDLE_TRAINING``), a chunk of the project
    is already waiting or running, or a training of the project is waiting or running (its end asks again).

    Args:
        conn: Redis connection of the queues.
        project_id: Label Studio project id.
        settings: ``idle_training``, the job timeout.
        reset: start a new budget (``SHOESEG_IDLE_MAX_ITERS``): a round trained on new labels.

    Returns:
        ``{"action": "queued" | "disabled" | "already_queued" | "busy" | "capped", "project", "job_id"}``.
    """
    project_id = valid_project(project_id)
    if not settings.idle_training or settings.idle_max_iters < 1:
        return {"action": "disabled", "project": project_id, "job_id": None}
    key = idle_key(project_id)

    def txn(pipe) -> dict:
        idle = {decoded(k): decoded(v) for k, v in pipe.hgetall(key).items()}
        st = read_state(pipe, project_id)
        training = liveness(pipe, project_id, st)
        job_id = idle.get("job_id")
        job_status = decoded(pipe.hget(Job.key_for(job_id), "status")) if job_id else None
        pipe.multi()
        if reset:
            pipe.hset(key, mapping={"iters_done": 0, "updated_at": utc_now()})
            idle["iters_done"] = "0"
        if job_status in LIVE:
            return {"action": "already_queued", "project": project_id, "job_id": job_id}
        if training != "none":
            return {"action": "busy", "project": project_id, "job_id": None}
        if int(idle.get("iters_done") or 0) >= settings.idle_max_iters:
            pipe.hset(key, mapping={"state": "capped", "updated_at": utc_now()})
            return {"action": "capped", "project": project_id, "job_id": None}
        seq = int(idle.get("seq") or 0) + 1
        new_id = f"idle-{project_id}-{seq}"
        Queue(IDLE_QUEUE, connection=conn).enqueue_call(
            IDLE_JOB,
            args=(project_id,),
            job_id=new_id,
            timeout=settings.train_timeout_s,
            result_ttl=86400,
            failure_ttl=30 * 86400,
            description=f"improve project {project_id} in idle time (chunk {seq})",
            meta={"project": project_id, "reason": "idle time", "requested_at": utc_now()},
            on_failure=Callback(ON_FAILURE),
            pipeline=pipe,
        )
        pipe.hset(key, mapping={"job_id": new_id, "seq": seq, "state": "queued", "updated_at": utc_now()})
        pipe.sadd(PROJECTS_KEY, str(project_id))
        return {"action": "queued", "project": project_id, "job_id": new_id}

    result = conn.transaction(txn, key, state_key(project_id), lease_key(project_id), value_from_callable=True)
    log.info("project %s: idle-time training %s %s", project_id, result["action"], result["job_id"] or "")
    return result


def labelled_work_waiting(conn: redis.Redis, project_id: int | str) -> str | None:
    """Why an idle-time chunk should give the worker back now, or ``None``: a round or a push of predictions is
    waiting on the queues (of any project: labelled work first), or the project's own training is waiting or
    running (on another worker). Other small jobs of the predict queue (live acceptance) wait for the chunk's
    end instead: yielding to each would drop every chunk while people annotate."""
    if Queue(TRAIN_QUEUE, connection=conn).count:
        return f"a job is waiting on {TRAIN_QUEUE}"
    pushes = [j for j in Queue(PREDICT_QUEUE, connection=conn).get_job_ids(0, 200) if j.startswith("predict-")]
    if pushes:
        return f"a push of predictions is waiting on {PREDICT_QUEUE} ({pushes[0]})"
    st = read_state(conn, project_id)
    live = liveness(conn, project_id, st)
    if live != "none":
        return f"the project's training {st.get('job_id')} is {live}"
    return None


def set_idle_state(conn: redis.Redis, project_id: int | str, **values: Any) -> None:
    """Records the idle-time chunk's progress (``state``, ``iters_done``, ``labels``, ``last_outcome``...)."""
    conn.hset(idle_key(project_id), mapping={**{k: "" if v is None else v for k, v in values.items()},
                                             "updated_at": utc_now()})
