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

Only ``redis`` and ``rq`` are imported here: the web service calls this module without loading torch.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timezone
from typing import Any

import redis
from rq import Callback, Queue, Retry
from rq.job import Job

from shoeseg_services.settings import Settings

log = logging.getLogger(__name__)

#: The queues and the jobs' import paths: the web service enqueues by path and never imports job code.
TRAIN_QUEUE = "shoeseg-train"
PREDICT_QUEUE = "shoeseg-predict"
IDLE_QUEUE = "shoeseg-idle"
#: In a worker's order of priority: pushes first (annotators see the served version's pre-labels soonest), then
#: rounds on new labels, then idle-time training, which also stops within an iteration when either of the
#: others has a job waiting (``worker.improving``).
QUEUES = (PREDICT_QUEUE, TRAIN_QUEUE, IDLE_QUEUE)
TRAIN_JOB = "worker.jobs.train_project"
PREDICT_JOB = "worker.jobs.predict_project"
IDLE_JOB = "worker.jobs.improve_project"
#: rq's failure callback of both jobs: records the failure in ``job.meta`` and skips retries a retry would repeat.
ON_FAILURE = "worker.plumbing.on_failure"

KEY_PREFIX = "shoeseg:loop"
PROJECTS_KEY = f"{KEY_PREFIX}:projects"
COUNTED_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED"})
START_ACTION = "START_TRAINING"
# rq statuses of a job that will still run (or is running).
_WAITING = frozenset({"queued", "scheduled", "deferred"})
_LIVE = _WAITING | {"started"}

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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _read_state(pipe, project_id) -> dict[str, str]:
    raw = pipe.hgetall(state_key(project_id))
    return {_text(k): _text(v) for k, v in raw.items()}


def _liveness(pipe, project_id, st: dict[str, str]) -> str:
    """``"waiting"``, ``"running"`` or ``"none"`` for the project's recorded job (dead jobs count as none)."""
    job_id = st.get("job_id")
    state = st.get("state")
    if not job_id or state not in ("queued", "running"):
        return "none"
    rq_status = _text(pipe.hget(Job.key_for(job_id), "status"))
    if state == "running":
        if _text(pipe.get(lease_key(project_id))) == job_id:
            return "running"
        # rq itself may have re-queued it (work horse killed, then retried): still one waiting job.
        return "waiting" if rq_status in _WAITING else "none"
    return "waiting" if rq_status in _LIVE else "none"


def _enqueue_train(pipe, conn: redis.Redis, project_id, *, reason: str, st: dict, settings: Settings) -> str:
    """Writes (inside ``pipe``'s MULTI) a new training job and the state that records it; returns its id."""
    seq = int(st.get("seq") or 0) + 1
    job_id = f"train-{project_id}-{seq}"
    retry = Retry(max=settings.retry_max, interval=list(settings.retry_intervals_s)) if settings.retry_max else None
    Queue(TRAIN_QUEUE, connection=conn).enqueue_call(
        TRAIN_JOB,
        args=(int(project_id),),
        kwargs={"reason": reason},
        job_id=job_id,
        timeout=settings.train_timeout_s,
        result_ttl=7 * 86400,
        failure_ttl=30 * 86400,
        description=f"train project {project_id}: {reason}",
        meta={"project": int(project_id), "reason": reason, "requested_at": _now()},
        retry=retry,
        on_failure=Callback(ON_FAILURE),
        pipeline=pipe,
    )
    pipe.hset(state_key(project_id), mapping={
        "state": "queued", "job_id": job_id, "seq": seq, "pending": 0, "reason": reason, "updated_at": _now(),
    })
    pipe.sadd(PROJECTS_KEY, str(project_id))
    return job_id


