"""When to train: Label Studio webhook events become at most one queued and one follow-up training job.

Policy, per project:

- new accepted annotations (``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED`` / ``ANNOTATIONS_CREATED``,
  cancelled ones left out) are counted; when the count reaches ``min_new_annotations`` a training is
  requested and the count starts again from zero. ``START_TRAINING`` requests one at once.
- a request while a training job of the project is *waiting* (queued, or scheduled for a retry) changes
  nothing: that job reads the annotations from Label Studio when it starts, so it sees this one too.
- a request while a training job is *running* sets a ``pending`` flag; the running job, when it ends,
  enqueues exactly one follow-up job if the flag is set. Any number of events during a run give one
  follow-up, and none is lost.
- a job that died without saying so (worker killed with SIGKILL) stops renewing its lease; the next request
  (or :func:`recover_stale` when a worker starts) enqueues a fresh job instead of waiting forever.

Every state change is one Redis transaction (``WATCH``/``MULTI``/``EXEC``) over the project's state hash
and counter, and the rq job is enqueued inside the same transaction, so concurrent web processes and workers
cannot both enqueue. Job ids are deterministic per project: ``train-<project>-<n>``.

The queues' names and what every module that queues shares are in :mod:`shoeseg_services.queues`; training
in idle time, which yields to these rounds, is :mod:`shoeseg_services.idle_training`. Only ``redis`` and ``rq``
are imported here: the web service calls this module without loading torch.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from rq import Callback, Queue
from rq.job import Job

from shoeseg_services.queues import (
    KEY_PREFIX,
    LIVE,
    ON_FAILURE,
    PROJECTS_KEY,
    TRAIN_QUEUE,
    WAITING,
    decoded,
    retry_policy,
    utc_now,
    valid_project,
)
from shoeseg_services.settings import Settings

log = logging.getLogger(__name__)

#: The training job's import path: the web service enqueues by path and never imports job code.
TRAIN_JOB = "worker.jobs.train_project"
COUNTED_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED"})
START_ACTION = "START_TRAINING"

_HEARTBEAT = """
if redis.call('HGET', KEYS[1], 'job_id') == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[1], 'EX', tonumber(ARGV[2]))
  return 1
end
return 0
"""


def state_key(project_id: int | str) -> str:
    return f"{KEY_PREFIX}:{project_id}:state"


def count_key(project_id: int | str) -> str:
    return f"{KEY_PREFIX}:{project_id}:count"


def lease_key(project_id: int | str) -> str:
    return f"{KEY_PREFIX}:{project_id}:lease"


def read_state(pipe, project_id) -> dict[str, str]:
    """The project's training state as stored (``state``, ``job_id``, ``seq``, ``pending``...)."""
    raw = pipe.hgetall(state_key(project_id))
    return {decoded(k): decoded(v) for k, v in raw.items()}


def liveness(pipe, project_id, st: dict[str, str]) -> str:
    """``"waiting"``, ``"running"`` or ``"none"`` for the project's recorded job (dead jobs count as none)."""
    job_id = st.get("job_id")
    state = st.get("state")
    if not job_id or state not in ("queued", "running"):
        return "none"
    rq_status = decoded(pipe.hget(Job.key_for(job_id), "status"))
    if state == "running":
        if decoded(pipe.get(lease_key(project_id))) == job_id:
            return "running"
        # rq itself may have re-queued it (work horse killed, then retried): still one waiting job.
        return "waiting" if rq_status in WAITING else "none"
    return "waiting" if rq_status in LIVE else "none"


def _enqueue_train(pipe, conn: redis.Redis, project_id, *, reason: str, st: dict, settings: Settings) -> str:
    """Writes (inside ``pipe``'s MULTI) a new training job and the state that records it; returns its id."""
    seq = int(st.get("seq") or 0) + 1
    job_id = f"train-{project_id}-{seq}"
    retry = retry_policy(settings)
    Queue(TRAIN_QUEUE, connection=conn).enqueue_call(
        TRAIN_JOB,
        args=(int(project_id),),
        kwargs={"reason": reason},
        job_id=job_id,
        timeout=settings.train_timeout_s,
        result_ttl=7 * 86400,
        failure_ttl=30 * 86400,
        description=f"train project {project_id}: {reason}",
        meta={"project": int(project_id), "reason": reason, "requested_at": utc_now()},
        retry=retry,
        on_failure=Callback(ON_FAILURE),
        pipeline=pipe,
    )
    pipe.hset(state_key(project_id), mapping={
        "state": "queued", "job_id": job_id, "seq": seq, "pending": 0, "reason": reason, "updated_at": utc_now(),
    })
    pipe.sadd(PROJECTS_KEY, str(project_id))
    return job_id


