"""The trigger policy against a real Redis: one waiting job, one follow-up, nothing lost."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.job import Job

from shoeseg_services import trigger
from shoeseg_services.queues import TRAIN_QUEUE
from shoeseg_services.settings import Settings
from shoeseg_services.trigger import TRAIN_JOB

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SETTINGS = Settings.from_env({"SHOESEG_RETRY_INTERVALS": "0", "SHOESEG_RETRY_MAX": "2"})


def annotation(project: int, ann_id: int = 1, *, cancelled: bool = False) -> dict:
    return {"action": "ANNOTATION_CREATED", "project": {"id": project},
            "annotation": {"id": ann_id, "task": ann_id, "project": project, "was_cancelled": cancelled}}


def start(project: int) -> dict:
    return {"action": "START_TRAINING", "project": {"id": project}}


def hook(conn, body, min_new=3):
    return trigger.on_webhook(conn, body, min_new_annotations=min_new, settings=SETTINGS)


def queued_ids(conn) -> list[str]:
    return Queue(TRAIN_QUEUE, connection=conn).job_ids


def test_counts_until_the_threshold_then_queues_one_job(redis_conn):
    assert [hook(redis_conn, annotation(1, i))["action"] for i in range(2)] == ["counted", "counted"]
    third = hook(redis_conn, annotation(1, 3))
    assert third["action"] == "queued" and third["job_id"] == "train-1-1"
    assert trigger.training_state(redis_conn, 1)["count"] == 0
    job = Job.fetch("train-1-1", connection=redis_conn)
    assert job.func_name == TRAIN_JOB
    assert job.args == (1,) and job.kwargs == {"reason": third["reason"]}
    assert job.timeout == SETTINGS.train_timeout_s and job.retries_left == 2
    assert job.meta["project"] == 1
    # more events while it waits: counted, and at the threshold "already queued", never a second job
    results = [hook(redis_conn, annotation(1, 10 + i))["action"] for i in range(6)]
    assert results == ["counted", "counted", "already_queued"] * 2
    assert queued_ids(redis_conn) == ["train-1-1"]


def test_real_label_studio_bodies(redis_conn):
    created = json.loads((FIXTURES / "webhook_annotation_created.json").read_text())["body"]
    started = json.loads((FIXTURES / "webhook_start_training.json").read_text())["body"]
    updated = json.loads((FIXTURES / "webhook_project_updated.json").read_text())["body"]
    assert hook(redis_conn, created, min_new=2) == {"action": "counted", "event": "ANNOTATION_CREATED",
                                                   "project": 1, "job_id": None, "count": 1}
    assert hook(redis_conn, updated)["action"] == "ignored"
    assert hook(redis_conn, started)["action"] == "queued"
    assert queued_ids(redis_conn) == ["train-1-1"]


def test_start_training_queues_at_once_and_projects_are_independent(redis_conn):
    assert hook(redis_conn, start(5))["action"] == "queued"
    assert hook(redis_conn, start(5))["action"] == "already_queued"
    assert hook(redis_conn, start(6))["job_id"] == "train-6-1"
    assert sorted(queued_ids(redis_conn)) == ["train-5-1", "train-6-1"]


def test_cancelled_annotations_and_other_events_are_ignored(redis_conn):
    assert hook(redis_conn, annotation(1, cancelled=True), min_new=1)["action"] == "ignored"
    assert hook(redis_conn, {"action": "TASKS_CREATED", "project": {"id": 1}})["action"] == "ignored"
    bulk = {"action": "ANNOTATIONS_CREATED", "project": {"id": 1},
            "annotations": [{"id": 1}, {"id": 2, "was_cancelled": True}, {"id": 3}]}
    assert hook(redis_conn, bulk)["count"] == 2
    assert queued_ids(redis_conn) == []


@pytest.mark.parametrize("body, message", [
    ({"action": "START_TRAINING"}, "names no project"),
    ({"action": "START_TRAINING", "project": {"id": "abc"}}, "project.id must be a positive integer project id, got 'abc'"),
    ([1, 2], "must be a JSON object"),
])
def test_bad_bodies_raise_clear_errors(redis_conn, body, message):
    with pytest.raises(ValueError, match=message):
        hook(redis_conn, body)


def test_events_during_a_run_give_exactly_one_follow_up(redis_conn):
    job_id = hook(redis_conn, start(2))["job_id"]
    Queue(TRAIN_QUEUE, connection=redis_conn).remove(job_id)  # as if a worker took it
    assert trigger.begin_training(redis_conn, 2, job_id, lease_ttl_s=30)
    results = [hook(redis_conn, start(2))["action"] for _ in range(5)]
    results += [hook(redis_conn, annotation(2, i))["action"] for i in range(9)]
    assert set(results) == {"follow_up", "counted"}
    assert queued_ids(redis_conn) == []  # nothing runs twice at once
    end = trigger.finish_training(redis_conn, 2, job_id, will_retry=False, outcome="ok", settings=SETTINGS)
    assert end["action"] == "follow_up" and end["job_id"] == "train-2-2"
    assert queued_ids(redis_conn) == ["train-2-2"]
    Queue(TRAIN_QUEUE, connection=redis_conn).remove("train-2-2")
    # the follow-up runs with no event meanwhile: the project goes idle
    assert trigger.begin_training(redis_conn, 2, "train-2-2", lease_ttl_s=30)
    assert trigger.finish_training(redis_conn, 2, "train-2-2", will_retry=False, outcome="ok",
                                   settings=SETTINGS)["action"] == "idle"
    assert trigger.training_state(redis_conn, 2)["state"] == "idle"


def test_a_job_rq_will_retry_stays_the_one_waiting_job(redis_conn):
    job_id = hook(redis_conn, start(3))["job_id"]
    Queue(TRAIN_QUEUE, connection=redis_conn).remove(job_id)  # as if a worker took it
    assert trigger.begin_training(redis_conn, 3, job_id, lease_ttl_s=30)
    hook(redis_conn, start(3))
    end = trigger.finish_training(redis_conn, 3, job_id, will_retry=True, outcome="error", settings=SETTINGS)
    assert end["action"] == "retrying"
    redis_conn.hset(Job.key_for(job_id), "status", "scheduled")  # what rq records for a retry with back-off
    assert hook(redis_conn, start(3))["action"] == "already_queued"


def test_a_dead_job_is_replaced_by_the_next_request_or_a_starting_worker(redis_conn):
    job_id = hook(redis_conn, start(4))["job_id"]
    assert trigger.begin_training(redis_conn, 4, job_id, lease_ttl_s=30)
    Queue(TRAIN_QUEUE, connection=redis_conn).remove(job_id)
    redis_conn.hset(Job.key_for(job_id), "status", "started")
    assert hook(redis_conn, start(4))["action"] == "follow_up"
    redis_conn.delete(trigger.lease_key(4))  # the lease runs out: the worker was killed
    assert trigger.training_state(redis_conn, 4)["liveness"] == "none"
    recovered = trigger.recover_stale(redis_conn, settings=SETTINGS)
    assert [r["job_id"] for r in recovered] == ["train-4-2"]
    assert recovered[0]["replaces_lost_job"] == job_id
    assert trigger.recover_stale(redis_conn, settings=SETTINGS) == []
    assert hook(redis_conn, start(4))["action"] == "already_queued"
    # the killed job's late end (if it ever comes) changes nothing
    assert trigger.finish_training(redis_conn, 4, job_id, will_retry=False, outcome="ok",
                                   settings=SETTINGS)["action"] == "not_owner"
    assert queued_ids(redis_conn) == ["train-4-2"]


def test_a_burst_of_200_concurrent_events_queues_one_job_and_one_follow_up(redis_conn, redis_server):
    pool = redis.BlockingConnectionPool(host="127.0.0.1", port=redis_server.port, db=redis_conn.connection_pool
                                        .connection_kwargs["db"], max_connections=64, timeout=30)

    def burst(project: int, n: int) -> list[dict]:
        out: list[dict] = []
        lock = threading.Lock()

        def send(i: int) -> None:
            conn = redis.Redis(connection_pool=pool)
            body = start(project) if i % 10 == 0 else annotation(project, i)
            r = hook(conn, body, min_new=3)
            with lock:
                out.append(r)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out

    first = burst(7, 200)
    assert len(first) == 200
    assert queued_ids(redis_conn) == ["train-7-1"]
    assert sum(r["action"] == "queued" for r in first) == 1
    assert trigger.begin_training(redis_conn, 7, "train-7-1", lease_ttl_s=30)
    Queue(TRAIN_QUEUE, connection=redis_conn).remove("train-7-1")
    second = burst(7, 200)
    assert {r["action"] for r in second} <= {"follow_up", "counted"}
    assert queued_ids(redis_conn) == []
    end = trigger.finish_training(redis_conn, 7, "train-7-1", will_retry=False, outcome="ok", settings=SETTINGS)
    assert end["job_id"] == "train-7-2" and queued_ids(redis_conn) == ["train-7-2"]


def test_redis_down_raises_connection_error():
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from shoeseg_app.stack.service import free_port

    conn = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.ConnectionError):
        hook(conn, start(1))