def _request(conn: redis.Redis, project_id, *, reason: str, settings: Settings,
             min_count: int | None = None) -> dict:
    def txn(pipe) -> dict:
        count = int(_text(pipe.get(count_key(project_id))) or 0)
        if min_count is not None and count < min_count:
            pipe.multi()
            return {"action": "counted", "project": project_id, "job_id": None, "count": count}
        st = _read_state(pipe, project_id)
        live = _liveness(pipe, project_id, st)
        pipe.multi()
        pipe.set(count_key(project_id), 0)
        summary = {"project": project_id, "reason": reason, "count": count}
        if live == "waiting":
            return {**summary, "action": "already_queued", "job_id": st["job_id"]}
        if live == "running":
            pipe.hset(state_key(project_id), mapping={"pending": 1, "pending_reason": reason, "updated_at": _now()})
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
    return _request(conn, _project(project_id), reason=reason, settings=settings or Settings.from_env())


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
    project_id = _project(project_id)
    if ModelRegistry(settings.model_dir, cache_dir=settings.cache_dir).current_version_id() is not None:
        return {"action": "has_model", "project": project_id, "job_id": None}
    fresh = conn.set(first_model_key(project_id), _now(), nx=True, ex=max(1, int(min_interval_s)))
    if not fresh and not force:
        return {"action": "recently_checked", "project": project_id, "job_id": None}
    return _request(conn, project_id, reason=FIRST_MODEL_REASON, settings=settings)


def overview(conn: redis.Redis, *, limit: int = 50) -> dict[str, dict]:
    """Every project's training as people want to see it: ``state`` (``queued``, ``running``, ``idle``),
    the job, its reason, the last outcome and, for a failed job, the failure's reason (``meta["error"]``).

    The ``limit`` projects of highest id are listed (``/health`` answers within Label Studio's 1 s)."""
    out: dict[str, dict] = {}
    projects = sorted(conn.smembers(PROJECTS_KEY), key=lambda v: int(_text(v) or 0))
    for raw in projects[-limit:]:
        project_id = _text(raw)
        st = _read_state(conn, project_id)
        live = _liveness(conn, project_id, st)
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


def _project(value: Any, field: str = "project") -> int:
    """A Label Studio project id: a positive integer, or a string of digits; anything else names ``field``."""
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]{1,18}\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field} must be a positive integer project id, got {value!r}")
    return value


def project_of(payload: dict) -> int | None:
    """The project id a webhook body names (``project.id``, ``project``, ``annotation.project`` or
    ``task.project``), validated; ``None`` when it names none.

    Raises:
        ValueError: the id is not a positive integer (``true``, ``1.9``, ``-3``, ``"1x"``...), naming the field.
    """
    project = payload.get("project")
    if isinstance(project, dict):
        return None if project.get("id") is None else _project(project["id"], "project.id")
    if project is not None:
        return _project(project, "project")
    for key in ("annotation", "task"):
        item = payload.get(key)
        if isinstance(item, dict) and item.get("project") is not None:
            return _project(item["project"], f"{key}.project")
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
        return {"action": "ignored", "event": action, "project": _safe_project(payload), "job_id": None}
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


def _safe_project(payload: dict) -> int | None:
    try:
        return project_of(payload)
    except ValueError:
        return None


# --- called by the training job -------------------------------------------------------------------------

def begin_training(conn: redis.Redis, project_id: int | str, job_id: str, *, lease_ttl_s: int) -> bool:
    """Marks the project's job as running and takes its lease; False when the job is not the recorded one.

    Events after this point set the follow-up flag, so the job must read Label Studio after calling it.
    """
    def txn(pipe) -> bool:
        st = _read_state(pipe, project_id)
        pipe.multi()
        if st.get("job_id") != job_id:
            return False
        pipe.hset(state_key(project_id), mapping={"state": "running", "pending": 0, "started_at": _now(),
                                                  "updated_at": _now()})
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
        st = _read_state(pipe, project_id)
        pipe.multi()
        if st.get("job_id") != job_id:
            return {"action": "not_owner", "job_id": st.get("job_id")}
        pipe.delete(lease_key(project_id))
        if will_retry:
            pipe.hset(state_key(project_id), mapping={"state": "queued", "last_outcome": outcome, "updated_at": _now()})
            return {"action": "retrying", "job_id": job_id}
        pipe.hset(state_key(project_id), mapping={"last_job_id": job_id, "last_outcome": outcome})
        if st.get("pending") == "1":
            reason = f"follow-up of {job_id}: {st.get('pending_reason') or 'events during the run'}"
            new_id = _enqueue_train(pipe, conn, project_id, reason=reason, st=st, settings=settings)
            return {"action": "follow_up", "job_id": new_id}
        pipe.hset(state_key(project_id), mapping={"state": "idle", "updated_at": _now()})
        return {"action": "idle", "job_id": None}

    result = conn.transaction(txn, state_key(project_id), value_from_callable=True)
    log.info("project %s: %s finished (%s) -> %s %s", project_id, job_id, outcome, result["action"],
             result["job_id"] or "")
    return result