def _request(conn: redis.Redis, project_id, *, reason: str, settings: Settings,
             min_count: int | None = None) -> dict:
    def txn(pipe) -> dict:
        count = int(decoded(pipe.get(count_key(project_id))) or 0)
        if min_count is not None and count < min_count:
            pipe.multi()
            return {"action": "counted", "project": project_id, "job_id": None, "count": count}
        st = read_state(pipe, project_id)
        live = liveness(pipe, project_id, st)
        pipe.multi()
        pipe.set(count_key(project_id), 0)
        summary = {"project": project_id, "reason": reason, "count": count}
        if live == "waiting":
            return {**summary, "action": "already_queued", "job_id": st["job_id"]}
        if live == "running":
            pipe.hset(state_key(project_id), mapping={"pending": 1, "pending_reason": reason, "updated_at": utc_now()})
            return {**summary, "action": "follow_up", "job_id": st["job_id"]}
        job_id = _enqueue_train(pipe, conn, project_id, reason=reason, st=st, settings=settings)
        if st.get("state") in ("queued", "running"):
            log.warning("project %s: job %s was lost (%s); enqueued %s", project_id, st.get("job_id"),
                        st.get("state"), job_id)
            summary["replaces_lost_job"] = st.get("job_id")
        return {**summary, "action": "queued", "job_id": job_id}

    result = conn.transaction(txn, state_key(project_id), count_key(project_id), lease_key(project_id),
                              value_from_callable=True)
    if result["action"] in ("queued", "follow_up"):
        log.info("project %s: %s %s (%s)", project_id, result["action"], result["job_id"], reason)
    return result


def request_training(conn: redis.Redis, project_id: int | str, *, reason: str,
                     settings: Settings | None = None) -> dict:
    """Asks for a training of a project, keeping at most one waiting and one follow-up job.

    Args:
        conn: Redis connection of the queues.
        project_id: Label Studio project id.
        reason: why (stored in the job's meta and description).
        settings: job timeout and retry policy; default from the environment.

    Returns:
        ``{"action": "queued" | "already_queued" | "follow_up", "project", "job_id", "reason", "count"}``.
        ``follow_up`` means a job is running and will enqueue one more when it ends.

    Raises:
        redis.ConnectionError: Redis is unreachable.

    Example:
        >>> request_training(redis.Redis(), 3, reason="START_TRAINING")  # doctest: +SKIP
        {'action': 'queued', 'project': 3, 'job_id': 'train-3-1', 'reason': 'START_TRAINING', 'count': 0}
    """
    return _request(conn, valid_project(project_id), reason=reason, settings=settings or Settings.from_env())


#: The reason of a project's first training, which the job checks against ``min_new_annotations``.
FIRST_MODEL_REASON = "first model"


def first_model_key(project_id: int | str) -> str:
    return f"{KEY_PREFIX}:{project_id}:first-model"


def request_first_model(conn: redis.Redis, project_id: int | str, *, settings: Settings | None = None,
                        force: bool = False, min_interval_s: int = 600) -> dict:
    """Asks for a project's first training when the registry holds no model yet: no click needed.

    Called when the backend is connected to a project (``/setup``, at most once per ``min_interval_s`` per
    project, since Label Studio calls it often) and after labelled data is imported (``force=True``). The job
    (reason :data:`FIRST_MODEL_REASON`) trains only when the project holds at least ``min_new_annotations``
    accepted annotations; requests while one is queued or running change nothing, as for any training.

    Returns:
        ``{"action": "has_model" | "recently_checked"}``, or :func:`request_training`'s summary.

    Example:
        >>> request_first_model(redis.Redis(), 3, force=True)["action"]  # doctest: +SKIP
        'queued'
    """
    from shoeseg_services.registry import ModelRegistry

    settings = settings or Settings.from_env()
    project_id = valid_project(project_id)
    if ModelRegistry(settings.model_dir, cache_dir=settings.cache_dir).current_version_id() is not None:
        return {"action": "has_model", "project": project_id, "job_id": None}
    fresh = conn.set(first_model_key(project_id), utc_now(), nx=True, ex=max(1, int(min_interval_s)))
    if not fresh and not force:
        return {"action": "recently_checked", "project": project_id, "job_id": None}
    return _request(conn, project_id, reason=FIRST_MODEL_REASON, settings=settings)


