"""``POST /webhook``: training events go to a real Redis queue by import path; other events are ignored."""

from __future__ import annotations

import pytest
from rq import Queue

from shoeseg_app.stack.service import free_port
from shoeseg_services.queues import TRAIN_QUEUE
from shoeseg_services.trigger import TRAIN_JOB
from tests.helpers import fixture_body


@pytest.fixture
def webhook_client(app_client, tmp_path):
    """An app without a model (webhooks need none) whose queue is the test's private Redis database."""

    def make(redis_url: str | None, **changes):
        return app_client(tmp_path / "no-models", redis_url=redis_url, **changes)

    return make


def redis_url_of(conn) -> str:
    kw = conn.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/{kw['db']}"


def test_start_training_is_queued_by_import_path(webhook_client, redis_conn):
    c = webhook_client(redis_url_of(redis_conn))
    r = c.post("/webhook", json=fixture_body("webhook_start_training.json"))
    assert r.status_code == 200
    body = r.json()
    assert body["action"] == "queued" and body["event"] == "START_TRAINING" and body["project"] == 1
    (job,) = Queue(TRAIN_QUEUE, connection=redis_conn).get_jobs()
    assert job.func_name == TRAIN_JOB == "worker.jobs.train_project"
    assert job.args == (1,) and job.id == body["job_id"]
    again = c.post("/webhook", json=fixture_body("webhook_start_training.json")).json()
    assert again["action"] == "already_queued"
    assert len(Queue(TRAIN_QUEUE, connection=redis_conn)) == 1


def test_annotations_are_counted_then_queued(webhook_client, redis_conn):
    c = webhook_client(redis_url_of(redis_conn), min_new_annotations=2)
    body = fixture_body("webhook_annotation_created.json")
    first = c.post("/webhook", json=body).json()
    assert first["action"] == "counted" and first["count"] == 1
    assert len(Queue(TRAIN_QUEUE, connection=redis_conn)) == 0
    second = c.post("/webhook", json=body).json()
    assert second["action"] == "queued"
    assert len(Queue(TRAIN_QUEUE, connection=redis_conn)) == 1


@pytest.mark.parametrize("name", ["webhook_project_updated.json", "webhook_tasks_created.json"])
def test_other_events_are_ignored_without_redis(webhook_client, name):
    c = webhook_client(None)
    r = c.post("/webhook", json=fixture_body(name))
    assert r.status_code == 200
    assert r.json()["action"] == "ignored"


def test_training_event_without_redis_url(webhook_client):
    r = webhook_client(None).post("/webhook", json=fixture_body("webhook_start_training.json"))
    assert r.status_code == 503 and "REDIS_URL is not set" in r.json()["error"]


def test_redis_down_answers_503(webhook_client):
    url = f"redis://127.0.0.1:{free_port()}/0"
    r = webhook_client(url).post("/webhook", json=fixture_body("webhook_start_training.json"))
    assert r.status_code == 503
    assert f"Redis at {url} does not answer" in r.json()["error"]


def test_training_event_without_project(webhook_client, redis_conn):
    r = webhook_client(redis_url_of(redis_conn)).post("/webhook", json={"action": "START_TRAINING"})
    assert r.status_code == 422 and "names no project" in r.json()["error"]


def test_body_without_action(webhook_client):
    r = webhook_client(None).post("/webhook", json={"project": {"id": 1}})
    assert r.status_code == 422 and "action" in r.json()["error"]