def training_state(conn: redis.Redis, project_id: int | str) -> dict:
    """The project's trigger state as stored (for dashboards and tests): state, job_id, pending, count..."""
    st = _read_state(conn, project_id)
    st["count"] = int(_text(conn.get(count_key(project_id))) or 0)
    st["lease"] = _text(conn.get(lease_key(project_id)))
    st["liveness"] = _liveness(conn, project_id, st)
    return st


def recover_stale(conn: redis.Redis, *, settings: Settings | None = None) -> list[dict]:
    """Re-enqueues the training of every project whose recorded job died (for a worker that starts).

    Returns:
        The :func:`request_training` summaries of the projects that got a new job.
    """
    settings = settings or Settings.from_env()
    recovered = []
    for raw in conn.smembers(PROJECTS_KEY):
        project_id = _text(raw)
        st = _read_state(conn, project_id)
        if st.get("state") in ("queued", "running") and _liveness(conn, project_id, st) == "none":
            result = _request(conn, int(project_id), reason=f"recovery: job {st.get('job_id')} was lost",
                              settings=settings)
            if result["action"] == "queued":
                recovered.append(result)
    return recovered


# --- training in idle time --------------------------------------------------------------------------------

def idle_key(project_id: int | str) -> str:
    """The project's idle-time state: ``job_id``, ``seq``, ``state``, ``iters_done``, ``labels``, ``reason``."""
    return f"{KEY_PREFIX}:{project_id}:idle"


def idle_state(conn: redis.Redis, project_id: int | str) -> dict[str, str]:
    """The project's idle-time training as stored (see :func:`idle_key`), ``{}`` when it never ran."""
    return {_text(k): _text(v) for k, v in conn.hgetall(idle_key(project_id)).items()}


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
    project_id = _project(project_id)
    if not settings.idle_training or settings.idle_max_iters < 1:
        return {"action": "disabled", "project": project_id, "job_id": None}
    key = idle_key(project_id)

    def txn(pipe) -> dict:
        idle = {_text(k): _text(v) for k, v in pipe.hgetall(key).items()}
        st = _read_state(pipe, project_id)
        training = _liveness(pipe, project_id, st)
        job_id = idle.get("job_id")
        job_status = _text(pipe.hget(Job.key_for(job_id), "status")) if job_id else None
        pipe.multi()
        if reset:
            pipe.hset(key, mapping={"iters_done": 0, "updated_at": _now()})
            idle["iters_done"] = "0"
        if job_status in _LIVE:
            return {"action": "already_queued", "project": project_id, "job_id": job_id}
        if training != "none":
            return {"action": "busy", "project": project_id, "job_id": None}
        if int(idle.get("iters_done") or 0) >= settings.idle_max_iters:
            pipe.hset(key, mapping={"state": "capped", "updated_at": _now()})
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
            meta={"project": project_id, "reason": "idle time", "requested_at": _now()},
            on_failure=Callback(ON_FAILURE),
            pipeline=pipe,
        )
        pipe.hset(key, mapping={"job_id": new_id, "seq": seq, "state": "queued", "updated_at": _now()})
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
    st = _read_state(conn, project_id)
    live = _liveness(conn, project_id, st)
    if live != "none":
        return f"the project's training {st.get('job_id')} is {live}"
    return None


def set_idle_state(conn: redis.Redis, project_id: int | str, **values: Any) -> None:
    """Records the idle-time chunk's progress (``state``, ``iters_done``, ``labels``, ``last_outcome``...)."""
    conn.hset(idle_key(project_id), mapping={**{k: "" if v is None else v for k, v in values.items()},
                                             "updated_at": _now()})