def overview(conn: redis.Redis, *, limit: int = 50) -> dict[str, dict]:
    """Every project's training as people want to see it: ``state`` (``queued``, ``running``, ``idle``),
    the job, its reason, the last outcome and, for a failed job, the failure's reason (``meta["error"]``).

    The ``limit`` projects of highest id are listed (``/health`` answers within Label Studio's 1 s)."""
    out: dict[str, dict] = {}
    projects = sorted(conn.smembers(PROJECTS_KEY), key=lambda v: int(decoded(v) or 0))
    for raw in projects[-limit:]:
        project_id = decoded(raw)
        st = read_state(conn, project_id)
        live = liveness(conn, project_id, st)
        state = {"waiting": "queued", "running": "running"}.get(live, "idle")
        entry: dict[str, Any] = {"state": state, "job_id": st.get("job_id"), "reason": st.get("reason"),
                                 "last_outcome": st.get("last_outcome"), "updated_at": st.get("updated_at")}
        last = st.get("job_id") if state == "idle" else None
        if last:
            try:
                job = Job.fetch(last, connection=conn)
                if job.get_status() == "failed" or st.get("last_outcome") == "error":
                    entry["state"] = "failed"
                    entry["error"] = job.meta.get("error")
            except Exception:  # noqa: BLE001 - an expired job: nothing more to say
                pass
        out[project_id] = entry
    return out


def project_of(payload: dict) -> int | None:
    """The project id a webhook body names (``project.id``, ``project``, ``annotation.project`` or
    ``task.project``), validated; ``None`` when it names none.

    Raises:
        ValueError: the id is not a positive integer (``true``, ``1.9``, ``-3``, ``"1x"``...), naming the field.
    """
    project = payload.get("project")
    if isinstance(project, dict):
        return None if project.get("id") is None else valid_project(project["id"], "project.id")
    if project is not None:
        return valid_project(project, "project")
    for key in ("annotation", "task"):
        item = payload.get(key)
        if isinstance(item, dict) and item.get("project") is not None:
            return valid_project(item["project"], f"{key}.project")
    return None


def project_or_none(payload: dict) -> int | None:
    """:func:`project_of`, or ``None`` when the id it names is not valid."""
    try:
        return project_of(payload)
    except ValueError:
        return None


def _accepted(payload: dict) -> int:
    items: list = []
    for key in ("annotation", "annotations"):
        value = payload.get(key)
        if isinstance(value, dict):
            items.append(value)
        elif isinstance(value, list):
            items.extend(v for v in value if isinstance(v, dict))
    if not items:
        return 1  # the event names an annotation without its body: count it
    return sum(1 for a in items if not a.get("was_cancelled"))


def on_webhook(conn: redis.Redis, payload: dict, *, min_new_annotations: int,
               settings: Settings | None = None) -> dict:
    """Handles one Label Studio webhook body: counts accepted annotations and requests training.

    Args:
        conn: Redis connection of the queues.
        payload: the JSON body Label Studio posted (``action``, ``project``, ``annotation``...).
        min_new_annotations: accepted annotations that start a training.
        settings: job timeout and retry policy; default from the environment.

    Returns:
        A JSON-able summary: ``action`` is ``queued``, ``already_queued``, ``follow_up`` (see
        :func:`request_training`), ``counted`` (below the threshold; ``count`` says how many) or
        ``ignored`` (another event, or only cancelled annotations); plus ``project``, ``job_id``, ``event``.

    Raises:
        ValueError: the body is not an object, or a training event names no integer project id.
        redis.ConnectionError: Redis is unreachable (a web service answers 503).

    Example:
        >>> body = {"action": "START_TRAINING", "project": {"id": 3}}
        >>> on_webhook(redis.Redis(), body, min_new_annotations=10)["action"]  # doctest: +SKIP
        'queued'
    """
    if not isinstance(payload, dict):
        raise ValueError(f"webhook body must be a JSON object, got {type(payload).__name__}")
    if min_new_annotations < 1:
        raise ValueError(f"min_new_annotations must be >= 1, got {min_new_annotations}")
    action = str(payload.get("action") or "")
    if action not in COUNTED_ACTIONS and action != START_ACTION:
        return {"action": "ignored", "event": action, "project": project_or_none(payload), "job_id": None}
    project_id = project_of(payload)
    if project_id is None:
        raise ValueError(f"webhook {action} names no project (expected project.id)")
    settings = settings or Settings.from_env()
    if action == START_ACTION:
        result = _request(conn, project_id, reason=START_ACTION, settings=settings)
        return {**result, "event": action}
    accepted = _accepted(payload)
    if accepted == 0:
        return {"action": "ignored", "event": action, "project": project_id, "job_id": None,
                "reason": "cancelled annotation"}
    count = conn.incrby(count_key(project_id), accepted)
    conn.sadd(PROJECTS_KEY, str(project_id))
    if count < min_new_annotations:
        return {"action": "counted", "event": action, "project": project_id, "job_id": None, "count": count}
    result = _request(conn, project_id, reason=f"{count} new annotations (>= {min_new_annotations})",
                      settings=settings, min_count=min_new_annotations)
    return {**result, "event": action}


# --- called by the training job -------------------------------------------------------------------------

def begin_training(conn: redis.Redis, project_id: int | str, job_id: str, *, lease_ttl_s: int) -> bool:
    """Marks the project's job as running and takes its lease; False when the job is not the recorded one.

    Events after this point set the follow-up flag, so the job must read Label Studio after calling it.
    """
    def txn(pipe) -> bool:
        st = read_state(pipe, project_id)
        pipe.multi()
        if st.get("job_id") != job_id:
            return False
        pipe.hset(state_key(project_id), mapping={"state": "running", "pending": 0, "started_at": utc_now(),
                                                  "updated_at": utc_now()})
        pipe.set(lease_key(project_id), job_id, ex=lease_ttl_s)
        return True

    return conn.transaction(txn, state_key(project_id), value_from_callable=True)


def heartbeat(conn: redis.Redis, project_id: int | str, job_id: str, *, lease_ttl_s: int) -> bool:
    """Renews the running job's lease; False when the job is no longer the recorded one."""
    return bool(conn.eval(_HEARTBEAT, 2, state_key(project_id), lease_key(project_id), job_id, lease_ttl_s))


def finish_training(conn: redis.Redis, project_id: int | str, job_id: str, *, will_retry: bool, outcome: str,
                    settings: Settings | None = None) -> dict:
    """Ends a run: back to waiting (rq retries it), one follow-up job when events came in meanwhile, or idle.

    Returns:
        ``{"action": "retrying" | "follow_up" | "idle" | "not_owner", "job_id": ...}``.
    """
    settings = settings or Settings.from_env()

    def txn(pipe) -> dict:
        st = read_state(pipe, project_id)
        pipe.multi()
        if st.get("job_id") != job_id:
            return {"action": "not_owner", "job_id": st.get("job_id")}
        pipe.delete(lease_key(project_id))
        if will_retry:
            pipe.hset(state_key(project_id), mapping={"state": "queued", "last_outcome": outcome, "updated_at": utc_now()})
            return {"action": "retrying", "job_id": job_id}
        pipe.hset(state_key(project_id), mapping={"last_job_id": job_id, "last_outcome": outcome})
        if st.get("pending") == "1":
            reason = f"follow-up of {job_id}: {st.get('pending_reason') or 'events during the run'}"
            new_id = _enqueue_train(pipe, conn, project_id, reason=reason, st=st, settings=settings)
            return {"action": "follow_up", "job_id": new_id}
        pipe.hset(state_key(project_id), mapping={"state": "idle", "updated_at": utc_now()})
        return {"action": "idle", "job_id": None}

    result = conn.transaction(txn, state_key(project_id), value_from_callable=True)
    log.info("project %s: %s finished (%s) -> %s %s", project_id, job_id, outcome, result["action"],
             result["job_id"] or "")
    return result


def training_state(conn: redis.Redis, project_id: int | str) -> dict:
    """The project's trigger state as stored (for dashboards and tests): state, job_id, pending, count..."""
    st = read_state(conn, project_id)
    st["count"] = int(decoded(conn.get(count_key(project_id))) or 0)
    st["lease"] = decoded(conn.get(lease_key(project_id)))
    st["liveness"] = liveness(conn, project_id, st)
    return st


def recover_stale(conn: redis.Redis, *, settings: Settings | None = None) -> list[dict]:
    """Re-enqueues the training of every project whose recorded job died (for a worker that starts).

    Returns:
        The :func:`request_training` summaries of the projects that got a new job.
    """
    settings = settings or Settings.from_env()
    recovered = []
    for raw in conn.smembers(PROJECTS_KEY):
        project_id = decoded(raw)
        st = read_state(conn, project_id)
        if st.get("state") in ("queued", "running") and liveness(conn, project_id, st) == "none":
            result = _request(conn, int(project_id), reason=f"recovery: job {st.get('job_id')} was lost",
                              settings=settings)
            if result["action"] == "queued":
                recovered.append(result)
    return recovered