# --- pushing a version's predictions ---------------------------------------------------------------------

def push_job_id(project_id: int | str, version: str) -> str:
    """The id of the job that pushes ``version``'s predictions to a project: ``predict-<project>-<version>``."""
    return f"predict-{_project(project_id)}-{version}"


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
    project_id = _project(project_id)
    job_id = push_job_id(project_id, version)
    status = _text(conn.hget(Job.key_for(job_id), "status"))
    if status in _LIVE:
        log.info("project %s: the push of %s is already %s (%s)", project_id, version, status, job_id)
        return job_id
    if status is not None:  # an earlier push of this version, ended: out of rq's registries before it runs again
        try:
            Job.fetch(job_id, connection=conn).delete()
        except Exception:  # noqa: BLE001 - expired meanwhile
            pass
    retry = Retry(max=settings.retry_max, interval=list(settings.retry_intervals_s)) if settings.retry_max else None
    job_meta = {"project": project_id, "version": version, "requested_at": _now(), **(meta or {})}
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


# --- live acceptance: an annotation compared with the pre-label it started from ---------------------------

ACCEPTANCE_JOB = "worker.acceptance.record_annotation"
FORGET_ACCEPTANCE_JOB = "worker.acceptance.forget_annotation"
ACCEPTANCE_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED"})
FORGET_ACTIONS = frozenset({"ANNOTATIONS_DELETED"})


def _id_of(value: Any) -> int | None:
    if isinstance(value, dict):
        value = value.get("id")
    try:
        return _project(value, "id")
    except ValueError:
        return None


def request_acceptance(conn: redis.Redis, payload: dict, *, settings: Settings) -> list[str]:
    """Queues the comparison of a webhook's annotation with the pre-label it started from
    (``worker.acceptance.record_annotation``), or the removal of deleted annotations' records.

    The job reads the annotation and the task's predictions from Label Studio when it runs, so a burst of
    updates of one annotation gives the same record (kept by annotation id: never counted twice).

    Returns:
        The ids of the jobs queued (none for other events, or bodies without an annotation id).

    Example:
        >>> body = {"action": "ANNOTATION_CREATED", "annotation": {"id": 9, "task": 4}, "project": {"id": 3}}
        >>> request_acceptance(redis.Redis(), body, settings=Settings())  # doctest: +SKIP
        ['4f2c...']
    """
    action = str(payload.get("action") or "")
    queue = Queue(PREDICT_QUEUE, connection=conn)
    options = {"timeout": 600, "result_ttl": 86400, "failure_ttl": 7 * 86400, "on_failure": Callback(ON_FAILURE)}
    if settings.retry_max:
        options["retry"] = Retry(max=settings.retry_max, interval=list(settings.retry_intervals_s))
    jobs = []
    if action in ACCEPTANCE_ACTIONS:
        annotation = payload.get("annotation") if isinstance(payload.get("annotation"), dict) else {}
        annotation_id = _id_of(annotation)
        task_id = _id_of(annotation.get("task")) or _id_of(payload.get("task"))
        project_id = _safe_project(payload)
        if annotation_id is None or task_id is None:
            return []
        job = queue.enqueue_call(ACCEPTANCE_JOB, args=(project_id, task_id, annotation_id),
                                 description=f"live acceptance of annotation {annotation_id} (task {task_id})",
                                 meta={"project": project_id, "task": task_id, "annotation": annotation_id,
                                       "event": action, "requested_at": _now()}, **options)
        jobs.append(job.id)
    elif action in FORGET_ACTIONS:
        items = payload.get("annotations") if isinstance(payload.get("annotations"), list) else []
        ids = [i for i in (_id_of(a) for a in items) if i is not None]
        if ids:
            job = queue.enqueue_call(FORGET_ACCEPTANCE_JOB, args=(ids,),
                                     description=f"forget the live acceptance of {len(ids)} deleted annotation(s)",
                                     meta={"annotations": ids, "event": action, "requested_at": _now()}, **options)
            jobs.append(job.id)
    return jobs
